"""What every stage task needs at run time: settings, artifact store, MLflow client, redactor, stage runs.

Built from the environment in each task (`Runtime.from_environment()`), so a task behaves the same in
the flow's process and on a remote worker: the settings (env / settings file) decide local or S3,
SQLite or server. `stage(parent_run_id, name)` opens the stage's MLflow run nested under the flow's
parent run; `fetch_uri` turns an artifact URI from an upstream result into a local path.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from moe2dense_platform.caching import canonical
from moe2dense_platform.redaction import Redactor, install_environment_redaction
from moe2dense_platform.settings import Settings
from moe2dense_platform.storage import ArtifactStore, open_artifact_store
from moe2dense_platform.tracking import MLflowLogger, log_dataset, stage_run, tracking_client
from moe2dense_platform.transient import is_transient


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: ArtifactStore
    client: MlflowClient
    redactor: Redactor

    @classmethod
    def from_environment(cls) -> Runtime:
        """The runtime of the current environment; also installs its log redaction for this process
        (every flow run and stage task starts here, in the CLI's process or a worker's)."""
        settings = Settings()
        redactor = install_environment_redaction(settings)
        return cls(settings, open_artifact_store(settings), tracking_client(settings), redactor)

    @contextmanager
    def stage(
        self, parent_run_id: str, name: str, params: dict[str, Any] | None = None
    ) -> Iterator[MLflowLogger]:
        """The nested MLflow run of one stage (FINISHED on success, FAILED on error); params may hold models."""
        plain = canonical(params) if params else None
        with stage_run(self.client, parent_run_id, name, self.redactor, params=plain) as logger:
            yield logger

    def fetch_uri(self, uri: str) -> Path:
        """Local path of an artifact URI (a verified cached download for S3; safe to call concurrently)."""
        return self.store.fetch(self.store.ref_from_uri(uri))

    @contextmanager
    def scratch(self, prefix: str) -> Iterator[Path]:
        """A temporary folder under the local home, removed afterwards."""
        root = self.settings.home / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=root, prefix=f"{prefix}-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only when the failure is transient (connection, 5xx, throttling).
    An error with a `transient` attribute says so itself (e.g. an unreachable tracking server, whose MLflow
    retries are already spent, is not); otherwise its cause chain decides."""
    error = state.result(raise_on_failure=False)
    if not isinstance(error, BaseException):
        return False
    stated = getattr(error, "transient", None)
    return stated if isinstance(stated, bool) else is_transient(error)


def log_token_input(run: MLflowLogger, *, context: str, source: str, digest: str, num_tokens: int) -> None:
    """`mlflow.log_input` of a token set (the full sha256 lands in the dataset profile)."""
    log_dataset(
        run,
        name=context,
        source_uri=source,
        digest=digest,
        context=context,
        profile={"num_tokens": num_tokens},
    )
