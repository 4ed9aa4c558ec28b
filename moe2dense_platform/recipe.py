"""Recipe: the whole conversion pipeline as one frozen, strict, validated value (read from YAML).

A recipe says WHAT to compute (source model, calibration data, statistics, plan, distillation,
evaluation) and how to name it in MLflow; `moe2dense_platform/settings.py` says WHERE things are stored. Nothing in a
recipe is a credential or an endpoint, so a recipe can be committed, logged and shared as is.

Every section is `frozen=True, extra="forbid"`: a misspelt key is an error, not a silent default.
`parse_recipe` turns pydantic's errors into one `RecipeError` whose lines name the dotted field path,
e.g. `calibration.num_tokens: Input should be greater than 0 (got -5)`; an unknown key lists the keys
its section allows (moe2dense_platform/field_errors.py). Beyond pydantic's own checks [defined here]: a boolean
where a number is expected is refused (pydantic would read `max_steps: true` as 1), every float must
be finite, every sequence length and the perplexity budget hold ≥ 2 tokens, and the plan's K and k
must agree with each other before the teacher is known (`validate_plan_config` against the most
permissive teacher the plan allows). What needs the teacher's config.json is moe2dense_platform/recipe_teacher.py.

Stage configs of the core are reused as field types: `PlanConfig` (moe2dense_core.plan),
`DistillConfig` (moe2dense_core.distill.config) and `EvalConfig` (moe2dense_core.evaluate.config);
text sources reuse `CorpusSpec` (moe2dense_platform/corpus.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.errors import Moe2DenseError, PlanError
from moe2dense_core.evaluate.config import EvalConfig
from moe2dense_core.io.digests import json_sha256
from moe2dense_core.plan import PlanConfig, validate_plan_config
from moe2dense_core.stats.memory_bounds import (
    DEFAULT_MAX_BLOCK_BYTES,
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_HIDDEN_BYTES,
    MINIMUM_BYTES,
    memory_bound_problem,
)
from moe2dense_platform.corpus import CorpusSpec
from moe2dense_platform.field_errors import format_validation_error, lax_number_errors

RECIPE_SCHEMA_VERSION = 1
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Dtype = Literal["float32", "bfloat16", "float16"]


def _processes_or_auto(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError("expected a whole number ≥ 1 or 'auto'")


ProcessCount = Annotated[int | Literal["auto"], BeforeValidator(_processes_or_auto)]
"""A number of processes on a node: a whole number ≥ 1, or `auto` (resolved on the node that runs them)."""


class RecipeError(Moe2DenseError):
    """A recipe (file, override or value) is invalid; every line names the dotted field path."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceConfig(_Section):
    """The teacher MoE: a local checkpoint folder or a model-hub id pinned to a revision.

    trust_remote_code / allow_pickle exist only to be refused: moe2dense never runs a checkpoint's own
    Python code and never unpickles weights (safetensors only), so a recipe asking for either fails here.
    """

    model: str = Field(..., min_length=1, description="Local checkpoint folder, or a hub id `org/name`.")
    revision: str | None = Field(
        None, description="Hub revision (commit sha, tag or branch); required for hub ids, unused for paths."
    )
    trust_remote_code: Literal[False] = False
    allow_pickle: Literal[False] = False

    @property
    def is_local(self) -> bool:
        """A path (starting with `/`, `.` or `~`, or an existing folder) rather than a hub id."""
        return self.model.startswith(("/", ".", "~")) or Path(self.model).expanduser().exists()

    @model_validator(mode="after")
    def _hub_ids_are_pinned(self) -> SourceConfig:
        if self.is_local:
            return self
        if not HUB_ID_PATTERN.match(self.model):
            raise ValueError(
                f"model {self.model!r} is neither an existing local path nor a hub id `org/name`"
            )
        if self.revision is None:
            raise ValueError(f"hub model {self.model!r} needs a revision (commit sha, tag or branch)")
        return self


