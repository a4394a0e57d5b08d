"""Push a hub folder (or a run, exported on the way) to the Hugging Face Hub.

Usage::

    url = push("runs/20261121-101500-cnn-default", "me/digitlab-cnn")   # exports RUN/export/hub/ first
    url = push("runs/.../export/hub", "me/digitlab-cnn", private=True)

The token comes from ``token``, else ``HF_TOKEN`` or ``hf auth login`` (``huggingface_hub.get_token``);
without one the push fails before any network call. Network and HTTP failures are one line each.
"""

import os
from collections.abc import Callable
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError, HTTPError
from huggingface_hub.utils import validate_repo_id

from digitlab.core.errors import first_line
from digitlab.core.rundir import RunDir
from digitlab.export.errors import ExportError
from digitlab.export.hub import export_hub, is_hub_folder
from digitlab.inference.formats import HUB_CARD

# What huggingface_hub raises when the Hub cannot be reached or answers with an error: its HTTP
# library's base error (HfHubHTTPError derives from it), and OSError for the rest (offline mode,
# refused connections, unreadable files).
_NETWORK_ERRORS = (HTTPError, OSError)


def push(run_or_folder: str | os.PathLike[str], repo_id: str, *, token: str | None = None, private: bool = False,
         log: Callable[[str], None] | None = None) -> str:
    """Create the model repository (when missing) and upload the hub folder to it.

    Args:
        run_or_folder: a run directory (its hub folder is exported first, to ``RUN/export/hub``) or a
            folder ``export_hub`` wrote.
        repo_id: ``user/name`` or ``organisation/name``.
        token: a Hugging Face token with write access (default: ``HF_TOKEN`` or the stored login).
        private: create the repository private (an existing one keeps its visibility).
        log: a callable taking one progress line, or None.

    Returns:
        The URL of the commit.

    Raises:
        ExportError: no token, a bad repo id, a path that is neither a run nor a hub folder, or a
            network / HTTP failure; one line each.
    """
    say = log or (lambda _msg: None)
    path = Path(run_or_folder)
    is_run = (path / RunDir.CONFIG).is_file()
    if not is_run and not is_hub_folder(path):
        raise ExportError(f"{path}: neither a run directory (no {RunDir.CONFIG}) nor a hub folder written by "
                          "`digitlab export --format hub`")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"bad --repo-id {repo_id!r}: {first_line(e)}") from None
    if "/" not in repo_id:
        raise ExportError(f"bad --repo-id {repo_id!r}: give it as user/name or organisation/name")
    if not token:
        try:  # the environment, the stored login, or (when HF_OIDC_RESOURCE asks for it) a token exchange
            token = huggingface_hub.get_token()
        except (*_NETWORK_ERRORS, ValueError) as e:
            raise ExportError(f"cannot get a Hugging Face token: {type(e).__name__}: {first_line(e)}") from None
    if not token:
        raise ExportError("no Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token (a token "
                          "with write access, from https://huggingface.co/settings/tokens)")
    folder = export_hub(path, log=say) if is_run else path
    if not (folder / HUB_CARD).is_file():
        raise ExportError(f"{folder}: no {HUB_CARD} (model card); export the run again")

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        say(f"uploading {folder}/ to {repo_id} on {api.endpoint}")
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message="Upload digitlab model")
    except _NETWORK_ERRORS as e:
        raise ExportError(f"push to {repo_id} on {api.endpoint} failed: {type(e).__name__}: {first_line(e)}"
                          ) from None
    return str(getattr(commit, "commit_url", commit))
