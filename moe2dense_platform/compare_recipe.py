"""CompareRecipe: the paper's comparison (converted students against the baselines) as one validated value.

    name: qwen3-vs-baselines
    source: {model: Qwen/Qwen3-30B-A3B, revision: <sha>}     # the MoE teacher
    twin: {model: Qwen/Qwen3-32B, revision: <sha>}           # a dense model for the d2d baseline
    students:
      - {name: do_acp, kind: converted, plan: {scoring: do_acp}}
      - {name: d2d, kind: d2d, hidden_size: 2048}
      - {name: random_ffn, kind: random_ffn}
    distillation: {...}                                       # ONE budget for every student
    seeds: [0, 1, 2]

Every student gets the same distillation (data, order, optimiser, steps) once per seed; the flow
(flows/compare.py) checks that all have the same parameter count and token budget before training any.
Student kinds (the core's `StudentKind`, moe2dense_core/baselines/compare.py):
  converted    MoE → dense with its own `plan` (the convert recipe's PlanConfig);
  d2d          the dense `twin` width-pruned (moe2dense_core.baselines.d2d_prune, Minitron-style) to the
               reference student's parameter count; `width_multiple` / `hidden_size` are d2d_prune's;
  random_init  the reference student's architecture, every weight freshly initialised;
  random_ffn   the reference architecture, attention / embeddings / norms copied from the teacher, FFN random.
The reference student [defined here] is the first `converted` student: the baselines take its size and
architecture. A random student's initialisation is seeded by the comparison seed, so the spread over
`seeds` includes the initialisation.

The sections are the convert Recipe's own models (moe2dense_platform/recipe.py); `conversion_recipe`
gives the Recipe a converted student is made with (the checks against the teacher's config.json are the
convert recipe's, recipe_teacher.py). Reading, overrides and error lines are recipe_io's and
field_errors': every bad field is named by its dotted path (`students.1.kind: …`). Imports no Prefect.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from moe2dense_core.baselines.compare import StudentKind
from moe2dense_core.plan import PlanConfig
from moe2dense_platform.recipe import (
    CalibrationConfig,
    DistillationConfig,
    EvaluationConfig,
    Recipe,
    RecipeDocument,
    RecipeError,
    SourceConfig,
    StatisticsConfig,
    StorageConfig,
    TrackingConfig,
    check_plan_sizes,
    parse_document,
)
from moe2dense_platform.recipe_io import apply_overrides, read_recipe_data
from moe2dense_platform.recipe_teacher import check_recipe_fits_teacher

COMPARE_SCHEMA_VERSION = 1
STUDENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
BASELINE_KINDS: tuple[StudentKind, ...] = ("d2d", "random_init", "random_ffn")
D2D_OPTIONS = ("width_multiple", "hidden_size")


class StudentSpec(BaseModel):
    """One compared student: a unique name, its kind, and what that kind takes (module docstring).

    plan: required for `converted`, refused otherwise; width_multiple / hidden_size: `d2d` only
    (FFN width a multiple of this; cut the hidden width to this many channels, None: keep it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., pattern=STUDENT_NAME, description="Unique; names its MLflow run and table row.")
    kind: StudentKind
    plan: PlanConfig | None = Field(None, description="The conversion plan (converted students only).")
    width_multiple: int = Field(1, ge=1, strict=True, description="d2d: FFN width is a multiple of this.")
    hidden_size: int | None = Field(
        None, ge=1, strict=True, description="d2d: hidden channels kept (None: all)."
    )

    @field_validator("plan")
    @classmethod
    def _plan_sizes_agree(cls, plan: PlanConfig | None) -> PlanConfig | None:
        return plan if plan is None else check_plan_sizes(plan)

    @model_validator(mode="after")
    def _options_fit_the_kind(self) -> StudentSpec:
        if self.kind == "converted" and self.plan is None:
            raise ValueError("plan: a converted student needs its plan (scoring, K, grouping, scaling)")
        if self.kind != "converted" and self.plan is not None:
            raise ValueError(f"plan: only a converted student has a plan, not a {self.kind} one")
        defaults = {name: type(self).model_fields[name].default for name in D2D_OPTIONS}
        changed = [name for name, default in defaults.items() if getattr(self, name) != default]
        if self.kind != "d2d" and changed:
            raise ValueError(f"{changed[0]}: an option of d2d students; {self.name!r} is {self.kind}")
        return self


