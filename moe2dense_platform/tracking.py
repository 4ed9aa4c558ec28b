"""MLflow tracking and lineage: one parent run per flow run, a nested run per stage, registered models.

Everything goes through `MlflowClient` with explicit run ids (no fluent "active run" state), so Prefect
tasks in any thread or process can log to the run whose id they were given.

    client = tracking_client(settings)
    with parent_run(client, recipe, redactor, flow_run_id=...) as run:          # run: MLflowLogger
        with stage_run(client, run.run_id, "calibrate", redactor) as stage:
            stage.log_metrics({"tokens": 32768})
            log_dataset(stage, name="calibration", source_uri=..., digest=..., context="calibration")
    register_dense_model(stage, checkpoint_sha256, "demo-dense", lineage)   # source = lineage.checkpoint_uri

Lineage tag names are the constants below; every param, tag, artifact and metric key passes the
Redactor (moe2dense_platform/redaction.py) first. Every run is tagged with the process that owns it (host,
boot, pid namespace, pid, start time: moe2dense_platform/run_owner.py) and, inside a Prefect flow run,
that flow run's id; a run whose process died without ending it (SIGKILL, OOM killer, evicted pod) is
ended KILLED when the next parent run starts in its experiment (moe2dense_platform/orphan_runs.py).

Tracking server outage [defined here]: a clear failure, no buffering. Every record is sent synchronously
(MLflow's async logging is never used), each request with MLflow's bounded retries (the `mlflow_http_*`
settings, applied by `tracking_client`: ~15 s by default, so a server restart costs nothing). A request
that still finds the server unreachable (connection refused / reset / timed out) raises
`TrackingUnavailableError` naming the server; it fails the stage at once (no stage retry, no attempt to
mark runs FAILED on a server known to be gone: they stay RUNNING there until the next parent run ends
them KILLED) and then the flow. So a metric is either on the server or its run failed, never dropped
silently. Stage results already in the artifact store are kept, and re-running once the server answers
reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.pretrained import TRUST_REMOTE_CODE
from moe2dense_core.process_owner import current_owner
from moe2dense_platform.recipe import Recipe
from moe2dense_platform.recipe_io import recipe_to_yaml
from moe2dense_platform.redaction import Redactor
from moe2dense_platform.run_owner import owner_tags
from moe2dense_platform.settings import Settings
from moe2dense_platform.transient import is_transient

TAG_PREFECT_FLOW_RUN = "prefect.flow_run_id"
TAG_PREFECT_FLOW_RUN_URL = "prefect.flow_run_url"
TAG_STAGE = "moe2dense.stage"
TAG_FLOW = "moe2dense.flow"  # on a parent run: the flow that made it (convert, sweep, compare, …)
TAG_RECIPE_NAME = "moe2dense.recipe_name"
TAG_RECIPE_DIGEST = "moe2dense.recipe_digest"
TAG_SOURCE_MODEL = "moe2dense.source_model"
TAG_SOURCE_REVISION = "moe2dense.source_revision"
TAG_SHARDS_DIGEST = "moe2dense.shards_digest"
TAG_SHARD_DIGESTS = "moe2dense.shard_digests"
TAG_STATS_DIGEST = "moe2dense.stats_digest"
TAG_PLAN_DIGEST = "moe2dense.plan_digest"
TAG_CHECKPOINT_DIGEST = "moe2dense.checkpoint_digest"
TAG_CHECKPOINT_URI = "moe2dense.checkpoint_uri"
TAG_CHECKPOINT_SHA256 = "moe2dense.checkpoint_sha256"
TAG_SNAPSHOT_DIGEST = "moe2dense.snapshot_digest"
TAG_STUDENT_DIGEST = "moe2dense.student_digest"
TAG_DATA_DIGEST = "moe2dense.data_digest"
TAG_STAGE_RUN = "moe2dense.stage_run"
TAG_OUTPUT = "moe2dense.output"
TAG_INPUT = "moe2dense.input"
TAG_TRUST_REMOTE_CODE = "moe2dense.trust_remote_code"
DATASET_CONTEXT_TAG = "mlflow.data.context"
RECIPE_ARTIFACT = "recipe/recipe.yaml"

LOGGER = logging.getLogger(__name__)


class TrackingUnavailableError(Moe2DenseError):
    """The MLflow tracking server stopped answering during a run (module docstring). Not `transient`: its
    request's retries are spent, so the stage is not retried (moe2dense_platform.runtime.transient_failure)."""

    transient = False


def tracking_unreachable(error: BaseException) -> bool:
    """True for TrackingUnavailableError and for an MlflowException caused by a connection failure or
    timeout (the server is down or unreachable), not for an answer the server gave."""
    return isinstance(error, TrackingUnavailableError) or (
        isinstance(error, MlflowException) and is_transient(error)
    )


