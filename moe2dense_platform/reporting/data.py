"""What a report shows, as plain values: no MLflow, no Prefect, no matplotlib.

ReportData is filled from a run's records (runs.py) or from a flow's stage results (tasks/report.py)
and drawn by render.py. Its parts:
- plans: each ConversionPlan with a label (kept experts, groups and scores per layer);
- sweep: one SweepPoint per configuration of a sweep (`sweep/results.json` of flows/sweep.py);
- curves: distillation metric histories (`loss`, `kl`) against the optimizer step;
- evaluations: one EvalRow per evaluated model (teacher, students, baselines);
- lineage: where the result came from (source, digests, checkpoint), in display order.

ComparisonResults is the contract of a comparison flow with the report: the flow tags its parent run
`moe2dense.flow` = `compare` and logs `ComparisonResults(...).model_dump_json()` on it as the artifact
COMPARISON_RESULTS; the report reads it back (runs.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moe2dense_core.plan import ConversionPlan, PlanConfig
from moe2dense_core.schema import check_schema_version

REPORT_SCHEMA_VERSION = 1
COMPARISON_SCHEMA_VERSION = 1
COMPARISON_RESULTS = "comparison/results.json"
ReportKind = Literal["conversion", "sweep", "comparison"]
CURVE_METRICS = ("loss", "kl")
"""The distillation metrics drawn against the step (moe2dense_core/distill/loop.py logs both)."""


class ReportError(Exception):
    """The run cannot be reported: not a parent run, or a record the report needs is missing or unreadable."""


def plan_label(config: PlanConfig) -> str:
    """`do_acp · K=4 · output_cluster · uniform` (K=k when num_selected is None: pure pruning)."""
    k = "k" if config.num_selected is None else str(config.num_selected)
    return f"{config.scoring} · K={k} · {config.grouping} · {config.scaling}"


def conversion_kind(label: str) -> str:
    """The kind of a model a conversion evaluates (`teacher`, `assembled`, `distilled`): teacher or converted."""
    return "teacher" if label == "teacher" else "converted"


class LabelledPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    plan: ConversionPlan


class SweepPoint(BaseModel):
    """One configuration of a sweep, as `sweep/results.json` lists it (extra fields ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    plan: PlanConfig
    plan_digest: str
    perplexity: float
    distilled_perplexity: float | None = None
    distilled_mean_acc: float | None = None
    distill_run_id: str | None = None

    @property
    def label(self) -> str:
        return plan_label(self.plan)


class Curve(BaseModel):
    """One metric history of one distillation run: values[i] at optimizer step steps[i]."""

    model_config = ConfigDict(frozen=True)

    label: str
    metric: str
    steps: list[int]
    values: list[float]

    @model_validator(mode="after")
    def _a_value_per_step(self) -> Curve:
        if len(self.steps) != len(self.values):
            raise ValueError(
                f"curve {self.label!r} {self.metric}: {len(self.steps)} steps, {len(self.values)} values"
            )
        return self


class EvalRow(BaseModel):
    """One evaluated model: held-out perplexity, optionally KL(teacher ‖ model) per token, mean downstream
    accuracy, parameter count, kind (`teacher`, `converted`, a baseline's kind) and the comparison seed."""

    model_config = ConfigDict(frozen=True)

    label: str
    perplexity: float
    kind: str | None = None
    num_params: int | None = None
    kl_to_teacher: float | None = None
    mean_acc: float | None = None
    seed: int | None = None


class ComparedModel(EvalRow):
    """One model of a comparison (the teacher is the one of kind `teacher`), with the MLflow runs that made
    it: plan_run_id, the `plan` stage run of a converted student (its kept-expert map and scores are
    drawn); distill_run_id, its `distill` stage run (its loss / KL curves are drawn)."""

    plan_run_id: str | None = None
    distill_run_id: str | None = None


class ComparisonResults(BaseModel):
    """What a comparison flow logs as COMPARISON_RESULTS on its parent run (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = COMPARISON_SCHEMA_VERSION
    models: list[ComparedModel] = Field(..., min_length=1)

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_schema(cls, version: object) -> int:
        return check_schema_version(version, COMPARISON_SCHEMA_VERSION, COMPARISON_RESULTS, ReportError)


class ReportData(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ReportKind
    title: str
    run_id: str | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    evaluations: list[EvalRow] = Field(default_factory=list)
    plans: list[LabelledPlan] = Field(default_factory=list)
    sweep: list[SweepPoint] = Field(default_factory=list)
    curves: list[Curve] = Field(default_factory=list)


def lineage_rows(
    *,
    source_model: str | None = None,
    source_revision: str | None = None,
    snapshot_digest: str | None = None,
    stats_digest: str | None = None,
    plan_digest: str | None = None,
    checkpoint_digest: str | None = None,
    checkpoint_uri: str | None = None,
) -> dict[str, str]:
    """The lineage table in display order, leaving out what is unknown (a local teacher has no revision)."""
    rows = {
        "source model": source_model,
        "source revision": source_revision,
        "snapshot digest": snapshot_digest,
        "stats digest": stats_digest,
        "plan digest": plan_digest,
        "checkpoint digest": checkpoint_digest,
        "checkpoint": checkpoint_uri,
    }
    return {name: value for name, value in rows.items() if value}