class CalibrationConfig(_Section):
    """Calibration text for the statistics pass (METHOD.md step 1) [defined here: size and source].

    num_tokens: total tokens fed to the teacher, cut into sequences of `seq_len` tokens and batches of
    `batch_size` sequences; seed: which sequences are drawn from the corpus.
    """

    data: CorpusSpec = Field(default_factory=CorpusSpec)
    num_tokens: int = Field(262_144, gt=0)
    seq_len: int = Field(512, ge=2, description="Tokens per sequence; ≥ 2 (one token predicts the next).")
    batch_size: int = Field(8, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _at_least_one_sequence(self) -> CalibrationConfig:
        if self.num_tokens < self.seq_len:
            raise ValueError(
                f"num_tokens ({self.num_tokens}) is smaller than one sequence (seq_len {self.seq_len})"
            )
        return self


class StatisticsConfig(_Section):
    """How the statistics pass runs.

    mode: `in_memory` loads the whole teacher; `layer_by_layer` streams one decoder layer at a time
    from the safetensors shards (teachers larger than memory). dtype: compute dtype of the teacher's
    forward (`auto`: the project's one precision rule, `moe2dense_core.distill.precision.compute_dtype`:
    bfloat16 where the device has native bf16, else float32); the accumulators are always float64.
    Memory bounds, in bytes (defaults: the library's; the peak-memory formula of layer_by_layer in
    moe2dense_core/stats/collect.py is a function of them): max_chunk_bytes bounds the all-expert outputs
    [E, T_chunk, H] computed at once (both modes); max_hidden_bytes the calibration hidden states kept in
    RAM before they spill to a memory-mapped temporary file, and max_block_bytes the float32 bytes of one
    block of routed experts read from disk (layer_by_layer only). The library's rule for their values
    (memory_bounds.py): chunk and block ≥ 1, hidden states ≥ 0, where 0 always spills to disk.
    """

    mode: Literal["in_memory", "layer_by_layer"] = "in_memory"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field(
        "auto", description="`auto` (cuda when available, else cpu), `cpu`, `cuda`, `cuda:1`…"
    )
    max_chunk_bytes: int = Field(
        DEFAULT_MAX_CHUNK_BYTES,
        json_schema_extra={"minimum": MINIMUM_BYTES["max_chunk_bytes"]},
        description="Bytes of the all-expert outputs [E, T_chunk, H] and intermediates computed at once.",
    )
    max_hidden_bytes: int = Field(
        DEFAULT_MAX_HIDDEN_BYTES,
        json_schema_extra={"minimum": MINIMUM_BYTES["max_hidden_bytes"]},
        description="layer_by_layer: bytes of calibration hidden states held in RAM; beyond, a mapped file "
        "(0: always).",
    )
    max_block_bytes: int = Field(
        DEFAULT_MAX_BLOCK_BYTES,
        json_schema_extra={"minimum": MINIMUM_BYTES["max_block_bytes"]},
        description="layer_by_layer: float32 bytes of one block of routed experts read from disk.",
    )

    @field_validator("max_chunk_bytes", "max_hidden_bytes", "max_block_bytes")
    @classmethod
    def _memory_bound(cls, value: int, info: ValidationInfo) -> int:
        """The library's one rule for the bounds (moe2dense_core/stats/memory_bounds.py)."""
        problem = memory_bound_problem(info.field_name, value)
        if problem is not None:
            raise ValueError(f"Input should be {problem}")
        return value


class TeacherCacheConfig(_Section):
    """The offline teacher (`distillation.teacher: cached`): what stage `teacher_logits` keeps per token.

    k: the teacher's most probable next-token ids kept per position, the rest of its mass in one tail
    bucket (k = vocabulary size is exact; must not exceed it, checked against the teacher before it runs).
    logprob_dtype: storage of the k log-probabilities (ids, tail and input ids stay 4 bytes). Size:
    bytes/token = k·(4 + b) + 4 + 4, b = 4 (float32) or 2 (float16): k = 64 in float16 is 392 bytes/token.
    batch_size: rows per teacher forward; rows_per_shard: rows per stored shard file (the unit a
    training process fetches); device: where the teacher runs (`auto`: cuda when available, else cpu).
    processes: P teacher processes, data-parallel over shards (rank r writes shards i ≡ r mod P, each
    process on cuda:r when the device is cuda, else on the CPU); `auto` = the worker's CUDA devices (1
    without CUDA). Default 1: every process holds a whole teacher. The cache is the same for any P (not
    part of the stage's cache key); a device with an index (`cuda:1`) needs processes = 1.
    """

    k: int = Field(64, ge=1, description="Teacher top-k ids kept per token; the vocabulary size is exact.")
    logprob_dtype: Literal["float32", "float16"] = "float16"
    batch_size: int = Field(8, gt=0, description="Rows per teacher forward.")
    rows_per_shard: int = Field(256, gt=0, description="Rows per shard file; ≥ batch_size.")
    device: str = Field(
        "auto", description="`auto` (cuda when available, else cpu), `cpu`, `cuda`, `cuda:1`…"
    )
    processes: ProcessCount = Field(
        1, description="Teacher processes (one per GPU), ≥ 1; `auto`: one per CUDA device (1 without)."
    )

    @model_validator(mode="after")
    def _whole_batches_per_shard(self) -> TeacherCacheConfig:
        if self.rows_per_shard < self.batch_size:
            raise ValueError(
                f"rows_per_shard ({self.rows_per_shard}) is smaller than batch_size ({self.batch_size})"
            )
        if self.processes != 1 and ":" in self.device:
            raise ValueError(
                f"device {self.device!r} names one device: use processes 1, or device cuda / auto"
            )
        return self


class DistillationConfig(_Section):
    """Knowledge distillation of the assembled student from the teacher (METHOD.md step 6).

    enabled=false stops after assembly (pre-distillation evaluation only). `train` is the core's
    DistillConfig; `data` its training text; `seq_len` the training sequence length.
    teacher: `online` runs the teacher next to the student at every step (the exact full-vocabulary
    loss); `cached` runs it once in stage `teacher_logits`, which stores its top-k log-probabilities
    (`teacher_cache`) in the artifact store, and trains from them without loading the teacher — one
    cache serves every student distilled on the same teacher, data and temperature.
    Processes: W = nnodes × nproc_per_node (`auto`: this node's CUDA devices, 1 without CUDA); W > 1
    runs torchrun (tasks/distill_launch.py; `train.parallelism` ddp or fsdp). Every step then reads
    tokens_per_step(W) = micro_batch_size × grad_accum_steps × W × seq_len tokens; `token_budget`, when
    given, is the run's stated total, checked against max_steps × tokens_per_step(W) (needs a fixed W).
    """

    enabled: bool = True
    data: CorpusSpec = Field(default_factory=CorpusSpec)
    seq_len: int = Field(512, ge=2, description="Tokens per training row; ≥ 2 (one predicts the next).")
    train: DistillConfig
    teacher: Literal["online", "cached"] = Field(
        "online", description="online: the teacher runs at every step; cached: from stage teacher_logits."
    )
    teacher_cache: TeacherCacheConfig = Field(default_factory=TeacherCacheConfig)
    nproc_per_node: ProcessCount = Field(
        1, description="Distillation processes (GPUs) per node, ≥ 1; `auto`: one per CUDA device (1 without)."
    )
    nnodes: int = Field(1, ge=1, description="Nodes of a multi-node distillation (infra/kubernetes/).")
    token_budget: int | None = Field(
        None, gt=0, description="Training tokens to see: within one step of max_steps × tokens_per_step."
    )

    @property
    def world_size(self) -> int | None:
        """W = nnodes × nproc_per_node; None while nproc_per_node is `auto` (known on the node only)."""
        return None if self.nproc_per_node == "auto" else self.nnodes * self.nproc_per_node

    def tokens_per_step(self, world_size: int) -> int:
        """Training tokens per optimizer step on `world_size` processes:
        micro_batch_size × grad_accum_steps × world_size × seq_len."""
        return self.train.sequences_per_step(world_size) * self.seq_len

    @model_validator(mode="after")
    def _budget_fits_the_steps(self) -> DistillationConfig:
        if self.token_budget is None:
            return self
        if self.world_size is None:
            raise ValueError(
                "token_budget needs a fixed nproc_per_node (not `auto`): the tokens per step depend on it"
            )
        per_step = self.tokens_per_step(self.world_size)
        planned = self.train.max_steps * per_step
        if abs(planned - self.token_budget) >= per_step:
            raise ValueError(
                f"token_budget {self.token_budget:,} is not within one step of max_steps × tokens_per_step = "
                f"{self.train.max_steps} × {per_step:,} = {planned:,} (tokens_per_step = micro_batch_size "
                f"× grad_accum_steps × nnodes × nproc_per_node × seq_len); max_steps "
                f"{round(self.token_budget / per_step)} would fit"
            )
        return self


class EvaluationConfig(_Section):
    """Perplexity on held-out text and downstream accuracies (METHOD.md step 7).

    perplexity_tokens: held-out tokens scored in windows of `seq_len`, `batch_size` windows at a time.
    downstream: the core's EvalConfig (lm-eval tasks: hub names or local jsonl files); its default is the
    paper's suite, whose unweighted mean accuracy is the headline number [paper]. None: perplexity only.
    """

    perplexity_data: CorpusSpec = Field(default_factory=CorpusSpec)
    perplexity_tokens: int = Field(65_536, ge=2, description="≥ 2: the first token scores nothing.")
    seq_len: int = Field(512, ge=2, description="Window length; ≥ 2 (one token predicts the next).")
    batch_size: int = Field(8, gt=0)
    downstream: EvalConfig | None = None


class TrackingConfig(_Section):
    """Names in MLflow: the experiment of the runs and the registered model of the dense result."""

    experiment: str = Field("moe2dense", min_length=1)
    registered_model: str | None = Field(None, min_length=1, description="None: do not register.")
    run_name: str | None = None


class StorageConfig(_Section):
    """How the dense checkpoint is written: dtype, shard size, and an optional local export copy."""

    checkpoint_dtype: Dtype = "bfloat16"
    max_shard_size_mb: int = Field(5_000, gt=0)
    export_dir: Path | None = Field(None, description="Also copy the final dense model to this folder.")


def check_plan_sizes(plan: PlanConfig) -> PlanConfig:
    """The checks of `validate_plan_config` that need no teacher (K < k, a grouper that does not merge
    with K != k), run against the most permissive teacher the plan allows: E = max(K, k) experts and
    top-k = k (K when num_groups is unset). ValueError (a field validator's error) otherwise."""
    num_groups = plan.num_groups or plan.num_selected or 1
    num_selected = plan.num_selected or num_groups
    try:
        validate_plan_config(plan, num_experts=max(num_selected, num_groups), top_k=num_groups)
    except PlanError as error:
        raise ValueError(str(error)) from None
    return plan


class RecipeDocument(_Section):
    """A whole recipe file (a conversion's Recipe, a comparison's CompareRecipe): strict numbers and a digest."""

    @model_validator(mode="wrap")
    @classmethod
    def _numbers_are_numbers(cls, data: Any, handler: Any) -> RecipeDocument:
        """Refuse what pydantic's lax mode would silently convert (`lax_number_errors`: `true` for a
        number, a non-finite float), together with pydantic's other errors, less those at or above
        the same path (a section check that saw the converted value)."""
        problems = lax_number_errors(data, cls)
        try:
            recipe = handler(data)
        except ValidationError as error:
            if not problems:
                raise
            problems += [e for e in error.errors() if not any(_within(p["loc"], e["loc"]) for p in problems)]
            raise ValidationError.from_exception_data(cls.__name__, problems) from None
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return recipe

    def digest(self) -> str:
        """sha256 of the canonical (sorted-key, compact) JSON of the recipe."""
        return json_sha256(self.model_dump(mode="json"))


class Recipe(RecipeDocument):
    """One conversion: every stage's configuration, validated before any task runs."""

    schema_version: Literal[1] = RECIPE_SCHEMA_VERSION
    name: str = Field(..., min_length=1, pattern=r"^[\w.-]+$", description="Short id used in run names.")
    description: str = ""
    source: SourceConfig
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    statistics: StatisticsConfig = Field(default_factory=StatisticsConfig)
    plan: PlanConfig = Field(default_factory=PlanConfig)
    distillation: DistillationConfig | None = None
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("plan")
    @classmethod
    def _plan_sizes_agree(cls, plan: PlanConfig) -> PlanConfig:
        return check_plan_sizes(plan)


def _within(loc: tuple[str | int, ...], outer: tuple[str | int, ...]) -> bool:
    return loc[: len(outer)] == outer


Document = TypeVar("Document", bound=RecipeDocument)


def parse_document(model: type[Document], data: Any, origin: str, kind: str) -> Document:
    """Validate a plain mapping into `model` (a recipe of `kind`); RecipeError naming every bad field path."""
    if not isinstance(data, dict):
        raise RecipeError(
            f"invalid {kind} {origin}: the top level must be a mapping, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RecipeError(format_validation_error(error, origin, kind, model)) from None


def parse_recipe(data: Any, origin: str = "<value>") -> Recipe:
    """Validate a plain mapping into a Recipe; raises RecipeError naming every bad field path."""
    return parse_document(Recipe, data, origin, "recipe")


__all__ = [
    "RECIPE_SCHEMA_VERSION",
    "CalibrationConfig",
    "DistillationConfig",
    "EvaluationConfig",
    "Recipe",
    "RecipeDocument",
    "RecipeError",
    "SourceConfig",
    "StatisticsConfig",
    "StorageConfig",
    "TeacherCacheConfig",
    "TrackingConfig",
    "check_plan_sizes",
    "format_validation_error",
    "parse_recipe",
]
