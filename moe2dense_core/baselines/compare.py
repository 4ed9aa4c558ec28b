"""The paper's comparison [paper]: every student gets the same distillation, data and token budget.

    compare_students({"do_acp": StudentEntry("out/dense", "converted"),
                      "random_ffn": StudentEntry(random_ffn_student(teacher_dir, "out/dense"), "random_ffn")},
                     teacher, splits.train, splits.heldout, DistillConfig(max_steps=1000), out_dir="out/cmp")

Order of work:
  1. refuse, before any model is trained: a non-empty out_dir, a malformed student name or token
     tensor, downstream evaluation without a tokenizer, a multi-process launch, unequal budgets
     (`check_equal_budgets`: parameters P_i within 1% of the first student's, tokens T_i equal) and a
     student vocabulary other than the teacher's;
  2. evaluate the teacher on the held-out tokens (perplexity; downstream when eval_config is given);
  3. per student, in the order given: distill with the one `distill_config` on the one `train_tokens`
     (same rows, same order: the batch order is a function of distill_config.seed, and the global torch
     RNG is reseeded with it before each run), then held-out perplexity and KL(teacher ‖ student);
  4. write `out_dir/comparison.json` atomically (schema below) and log it as an artifact.

Token budget of a student [defined here]:
  T_i = prior_train_tokens_i + max_steps · micro_batch_size · grad_accum_steps · L
where L = train_tokens.shape[1] and prior_train_tokens counts training the student received after it was
built and before this comparison (e.g. a healing run after pruning), so such a head start is refused
unless every student had the same. The distillation term is equal for all by construction; after each
run the tokens the loop actually saw are checked against it.

Held-out evaluation [defined here]: the held-out rows are flattened into one stream and scored with
sliding windows of `window` tokens every `stride` tokens (default: both L, non-overlapping windows).

comparison.json:
  {"schema_version": 1, "versions": {torch, transformers},
   "data": {"train": {sha256, rows, seq_len, tokens}, "heldout": {sha256, tokens}},
   "distill_config": {...}, "heldout_eval": {window, stride}, "eval_config": {...} | null,
   "budget_check": {"param_rel_tol", "equal": true},
   "teacher": {class, num_params, perplexity, downstream?},
   "students": {name: {kind, source, num_params, token_budget: {prior_train_tokens, distill_tokens, total},
                       distill: {steps, tokens_seen, precision, final_metrics, checkpoint},
                       perplexity, kl_to_teacher, downstream?}}}
tokens_digest gives the sha256 of the int64 row-major bytes, so the exact data can be matched later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from moe2dense_core.baselines.budget import (
    DEFAULT_PARAM_REL_TOL,
    StudentBudget,
    check_equal_budgets,
    config_parameter_count,
    count_parameters,
)
from moe2dense_core.distill import DistillConfig, DistillResult, distill, tokens_digest
from moe2dense_core.errors import DataError, DistillError, Moe2DenseError, OutputDirError
from moe2dense_core.evaluate import EvalConfig, evaluate_downstream, perplexity, teacher_student_kl
from moe2dense_core.evaluate.model_io import model_device
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.logging import MetricLogger, NullLogger
from moe2dense_core.pretrained import load_causal_lm, load_config

COMPARISON_SCHEMA_VERSION = 1
COMPARISON_FILE = "comparison.json"

StudentKind = Literal["converted", "d2d", "random_init", "random_ffn"]
_STUDENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class StudentEntry:
    """One compared student.

    model: a causal LM in memory (trained in place) or a checkpoint folder (loaded in fp32 when its turn
    comes, freed after). kind: how it was made — "converted" (MoE→dense), "d2d" (dense→dense pruning),
    "random_init", "random_ffn" (random FFN + teacher attention). prior_train_tokens: see the module
    docstring's token budget.
    """

    model: nn.Module | str | Path
    kind: StudentKind
    prior_train_tokens: int = 0

    def __post_init__(self) -> None:
        if self.kind not in get_args(StudentKind):
            raise Moe2DenseError(f"StudentEntry.kind must be in {get_args(StudentKind)}; got {self.kind!r}")
        if self.prior_train_tokens < 0:
            raise Moe2DenseError(f"StudentEntry.prior_train_tokens must be ≥ 0: {self.prior_train_tokens}")
        if not self.in_memory and not Path(self.model, "config.json").is_file():
            raise Moe2DenseError(f"StudentEntry.model: {self.model} is no model and no checkpoint folder")

    @property
    def in_memory(self) -> bool:
        return isinstance(self.model, nn.Module)

    @property
    def source(self) -> str:
        """The checkpoint folder, or the class of the in-memory model."""
        return f"in memory: {type(self.model).__name__}" if self.in_memory else str(self.model)

    def num_params(self) -> int:
        """Unique parameters (a checkpoint folder is counted on the meta device, without loading it)."""
        return count_parameters(self.model) if self.in_memory else config_parameter_count(self.model)

    def vocab_size(self) -> int:
        """config.vocab_size of the model or of the checkpoint folder's config.json."""
        if self.in_memory:
            return int(self.model.config.vocab_size)
        return int(load_config(self.model).vocab_size)

    def load(self, device: torch.device) -> nn.Module:
        """The model on `device`; a checkpoint folder loads in fp32 (the master weights distill trains)."""
        if self.in_memory:
            return self.model.to(device)
        return load_causal_lm(self.model, dtype=torch.float32).to(device)


