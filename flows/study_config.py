"""StudyConfig: the paper's study in miniature (flows/study.py) as one validated value, read from YAML.

    name: study-cpu
    text: {teacher: [wikitext2_tok_valid.txt, ...], distill: [tinyshakespeare.txt], heldout_fraction: 0.1}
    teacher: {...}            # TeacherModelConfig: the MoE teacher; its dense twin has the same fields
    calibration / evaluation  # sizes only: the study fills in the text
    grid: {scorers, groupings, num_selected, scalings}
    comparison: {best: 3, seeds: [0, 1, 2], seq_len, train: {...}, teacher: cached}

Text [defined here]: `text.teacher` trains the teachers and feeds calibration and the sweep's ranking;
`text.distill` is DISJOINT text the comparison distills on (distilling on the teacher's own text erases
the students' differences within minutes). File names are relative to `<MOE2DENSE_SHARED_DATA>/text`
(absolute paths are taken as they are). Each side is copied with every line stripped of surrounding
whitespace, so WikiText's whitespace-only separator lines become the blank lines that split documents;
`max_chars` keeps only a side's first characters (the smoke version's small teacher-logit cache).

The grid [defined here]: at K = k every grouper gives k groups of one expert, i.e. `prune`; so the
sweep runs `prune` at K = k and the merging groupers (`groupings`) at each K in `num_selected` (K > k).

Scale (`scaled(n)`, `moe2dense study --scale N`) [defined here]: model widths (hidden size, attention
heads, expert width) × r with r = round(√n), so parameters grow ≈ n×; tokens per step of the teacher
and of the distillation × n (same steps, same schedules). Calibration and evaluation sizes stay: the
held-out text is the limit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.plan import GrouperChoice, ScalingChoice, ScorerChoice
from moe2dense_core.shared_data import shared_data_dir
from moe2dense_core.teacher import TeacherModelConfig
from moe2dense_platform.recipe import (
    RecipeDocument,
    RecipeError,
    TeacherCacheConfig,
    TrackingConfig,
    _Section,
    format_validation_error,
)
from moe2dense_platform.recipe_io import apply_overrides, read_recipe_data

STUDY_SCHEMA_VERSION = 1
PROJECT_ROOT = Path(__file__).resolve().parents[1]
STUDY_CONFIGS = PROJECT_ROOT / "configs" / "study"


class StudyText(_Section):
    """The two disjoint text sides (module docstring) and the share of documents held out of each."""

    teacher: tuple[str, ...] = Field(..., min_length=1)
    distill: tuple[str, ...] = Field(..., min_length=1)
    heldout_fraction: float = Field(0.1, gt=0.0, le=0.5)
    max_chars: int | None = Field(
        None, ge=1000, description="Keep each side's first N characters (smoke runs)."
    )

    @field_validator("distill")
    @classmethod
    def _disjoint(cls, distill: tuple[str, ...], info) -> tuple[str, ...]:
        shared = set(distill) & set(info.data.get("teacher", ()))
        if shared:
            raise ValueError(
                f"the distillation text must be disjoint from the teacher's; both name {sorted(shared)}"
            )
        return distill

    def files(self, side: Literal["teacher", "distill"]) -> list[Path]:
        """The side's files: names relative to `<shared data>/text`, absolute paths as they are."""
        return [
            Path(name) if Path(name).is_absolute() else shared_data_dir() / "text" / name
            for name in getattr(self, side)
        ]


class StudySizes(_Section):
    """Calibration or evaluation size: tokens, sequence length, sequences per forward."""

    num_tokens: int = Field(..., ge=2)
    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(8, gt=0)


class StudyGrid(_Section):
    """The sweep (module docstring): `prune` at K = k, the merging `groupings` at each K of `num_selected`."""

    scorers: tuple[ScorerChoice, ...] = Field(..., min_length=1)
    groupings: tuple[GrouperChoice, ...] = Field(..., min_length=1)
    num_selected: tuple[int, ...] = Field(..., min_length=1)
    scalings: tuple[ScalingChoice, ...] = Field(..., min_length=1)

    @field_validator("groupings")
    @classmethod
    def _merging(cls, groupings: tuple) -> tuple:
        if any(g.name == "prune" for g in groupings):
            raise ValueError("prune runs at K = k anyway; list only the merging groupers here")
        return groupings


class StudyComparison(_Section):
    """The comparison: the `best` grid configurations plus do_acp and sf at K = k, against d2d, random
    init and random FFN; one distillation (`train`, rows of `seq_len` distill-side tokens) per seed."""

    best: int = Field(3, ge=1)
    seeds: list[int] = Field(..., min_length=1)
    seq_len: int = Field(256, ge=2)
    train: DistillConfig
    teacher: Literal["online", "cached"] = "cached"
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)


class StudyConfig(RecipeDocument):
    """One study: text, teacher, grid, comparison (module docstring)."""

    schema_version: Literal[1] = STUDY_SCHEMA_VERSION
    name: str = Field(..., min_length=1, pattern=r"^[\w.-]+$")
    description: str = ""
    text: StudyText
    teacher: TeacherModelConfig
    calibration: StudySizes
    evaluation: StudySizes
    grid: StudyGrid
    comparison: StudyComparison
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig(experiment="moe2dense-study"))

    def scaled(self, factor: int) -> StudyConfig:
        """The study `factor`× larger (module docstring); factor 1 is this one."""
        if factor < 1:
            raise RecipeError(f"scale: must be ≥ 1, got {factor}")
        if factor == 1:
            return self
        r = round(math.sqrt(factor))
        teacher = self.teacher
        wider = teacher.model_copy(
            update={
                "hidden_size": teacher.hidden_size * r,
                "num_heads": teacher.num_heads * r,
                "num_kv_heads": teacher.num_kv_heads * r,
                "expert_width": teacher.expert_width * r,
                "batch_size": teacher.batch_size * factor,
            }
        )
        train = self.comparison.train
        comparison = self.comparison.model_copy(
            update={"train": train.model_copy(update={"micro_batch_size": train.micro_batch_size * factor})}
        )
        return self.model_copy(
            update={
                "name": f"{self.name}-x{factor}",
                "teacher": TeacherModelConfig(**wider.model_dump()),
                "comparison": comparison,
            }
        )


def load_study_config(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a study YAML, apply dotted overrides (`comparison.seeds=[0]`), validate; RecipeError naming
    every bad field."""
    data = apply_overrides(read_recipe_data(path), list(overrides))
    origin = str(path) + (f" with overrides {list(overrides)}" if overrides else "")
    from pydantic import ValidationError

    try:
        return StudyConfig.model_validate(data)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, origin, "study config", StudyConfig)) from None
