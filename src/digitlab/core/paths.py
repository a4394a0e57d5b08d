"""Where digitlab keeps files of its own.

Usage: ``user_cache_dir() / "mnist"``.
"""

import os
from pathlib import Path

import platformdirs

CACHE_DIR_ENV = "DIGITLAB_CACHE_DIR"


def user_cache_dir() -> Path:
    """Return the user cache folder (``$DIGITLAB_CACHE_DIR`` when set), without creating it."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("digitlab"))