@contextmanager
def naming_an_outage(client: MlflowClient, redactor: Redactor) -> Iterator[None]:
    """Re-raise an unreachable-server MlflowException as TrackingUnavailableError naming the server."""
    try:
        yield
    except MlflowException as error:
        if not tracking_unreachable(error):
            raise
        raise TrackingUnavailableError(
            f"MLflow tracking server {redactor.redact(client.tracking_uri)} is unreachable "
            "(MOE2DENSE_MLFLOW_TRACKING_URI / MLFLOW_TRACKING_URI), after MLflow's retries "
            "(MOE2DENSE_MLFLOW_HTTP_MAX_RETRIES): the run stops here, nothing is buffered. Stage results "
            "already in the artifact store are kept; re-run once the server answers and they are reused. "
            f"Cause: {redactor.redact(str(error))[:300]}"
        ) from error


def tracking_client(settings: Settings) -> MlflowClient:
    """A client on the settings' tracking URI (local SQLite file by default). Also sets this process's
    MLFLOW_HTTP_REQUEST_* variables from the settings (`Settings.mlflow_http_environment`): MLflow reads
    its retries and timeout only from there, at every request."""
    os.environ.update(settings.mlflow_http_environment())
    uri = settings.resolved_mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created (with `artifact_location` if given) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings → `a.b.c` keys; lists of mappings → `a.0.b`; other values as JSON text
    (`true`, `null`, `[1, 2]`) except strings, which stay as they are."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list | tuple) and any(isinstance(item, Mapping) for item in value):
            flat.update(flatten_params({str(i): item for i, item in enumerate(value)}, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


class MLflowLogger:
    """`moe2dense_core.logging.MetricLogger` on one MLflow run; redacts everything it sends."""

    def __init__(self, client: MlflowClient, run_id: str, redactor: Redactor) -> None:
        self.client = client
        self.run_id = run_id
        self.redactor = redactor

    def log_params(self, params: dict[str, Any]) -> None:
        """Flattened, redacted; values longer than MLflow's limit are cut and end in `…`."""
        items = [self.redactor.redact_item(k, v) for k, v in flatten_params(params).items()]
        batch = [
            Param(k, v if len(v) <= MAX_PARAM_VAL_LENGTH else v[: MAX_PARAM_VAL_LENGTH - 1] + "…")
            for k, v in items
        ]
        for start in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(
                self.run_id, params=batch[start : start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True
            )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        batch = [
            Metric(self.redactor.redact_name(k), float(v), timestamp, step or 0) for k, v in metrics.items()
        ]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000], synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder (as `artifact_path/<name>`); refuses anything holding a credential."""
        path = Path(path)
        self.redactor.check_file(path)
        if path.is_dir():
            target = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self.client.log_artifacts(self.run_id, str(path), target)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A text artifact at `artifact_file` (e.g. `eval/results.json`), secrets masked."""
        self.client.log_text(self.run_id, self.redactor.redact(text), artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = []
        for key, value in tags.items():
            key, text = self.redactor.redact_item(key, value if isinstance(value, str) else json.dumps(value))
            batch.append(RunTag(key, text[:MAX_TAG_VAL_LENGTH]))
        for start in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(
                self.run_id, tags=batch[start : start + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True
            )


def _start_run(
    client: MlflowClient, experiment_id: str, run_name: str, tags: dict[str, str], redactor: Redactor
) -> MLflowLogger:
    """A new RUNNING run tagged `tags`, the process that owns it (moe2dense_platform/run_owner.py) and,
    inside a Prefect flow run, that flow run's id when `tags` name none."""
    owned = {**tags, **owner_tags(current_owner())}
    if TAG_PREFECT_FLOW_RUN not in owned and (flow_run_id := current_flow_run_id()):
        owned[TAG_PREFECT_FLOW_RUN] = flow_run_id
    run = client.create_run(experiment_id, run_name=redactor.redact_name(run_name))
    logger = MLflowLogger(client, run.info.run_id, redactor)
    logger.set_tags(owned)
    return logger


def current_flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in (`prefect.runtime.flow_run.id`), or None."""
    from prefect.runtime import flow_run  # Prefect reads its settings on import: not at module load

    return flow_run.id


def end_orphaned_runs_of(client: MlflowClient, experiment_id: str) -> None:
    """End KILLED the runs of the experiment that dead processes left RUNNING (moe2dense_platform/
    orphan_runs.py). Its failure is a warning, never a failure of the run about to start, unless the
    server stopped answering (which that run would meet next)."""
    from moe2dense_platform.orphan_runs import end_orphaned_runs  # that module imports this one

    try:
        end_orphaned_runs(client, [experiment_id])
    except MlflowException as error:
        if tracking_unreachable(error):
            raise
        LOGGER.warning(
            "ending the orphaned runs of MLflow experiment %s failed; the new run starts anyway: %s",
            experiment_id,
            error,
        )


@contextmanager
def _terminating(logger: MLflowLogger) -> Iterator[MLflowLogger]:
    """Mark the run FINISHED on success, FAILED on any exception (then re-raise it). When the server is
    unreachable (the exception says so, or marking finds it so) the run stays RUNNING there and the
    original exception is raised: no second wait on a server known to be gone."""
    try:
        yield logger
    except BaseException as error:
        if not tracking_unreachable(error):
            try:
                logger.client.set_terminated(logger.run_id, status="FAILED")
            except MlflowException as failure:
                if not tracking_unreachable(failure):
                    raise
        raise
    logger.client.set_terminated(logger.run_id, status="FINISHED")


@contextmanager
def parent_run(
    client: MlflowClient,
    recipe: Recipe,
    redactor: Redactor,
    *,
    artifact_location: str | None = None,
    flow_run_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> Iterator[MLflowLogger]:
    """The parent run of one flow run: the resolved recipe as flattened params and as `recipe/recipe.yaml`,
    tags with the recipe name/digest, whether remote code was trusted, and the Prefect flow-run id and
    its UI page (`prefect_flow_run_url`, when a UI is configured). Runs of the experiment that dead
    processes left RUNNING are ended KILLED first (`end_orphaned_runs_of`). An unreachable server
    anywhere inside raises TrackingUnavailableError (module docstring)."""
    with naming_an_outage(client, redactor):
        experiment_id = ensure_experiment(client, recipe.tracking.experiment, artifact_location)
        end_orphaned_runs_of(client, experiment_id)
        tags = {
            TAG_RECIPE_NAME: recipe.name,
            TAG_RECIPE_DIGEST: recipe.digest(),
            **remote_code_tag(),
            **(extra_tags or {}),
        }
        if flow_run_id:
            tags[TAG_PREFECT_FLOW_RUN] = flow_run_id
            url = prefect_flow_run_url(flow_run_id)
            if url:
                tags[TAG_PREFECT_FLOW_RUN_URL] = url
        logger = _start_run(client, experiment_id, recipe.tracking.run_name or recipe.name, tags, redactor)
        with _terminating(logger):
            logger.log_params(recipe.model_dump(mode="json"))
            logger.log_text(recipe_to_yaml(recipe), RECIPE_ARTIFACT)
            yield logger


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI, `<PREFECT_UI_URL>/runs/flow-run/<id>` (Prefect's own
    `url_for`: the route its UI serves, where `prefect.runtime.flow_run.ui_url` gives an older redirect
    route), or None when no UI URL is configured (the temporary in-process API serves no UI)."""
    from prefect.utilities.urls import url_for  # Prefect reads its settings on import: not at module load

    return url_for("flow-run", obj_id=flow_run_id)


@contextmanager
def stage_run(
    client: MlflowClient,
    parent_run_id: str,
    stage: str,
    redactor: Redactor,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[MLflowLogger]:
    """A run nested under `parent_run_id` for one stage, inheriting the parent's Prefect / recipe tags. An
    unreachable server anywhere inside raises TrackingUnavailableError (module docstring)."""
    with naming_an_outage(client, redactor):
        parent = client.get_run(parent_run_id)
        inherited = {
            k: v for k, v in parent.data.tags.items() if k.startswith(("prefect.", "moe2dense.recipe"))
        }
        run_tags = {**inherited, MLFLOW_PARENT_RUN_ID: parent_run_id, TAG_STAGE: stage, **(tags or {})}
        logger = _start_run(client, parent.info.experiment_id, stage, run_tags, redactor)
        with _terminating(logger):
            if params:
                logger.log_params(dict(params))
            yield logger


MLFLOW_DATASET_DIGEST_CHARS = 36
"""The longest dataset digest MLflow accepts."""


def log_dataset(
    logger: MLflowLogger,
    *,
    name: str,
    source_uri: str,
    digest: str,
    context: str,
    source_type: str = "moe2dense",
    profile: Mapping[str, Any] | None = None,
) -> None:
    """Record an input dataset on the run (MLflow's `log_input`): name, digest, source URI, context
    (`calibration`, `distillation`, `evaluation`), and a small profile (e.g. token counts).

    MLflow keeps at most 36 digest characters: a longer digest (a sha256) is shortened there and
    stored whole in the profile under `sha256`."""
    redact = logger.redactor.redact
    full_profile = dict(profile or {})
    if len(digest) > MLFLOW_DATASET_DIGEST_CHARS:
        full_profile["sha256"] = digest
    dataset = Dataset(
        name=redact(name),
        digest=digest[:MLFLOW_DATASET_DIGEST_CHARS],
        source_type=source_type,
        source=redact(json.dumps({"uri": source_uri})),
        profile=redact(json.dumps(full_profile)),
    )
    logger.client.log_inputs(
        logger.run_id, datasets=[DatasetInput(dataset, [InputTag(DATASET_CONTEXT_TAG, context)])]
    )


@dataclass(frozen=True)
class Lineage:
    """Where a dense model came from; becomes tags on the registered model version."""

    source_model: str
    source_revision: str | None
    shard_digests: Mapping[str, str] = field(default_factory=dict)
    stats_digest: str | None = None
    plan_digest: str | None = None
    checkpoint_digest: str | None = None
    checkpoint_uri: str | None = None
    flow_run_id: str | None = None

    def shards_digest(self) -> str:
        """sha256 over the sorted `name:sha256` lines of the shards: one tag even for 1000 shards."""
        lines = "\n".join(f"{name}:{sha}" for name, sha in sorted(self.shard_digests.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def as_tags(self) -> dict[str, str]:
        shard_json = json.dumps(dict(sorted(self.shard_digests.items())), separators=(",", ":"))
        tags = {
            TAG_SOURCE_MODEL: self.source_model,
            TAG_SOURCE_REVISION: self.source_revision,
            TAG_SHARDS_DIGEST: self.shards_digest(),
            TAG_SHARD_DIGESTS: shard_json if len(shard_json) <= MAX_TAG_VAL_LENGTH else None,
            TAG_STATS_DIGEST: self.stats_digest,
            TAG_PLAN_DIGEST: self.plan_digest,
            TAG_CHECKPOINT_DIGEST: self.checkpoint_digest,
            TAG_CHECKPOINT_URI: self.checkpoint_uri,
            TAG_PREFECT_FLOW_RUN: self.flow_run_id,
            **remote_code_tag(),
        }
        return {key: value for key, value in tags.items() if value is not None}


def remote_code_tag() -> dict[str, str]:
    """{TAG_TRUST_REMOTE_CODE: "false"}: the one setting every model / tokenizer load used
    (moe2dense_core/pretrained.py), recorded on parent runs and registered model versions."""
    return {TAG_TRUST_REMOTE_CODE: json.dumps(TRUST_REMOTE_CODE)}


def register_dense_model(
    logger: MLflowLogger, checkpoint_sha256: str, model_name: str, lineage: Lineage, description: str = ""
) -> ModelVersion:
    """Register the stored checkpoint `lineage.checkpoint_uri` as a new version of `model_name`: the
    version's `source` IS that store URI (nothing is uploaded), tagged with the lineage and the store's
    content address `checkpoint_sha256`; the full shard list is also logged as `lineage/shards.json`."""
    client, redactor = logger.client, logger.redactor
    if not lineage.checkpoint_uri:
        raise ValueError(f"registering {model_name!r}: the lineage names no stored checkpoint URI")
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    logger.log_text(json.dumps(dict(sorted(lineage.shard_digests.items())), indent=2), "lineage/shards.json")
    tags = dict(redactor.redact_item(k, v) for k, v in lineage.as_tags().items())
    tags[TAG_CHECKPOINT_SHA256] = checkpoint_sha256
    logger.set_tags(tags)
    return client.create_model_version(
        model_name,
        lineage.checkpoint_uri,
        run_id=logger.run_id,
        tags=tags,
        description=redactor.redact(description),
    )


def link_stage_runs(parent: MLflowLogger, runs: Mapping[str, str]) -> None:
    """Tag the parent run with the run that produced each stage's result: `moe2dense.stage_run.<label>`
    = run id (a cached result names the run of the flow that computed it)."""
    parent.set_tags({f"{TAG_STAGE_RUN}.{label}": run_id for label, run_id in runs.items()})


def stage_runs(client: MlflowClient, parent_run_id: str) -> dict[str, Run]:
    """{label: run} of a parent run's stages: the runs its tags link (cached results included), and its
    nested runs (a run that failed before linking)."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    )
    prefix = f"{TAG_STAGE_RUN}."
    linked = {
        tag[len(prefix) :]: run_id for tag, run_id in parent.data.tags.items() if tag.startswith(prefix)
    }
    found = {run.info.run_name: run for run in children}
    found.update({label: client.get_run(run_id) for label, run_id in linked.items() if label not in found})
    return found


def run_url(ui_base_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run (for Prefect link artifacts): `<ui>/#/experiments/<id>/runs/<id>`."""
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def converted_versions(
    client: MlflowClient, source_model: str, source_revision: str | None
) -> list[ModelVersion]:
    """Registered model versions (of any name) converted from `source_model` at `source_revision`:
    the test `watch` uses for "already converted"."""
    model_filter = f"tags.`{TAG_SOURCE_MODEL}` = '{_quote(source_model)}'"
    versions = client.search_model_versions(model_filter)
    return [v for v in versions if v.tags.get(TAG_SOURCE_REVISION) == source_revision]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