@dataclass(frozen=True)
class ComparisonResult:
    """The written document, where it is, and each student's distillation run (with its metric history)."""

    path: Path
    document: dict[str, Any]
    runs: dict[str, DistillResult]


@dataclass(frozen=True)
class _HeldoutEval:
    """The evaluation every model gets: perplexity on the held-out stream [M], downstream when configured."""

    stream: torch.Tensor
    window: int
    stride: int
    eval_config: EvalConfig | None
    tokenizer: Any

    def run(self, model: nn.Module) -> dict[str, Any]:
        ppl = perplexity(model, self.stream, window=self.window, stride=self.stride)
        numbers: dict[str, Any] = {"perplexity": asdict(ppl)}
        if self.eval_config is not None:
            numbers["downstream"] = evaluate_downstream(model, self.tokenizer, self.eval_config)
        return numbers

    def kl(self, student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
        kl = teacher_student_kl(student, teacher, self.stream, window=self.window, stride=self.stride)
        return asdict(kl)


class _PrefixedLogger:
    """Passes everything to `logger` with parameter and metric names prefixed `<student>.`."""

    def __init__(self, logger: MetricLogger, prefix: str) -> None:
        self._logger, self._prefix = logger, prefix

    def log_params(self, params: dict[str, Any]) -> None:
        self._logger.log_params({f"{self._prefix}.{k}": v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._logger.log_metrics({f"{self._prefix}.{k}": v for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._logger.log_artifact(path, artifact_path)


def _shape(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _check_inputs(
    students: Mapping[str, StudentEntry],
    train_tokens: Any,
    heldout_tokens: Any,
    out_dir: Path,
    eval_config: EvalConfig | None,
    tokenizer: Any,
) -> None:
    bad_names = [name for name in students if not _STUDENT_NAME.match(name)]
    if bad_names:
        raise Moe2DenseError(f"student names must match {_STUDENT_NAME.pattern} (folder names): {bad_names}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputDirError(f"out_dir {out_dir}: exists and is not an empty folder")
    if not isinstance(train_tokens, torch.Tensor) or train_tokens.ndim != 2:
        raise DataError(f"train_tokens must be a tensor of packed rows [N, L]; got {_shape(train_tokens)}")
    if not isinstance(heldout_tokens, torch.Tensor) or heldout_tokens.ndim not in (1, 2):
        raise DataError(f"heldout_tokens must be a tensor [M, L] or [M]; got {_shape(heldout_tokens)}")
    if eval_config is not None and tokenizer is None:
        raise Moe2DenseError("eval_config asks for downstream evaluation, which needs the tokenizer")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise DistillError("compare_students runs in one process; launch it without torchrun / accelerate")


def _distill_and_evaluate(
    name: str,
    entry: StudentEntry,
    budget: StudentBudget,
    teacher: nn.Module,
    train_tokens: torch.Tensor,
    config: DistillConfig,
    heldout: _HeldoutEval,
    out_dir: Path,
    logger: MetricLogger,
) -> tuple[dict[str, Any], DistillResult]:
    """One student's distillation (global RNG reseeded with config.seed) and evaluation → (record, run)."""
    distill_tokens = budget.train_tokens - entry.prior_train_tokens
    device = model_device(teacher)
    student = entry.load(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        run = distill(
            student,
            teacher,
            train_tokens,
            config,
            logger=_PrefixedLogger(logger, name),
            checkpoint_dir=out_dir / "checkpoints" / name,
        )
    if run.tokens_seen != distill_tokens:
        raise DistillError(f"student {name!r} trained on {run.tokens_seen} tokens, budget {distill_tokens}")
    numbers = {**heldout.run(student), "kl_to_teacher": heldout.kl(student, teacher)}
    logger.log_metrics(
        {
            f"{name}.heldout_perplexity": numbers["perplexity"]["perplexity"],
            f"{name}.heldout_kl_to_teacher": numbers["kl_to_teacher"]["mean_kl"],
        }
    )
    checkpoint = str(run.checkpoint_path.relative_to(out_dir)) if run.checkpoint_path is not None else None
    record = {
        "kind": entry.kind,
        "source": entry.source,
        "num_params": budget.num_params,
        "token_budget": {
            "prior_train_tokens": entry.prior_train_tokens,
            "distill_tokens": distill_tokens,
            "total": budget.train_tokens,
        },
        "distill": {
            "steps": run.steps,
            "tokens_seen": run.tokens_seen,
            "precision": run.precision,
            "final_metrics": run.final_metrics,
            "checkpoint": checkpoint,
        },
        **numbers,
    }
    return record, run


def compare_students(
    students: Mapping[str, StudentEntry],
    teacher: nn.Module,
    train_tokens: torch.Tensor,
    heldout_tokens: torch.Tensor,
    distill_config: DistillConfig,
    *,
    out_dir: str | Path,
    eval_config: EvalConfig | None = None,
    tokenizer: Any = None,
    window: int | None = None,
    stride: int | None = None,
    param_rel_tol: float = DEFAULT_PARAM_REL_TOL,
    logger: MetricLogger | None = None,
) -> ComparisonResult:
    """Distill and evaluate every student on one budget; write `out_dir/comparison.json` (module docstring).

    teacher: the MoE teacher in memory (distillation targets, KL reference). train_tokens: packed rows
    [N, L] (int64); heldout_tokens: rows [M, L'] or a stream [M] that training never sees. tokenizer: the
    teacher's, needed only for downstream evaluation (eval_config). Raises BudgetMismatchError (and the
    other input errors listed in the module docstring) before any student is trained.
    """
    logger = logger or NullLogger()
    out_dir = Path(out_dir).expanduser().absolute()
    _check_inputs(students, train_tokens, heldout_tokens, out_dir, eval_config, tokenizer)
    seq_len = train_tokens.shape[1]
    distill_tokens = distill_config.max_steps * distill_config.sequences_per_step(world_size=1) * seq_len
    budgets = [
        StudentBudget(
            name=name, num_params=entry.num_params(), train_tokens=entry.prior_train_tokens + distill_tokens
        )
        for name, entry in students.items()
    ]
    check_equal_budgets(budgets, param_rel_tol=param_rel_tol)
    teacher_vocab = teacher.config.vocab_size
    vocab = {name: entry.vocab_size() for name, entry in students.items()}
    if any(v != teacher_vocab for v in vocab.values()):
        raise Moe2DenseError(f"students' vocab_size must be the teacher's {teacher_vocab}: {vocab}")

    window = window if window is not None else seq_len
    heldout = _HeldoutEval(
        heldout_tokens.reshape(-1), window, stride if stride is not None else window, eval_config, tokenizer
    )
    teacher_record = {
        "class": type(teacher).__name__,
        "num_params": count_parameters(teacher),
        **heldout.run(teacher),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    runs: dict[str, DistillResult] = {}
    for (name, entry), budget in zip(students.items(), budgets, strict=True):
        records[name], runs[name] = _distill_and_evaluate(
            name, entry, budget, teacher, train_tokens, distill_config, heldout, out_dir, logger
        )

    document = {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "versions": {"torch": torch.__version__, "transformers": version("transformers")},
        "data": {
            "train": {
                "sha256": tokens_digest(train_tokens),
                "rows": train_tokens.shape[0],
                "seq_len": seq_len,
                "tokens": train_tokens.numel(),
            },
            "heldout": {"sha256": tokens_digest(heldout_tokens), "tokens": heldout_tokens.numel()},
        },
        "distill_config": distill_config.model_dump(mode="json"),
        "heldout_eval": {"window": heldout.window, "stride": heldout.stride},
        "eval_config": eval_config.model_dump(mode="json") if eval_config is not None else None,
        "budget_check": {"param_rel_tol": param_rel_tol, "equal": True},
        "teacher": teacher_record,
        "students": records,
    }
    path = out_dir / COMPARISON_FILE
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    logger.log_artifact(path)
    return ComparisonResult(path=path, document=document, runs=runs)
