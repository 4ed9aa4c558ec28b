"""Where Prefect persists the stage tasks' results: inside the artifact store, so every process that
shares a store (the CLI, every worker) shares the task cache.

    local root   <root>/_task-results/<cache key>                 (temporary file, then os.replace)
    S3 root      s3://<bucket>/<prefix>/_task-results/<cache key>  (one PUT: visible only when complete)

`_task-results` can never be an artifact kind (kinds start with a lowercase letter or a digit).

`ArtifactStoreResults` is a Prefect result-storage block with no fields: each read or write resolves
the settings of the process doing it (`Settings()`: MOE2DENSE_* variables, settings file), so one block
document on the Prefect server serves processes with different credentials, and no credential is
stored in Prefect. Prefect takes only a saved block as a task's result storage: the stage tasks name
it by `RESULT_STORAGE` ("<block type slug>/<document name>"), and each flow calls
`ensure_result_storage()` (an idempotent save) before its first task.
"""

from __future__ import annotations

import re
from pathlib import Path

from botocore.exceptions import ClientError
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError
from prefect.filesystems import WritableFileSystem

from moe2dense_platform.local_store import write_bytes_atomic
from moe2dense_platform.s3_store import NOT_FOUND_CODES, make_s3_client, parse_s3_uri
from moe2dense_platform.settings import Settings

RESULTS_FOLDER = "_task-results"
BLOCK_DOCUMENT_NAME = "artifact-store"
KEY_PATTERN = re.compile(r"^[\w][\w.-]*$")


class ArtifactStoreResults(WritableFileSystem):
    """Task results under `<artifact root>/_task-results/`, wherever the process's settings put the root."""

    _block_type_name = "moe2dense artifact store results"
    _description = "Stage task results inside the moe2dense artifact store of the process using it."

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The stored bytes of result `path` (FileNotFoundError when absent). `_sync`: Prefect's calling
        convention for storage blocks; both its sync and async engines reach this method."""
        settings = Settings()
        if not settings.uses_s3:
            return _local_path(settings, path).read_bytes()
        bucket, key = _s3_location(settings, path)
        try:
            return make_s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code", "") in NOT_FOUND_CODES:
                raise FileNotFoundError(f"s3://{bucket}/{key}") from None
            raise

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        """Store `content` as result `path` atomically; returns where it went."""
        settings = Settings()
        if not settings.uses_s3:
            target = _local_path(settings, path)
            write_bytes_atomic(target, content)
            return str(target)
        bucket, key = _s3_location(settings, path)
        make_s3_client(settings).put_object(Bucket=bucket, Key=key, Body=content)
        return f"s3://{bucket}/{key}"


RESULT_STORAGE = f"{ArtifactStoreResults.get_block_type_slug()}/{BLOCK_DOCUMENT_NAME}"


SAVE_ATTEMPTS = 3


def ensure_result_storage() -> None:
    """Save the block document `RESULT_STORAGE` on the current Prefect API (idempotent; a few API calls).

    Flows started at once on a fresh server race to create the block type, schema and document; the
    loser's request is answered 409 Conflict (or ObjectAlreadyExists), and saving again then finds them.
    """
    for attempt in range(1, SAVE_ATTEMPTS + 1):
        try:
            ArtifactStoreResults().save(BLOCK_DOCUMENT_NAME, overwrite=True)
            return
        except (ObjectAlreadyExists, PrefectHTTPStatusError) as error:
            conflict = isinstance(error, ObjectAlreadyExists) or error.response.status_code == 409
            if not conflict or attempt == SAVE_ATTEMPTS:
                raise


def _checked(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"result key {key!r}: use letters, digits, '_', '.' and '-' (no folders)")
    return key


def _local_path(settings: Settings, key: str) -> Path:
    return Path(settings.resolved_artifact_root).expanduser().resolve() / RESULTS_FOLDER / _checked(key)


def _s3_location(settings: Settings, key: str) -> tuple[str, str]:
    bucket, prefix = parse_s3_uri(settings.resolved_artifact_root)
    relative = f"{RESULTS_FOLDER}/{_checked(key)}"
    return bucket, f"{prefix}/{relative}" if prefix else relative
