"""resolve_model: a local checkpoint folder, or a Hugging Face Hub snapshot downloaded on demand."""

from __future__ import annotations

from pathlib import Path

from moe2dense_core.errors import CheckpointError

DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
)
"""Config, index, safetensors shards and tokenizer files; never pickles (*.bin, *.pt) nor code (*.py)."""


def resolve_model(
    model_id_or_path: str | Path,
    revision: str | None = None,
    allow_patterns: tuple[str, ...] | list[str] = DEFAULT_ALLOW_PATTERNS,
    *,
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """The local folder holding the checkpoint.

    An existing local directory is returned as is (offline; `revision` must then be None). Anything else
    is taken as a Hub repo id and fetched with `huggingface_hub.snapshot_download(repo_id, revision=...,
    allow_patterns=...)`, which honours HF_HUB_OFFLINE / the local cache. Python files (remote code) are
    only fetched when `trust_remote_code=True`. A Hub id that is neither reachable nor cached fails with
    a CheckpointError naming the id and saying whether the Hub is offline or unreachable.
    """
    path = Path(model_id_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise CheckpointError(f"{path}: a local folder has no revision (got revision={revision!r})")
        return path
    model_id = str(model_id_or_path)
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise CheckpointError(
            f"{model_id}: no such local folder, and not a Hub repo id of the form 'org/name'"
        )

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = list(allow_patterns) + (["*.py"] if trust_remote_code else [])
    where = f"{model_id}@{revision or 'main'}"
    try:
        local = snapshot_download(model_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir)
    except LocalEntryNotFoundError as exc:  # no answer from the Hub, and no cached snapshot to fall back on
        if constants.HF_HUB_OFFLINE:
            reason = "the Hub is offline (HF_HUB_OFFLINE=1)"
        else:
            reason = f"the Hub ({constants.ENDPOINT}) is unreachable (no network?)"
        raise CheckpointError(
            f"{where}: cannot resolve from the Hub: {reason} and this revision is not in the local cache"
        ) from exc
    except Exception as exc:  # auth, missing repo/revision: all surface as one clear error
        raise CheckpointError(f"{where}: cannot resolve from the Hub: {exc}") from exc
    return Path(local)