class CompareRecipe(RecipeDocument):
    """One comparison: teacher, dense twin, students, ONE distillation budget, data, evaluation, seeds."""

    schema_version: Literal[1] = COMPARE_SCHEMA_VERSION
    name: str = Field(..., min_length=1, pattern=r"^[\w.-]+$", description="Short id used in run names.")
    description: str = ""
    source: SourceConfig = Field(..., description="The MoE teacher.")
    twin: SourceConfig | None = Field(
        None, description="A dense checkpoint of the teacher's total size, pruned by `d2d` students."
    )
    students: list[StudentSpec] = Field(..., min_length=2)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig)
    distillation: DistillationConfig
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    seeds: list[int] = Field([0], min_length=1, description="Each student is distilled once per seed.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _a_fair_comparison(self) -> CompareRecipe:
        names = [student.name for student in self.students]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"students: names must be unique; {repeated} appear more than once")
        kinds = {student.kind for student in self.students}
        if kinds & set(BASELINE_KINDS) and "converted" not in kinds:
            raise ValueError(
                "students: the baselines take the size and architecture of a converted student; add one"
            )
        if "d2d" in kinds and self.twin is None:
            raise ValueError("twin: a d2d student prunes the dense twin; name its checkpoint")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: each seed once, got {list(self.seeds)}")
        return self

    @field_validator("distillation")
    @classmethod
    def _one_budget_per_seed(cls, distillation: DistillationConfig) -> DistillationConfig:
        if not distillation.enabled:
            raise ValueError("enabled: must be true; a comparison distills every student")
        if distillation.train.seed != 0:
            raise ValueError("train: seed is set per run from the comparison's `seeds`; list the seeds there")
        return distillation

    @property
    def reference(self) -> StudentSpec:
        """The first converted student: the baselines take its size and architecture."""
        return next(student for student in self.students if student.kind == "converted")

    def conversion_recipe(self, student: StudentSpec) -> Recipe:
        """The convert Recipe that makes a converted student (its plan; this comparison's other sections)."""
        return Recipe(
            name=f"{self.name}-{student.name}",
            source=self.source,
            calibration=self.calibration,
            statistics=self.statistics,
            plan=student.plan,
            distillation=self.distillation,
            evaluation=self.evaluation,
            tracking=self.tracking,
            storage=self.storage,
        )

    def distillation_for(self, seed: int) -> DistillationConfig:
        """The one distillation with `train.seed` = seed (batch order and, for random students, init)."""
        train = self.distillation.train.model_copy(update={"seed": seed})
        return self.distillation.model_copy(update={"train": train})


def parse_compare_recipe(data: Any, origin: str = "<value>") -> CompareRecipe:
    """Validate a plain mapping into a CompareRecipe; RecipeError naming every bad field path."""
    return parse_document(CompareRecipe, data, origin, "comparison recipe")


def load_compare_recipe(path: Path | str, overrides: Sequence[str] = ()) -> CompareRecipe:
    """Read a YAML comparison recipe, apply dotted overrides (`students.0.plan.num_selected=8`), validate."""
    data = apply_overrides(read_recipe_data(path), overrides)
    origin = str(path) + (f" with overrides {list(overrides)}" if overrides else "")
    return parse_compare_recipe(data, origin)


def check_compare_fits_teacher(
    recipe: CompareRecipe, teacher_dir: Path | str | None = None, origin: str = ""
) -> None:
    """Each converted student's conversion recipe against the teacher's config.json (recipe_teacher.py);
    the RecipeError names the student (`students.<i>`)."""
    for index, student in enumerate(recipe.students):
        if student.kind != "converted":
            continue
        try:
            check_recipe_fits_teacher(recipe.conversion_recipe(student), teacher_dir, origin)
        except RecipeError as error:
            raise RecipeError(f"students.{index} ({student.name}): {error}") from None


def compare_recipe_json_schema() -> str:
    """The JSON schema of a comparison recipe (the form the Prefect UI renders for `compare`)."""
    return json.dumps(CompareRecipe.model_json_schema(), indent=2)


__all__ = [
    "BASELINE_KINDS",
    "COMPARE_SCHEMA_VERSION",
    "CompareRecipe",
    "StudentSpec",
    "check_compare_fits_teacher",
    "compare_recipe_json_schema",
    "load_compare_recipe",
    "parse_compare_recipe",
]
