"""The result types every stage returns: small values and artifact URIs (no tensors), one module for all.

Stages import each other's results from here, never from each other's modules, so a stage module
depends only on the platform (store, tracking, caching, recipe) and on this file. Every artifact URI is
a store URI `<root>/<kind>/<sha256>/<name>`: its `<sha256>` is the store's content address
(moe2dense_platform/artifact_manifest.py), also recorded on the stage's MLflow run (tasks/publish.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from moe2dense_core.plan import PlanConfig


class SourceResult(BaseModel):
    """The resolved teacher snapshot (tasks/source.py)."""

    model_config = ConfigDict(frozen=True)

    model: str
    revision: str | None
    local_path: str
    model_type: str
    num_experts: int
    top_k: int
    file_digests: dict[str, str]
    snapshot_digest: str
    mlflow_run_id: str | None = None


class CalibrationResult(BaseModel):
    """Expert statistics in the store (tasks/calibrate.py)."""

    model_config = ConfigDict(frozen=True)

    stats_uri: str
    stats_digest: str
    data_digest: str
    num_tokens: int
    mlflow_run_id: str


class TeacherLogitsResult(BaseModel):
    """The teacher's top-k log-probabilities on the distillation rows, in the store (tasks/teacher_logits.py).

    manifest_uri: the cache manifest (kind `teacher-logits`; its shards are found through it,
    moe2dense_platform/stored_topk_cache.py); cache_digest: the manifest's sha256 (it lists every shard's);
    teacher_digest: the snapshot the teacher ran from; data_digest: `tokens_digest` of the rows [N, L];
    bytes_per_token = k·(4 + b) + 4 + 4 (b = 4 for float32 log-probabilities, 2 for float16);
    stored_bytes: the shard files' total size.
    """

    model_config = ConfigDict(frozen=True)

    manifest_uri: str
    cache_digest: str
    teacher_digest: str
    data_digest: str
    k: int
    logprob_dtype: str
    num_tokens: int
    bytes_per_token: int
    stored_bytes: int
    mlflow_run_id: str


class PlanResult(BaseModel):
    """The conversion plan in the store and its summary (tasks/plan.py)."""

    model_config = ConfigDict(frozen=True)

    plan_uri: str
    plan_digest: str
    stats_digest: str
    config: PlanConfig
    target_width: int
    kept_experts: dict[int, list[int]]
    mlflow_run_id: str


class CheckpointResult(BaseModel):
    """A dense checkpoint in the artifact store (assembled, a baseline student, or distilled).

    plan_digest: the conversion plan it was made with; None for a baseline student (no plan:
    tasks/baseline_student.py) and for what is distilled from one.
    """

    model_config = ConfigDict(frozen=True)

    checkpoint_uri: str
    checkpoint_digest: str
    shard_digests: dict[str, str]
    num_parameters: int
    plan_digest: str | None
    mlflow_run_id: str
    stage: str


class EvalTarget(BaseModel):
    """The model to evaluate: a label (student, teacher, …), its digest, and an artifact URI or local folder."""

    model_config = ConfigDict(frozen=True)

    label: str
    checkpoint_digest: str
    location: str


class EvaluationResult(BaseModel):
    """Held-out perplexity, downstream accuracies and, when a teacher was given, the mean KL(teacher ‖ model)
    per token on the same held-out windows (tasks/evaluate.py)."""

    model_config = ConfigDict(frozen=True)

    label: str
    checkpoint_digest: str
    perplexity: float
    downstream_mean_acc: float | None
    downstream: dict[str, float | None]
    eval_uri: str
    mlflow_run_id: str
    kl_to_teacher: float | None = None


class ReportInputs(BaseModel):
    """What the report summarises (tasks/report.py)."""

    model_config = ConfigDict(frozen=True)

    recipe_name: str
    source: SourceResult
    plan: PlanResult
    checkpoint: CheckpointResult
    evaluations: list[EvaluationResult]
    distill_run_id: str | None = None


class ReportResult(BaseModel):
    """The stored HTML report (tasks/report.py)."""

    model_config = ConfigDict(frozen=True)

    report_uri: str
    mlflow_run_id: str


class RegistrationResult(BaseModel):
    """A registered model version pointing at a stored checkpoint (tasks/report.py)."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    version: str
    checkpoint_uri: str
    mlflow_run_id: str | None

    @property
    def label(self) -> str:
        """`name/version`, as the CLI prints it."""
        return f"{self.model_name}/{self.version}"
