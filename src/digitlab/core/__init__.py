"""Core: errors, paths, atomic file writes and logging shared by every layer.

Usage: ``from digitlab.core import DigitlabError, atomic_path, user_cache_dir``.
"""

from digitlab.core.errors import DigitlabError
from digitlab.core.fileio import atomic_path, atomic_write_text
from digitlab.core.paths import user_cache_dir

__all__ = ["DigitlabError", "atomic_path", "atomic_write_text", "user_cache_dir"]
