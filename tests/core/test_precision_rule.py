"""One precision rule for the whole project (moe2dense_core.distill.precision) and its switch.

Issue 8 defect 1: the teacher trainer had its own check, "does a bf16 autocast matmul run?", instead
of the library's "is bf16 native?". On a CPU without bf16 units autocast runs ~100x slower than fp32,
so the demo trained its teacher for hours. `MOE2DENSE_DISABLE_BF16=1` reproduces such a machine here
(bf16 still *runs* on it): every choice must then be fp32, the teacher trainer's included, and no
module may compute in bf16. A second check anywhere in the code is refused statically.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import DistillConfig, DistillError, distill
from moe2dense_core.distill.precision import (
    DISABLE_BF16_ENV,
    bf16_supported,
    compute_dtype,
    load_dtype,
    resolve_precision,
)
from moe2dense_core.teacher import TeacherModelConfig, build_teacher, train_teacher_model
from tests.core.distill_tiny_models import dense_student_from_teacher, random_rows, tiny_teacher
from tests.flows.tiny_teacher import TINY_TEACHER

CPU = torch.device("cpu")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEACHER = TeacherModelConfig(**{**TINY_TEACHER, "seq_len": 16, "steps": 2, "eval_windows": 2})
# where bf16 may be decided or turned on: the rule itself, nowhere else
RULE_FILE = PROJECT_ROOT / "moe2dense_core" / "distill" / "precision.py"
BF16_DECIDERS = (
    "autocast",
    "is_bf16_supported",
    "_is_mkldnn_bf16_supported",
    "_is_avx512_bf16_supported",
    "_is_amx_tile_supported",
)


def teacher_compute_dtypes(config: TeacherModelConfig) -> tuple[str, set[torch.dtype]]:
    """(resolved precision, dtypes of every floating module output) of a 2-step training run."""
    model = build_teacher(config, 300)
    seen: set[torch.dtype] = set()

    def record(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            seen.add(output.dtype)

    for module in model.modules():
        module.register_forward_hook(record)
    ids = torch.randint(0, 300, (400,), generator=torch.Generator().manual_seed(0))
    summary = train_teacher_model(model, ids[:300], ids[300:], config)
    return summary.precision, seen


def test_the_switch_makes_every_precision_choice_fp32(monkeypatch):
    monkeypatch.setenv(DISABLE_BF16_ENV, "1")
    assert not bf16_supported(CPU)
    assert resolve_precision("auto", CPU) == "fp32"
    assert compute_dtype("auto", CPU) == torch.float32  # calibration statistics, dtype: auto
    assert load_dtype(CPU) == torch.float32  # models loaded to evaluate or to teach
    with pytest.raises(DistillError, match=DISABLE_BF16_ENV):
        resolve_precision("bf16", CPU)
    precision, dtypes = teacher_compute_dtypes(TEACHER)
    assert precision == "fp32" and torch.bfloat16 not in dtypes
    with pytest.raises(DistillError, match="bf16"):  # before any training step
        train_teacher_model(
            build_teacher(TEACHER, 300),
            torch.arange(100),
            torch.arange(100),
            TEACHER.model_copy(update={"precision": "bf16"}),
        )
    teacher = tiny_teacher(seed=1)
    result = distill(
        dense_student_from_teacher(teacher),
        teacher,
        random_rows(4, 16),
        DistillConfig(max_steps=1, micro_batch_size=4),
    )
    assert result.precision == "fp32"


def test_the_teacher_trainer_computes_in_what_the_rule_says(monkeypatch):
    monkeypatch.delenv(DISABLE_BF16_ENV, raising=False)
    expected = resolve_precision("auto", CPU)
    precision, dtypes = teacher_compute_dtypes(TEACHER)
    assert precision == expected
    assert (torch.bfloat16 in dtypes) == (expected == "bf16")
    precision, dtypes = teacher_compute_dtypes(TEACHER.model_copy(update={"precision": "fp32"}))
    assert precision == "fp32" and torch.bfloat16 not in dtypes


def test_the_switch_accepts_only_0_and_1(monkeypatch):
    monkeypatch.setenv(DISABLE_BF16_ENV, "0")  # the hardware's (oneDNN's) answer
    assert bf16_supported(CPU) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    monkeypatch.setenv(DISABLE_BF16_ENV, "yes")
    with pytest.raises(DistillError, match=f"{DISABLE_BF16_ENV}='yes'"):
        bf16_supported(CPU)


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_no_code_decides_bf16_outside_the_rule():
    offenders = []
    for folder in ("moe2dense_core", "tasks", "flows", "bench", "scripts"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path == RULE_FILE:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Attribute) and node.attr in BF16_DECIDERS:
                    if _dotted(node).startswith("torch."):
                        offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} {_dotted(node)}")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                    names = [a.name for a in node.names if a.name in BF16_DECIDERS]
                    offenders += [f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} import {n}" for n in names]
    assert offenders == [], "bf16 decided outside moe2dense_core/distill/precision.py"
