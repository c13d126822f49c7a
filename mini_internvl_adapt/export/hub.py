"""Uploading an export folder to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

from mini_internvl_adapt.errors import HubUnavailableError
from mini_internvl_adapt.models.published import hub_offline


def export_files(folder: str | Path) -> list[tuple[str, int]]:
    """Files an upload of `folder` sends: (relative path, size in bytes), sorted; hidden files skipped."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), path.stat().st_size))
    return files


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
) -> list[str]:
    """Upload an export folder to the Hugging Face Hub.

    Args:
        folder: The export folder.
        repo_id: Target repository ("user/name"); created if missing.
        private: Create the repository as private.
        revision: Branch to upload to (created if missing); None: the default branch.
        dry_run: Only list what would be uploaded; nothing touches the network.
        token: Hub token (default: the logged-in one).

    Returns:
        The uploaded (or, with dry_run, to-be-uploaded) relative file paths.

    Raises:
        FileNotFoundError: `folder` is missing.
        HubUnavailableError: Offline or the upload failed; the local export is left as it is.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such export folder")
    files = [name for name, _ in export_files(folder)]
    if dry_run:
        return files
    keep = f"the local export in {folder} is intact; push it later with `adapt export ... --push-to-hub {repo_id}`"
    if hub_offline():
        raise HubUnavailableError(f"cannot push to {repo_id}: hub access is off (HF_HUB_OFFLINE=1); {keep}")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            commit_message="Upload Mini-InternVL export (mini-internvl-adapt)",
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as e:  # network, auth and offline errors all end the same way for the user
        raise HubUnavailableError(f"cannot push to {repo_id} ({type(e).__name__}: {e}); {keep}") from e
    return files
