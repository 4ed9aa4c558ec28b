"""A new family is one file + one import: a family file declared purely as data (no method), imported by a
fresh interpreter, converts a teacher the core has never heard of.

The toy family is transformers 5.24's FlexOlmo (`flex_olmo`), which moe2dense does not ship: it is OLMoE's
layout under another name (router `mlp.gate`, per-expert `mlp.experts.{e}.{gate,up,down}_proj` on disk,
fused `gate_up_proj` in memory, softmax routing), so its family file only names the model type, the expert
width field and the dense target (the same type with one expert). The conversion runs in a subprocess so
the registration stays there; this process checks what it wrote:
- E = 4, top-2 → `convert` (sf, K = 2, prune, uniform): the student's FFN equals Σ_{e kept} c_e f_e(x) of
  the teacher's experts in float64, and the student loads in stock transformers;
- E = 1, top-1 → the student gives the teacher's logits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from moe2dense_core.arch import supported_model_types
from moe2dense_core.arch.expert_weights import Activation
from moe2dense_core.arch.layouts import FusedLayout
from moe2dense_core.assembly import PROVENANCE_FILE
from tests.fixtures.tiny_moe import EOS_ID, PAD_ID, VOCAB_SIZE, init_random_weights, tiny_tokenizer

FAMILY_FILE = '''
"""FlexOlmo → the same `flex_olmo` type with one expert, top-1 (OLMoE's layout)."""

from moe2dense_core.arch.spec import MoEArchSpec, register_spec


@register_spec
class FlexOlmoSpec(MoEArchSpec):
    model_type = "flex_olmo"
    dense_model_type = "flex_olmo"
    expert_width_key = "intermediate_size"
    dense_ffn = "one_expert"
'''

CONVERT = """
import sys, torch
import toy_flex_olmo  # the one import
from moe2dense_core import PlanConfig, convert

tokens = [torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))]
for teacher, out in zip(sys.argv[1::2], sys.argv[2::2]):
    convert(teacher, tokens, out, PlanConfig(scoring="sf", grouping="prune", scaling="uniform"))
"""

EXPERTS_IN_MEMORY = FusedLayout("gate_up_proj", "down_proj")
"""transformers 5.24's FlexOlmoExperts: gate_up_proj [E, 2I, H] (halves), down_proj [E, H, I]."""


def build_flex_olmo(out: Path, num_experts: int, top_k: int) -> Path:
    config = AutoConfig.for_model(
        "flex_olmo",
        hidden_size=64,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        vocab_size=VOCAB_SIZE,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    init_random_weights(model, seed=3)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """ "four" / "one" → (teacher, student) after converting with the toy family file in a fresh interpreter."""
    root = tmp_path_factory.mktemp("toy")
    (root / "toy_flex_olmo.py").write_text(textwrap.dedent(FAMILY_FILE))
    pairs = {
        "four": (build_flex_olmo(root / "teacher4", 4, 2), root / "dense4"),
        "one": (build_flex_olmo(root / "teacher1", 1, 1), root / "dense1"),
    }
    args = [str(path) for pair in pairs.values() for path in pair]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.getcwd()])}
    result = subprocess.run(
        [sys.executable, "-c", CONVERT, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return pairs


def test_the_toy_family_is_not_shipped() -> None:
    assert "flex_olmo" not in supported_model_types()


def test_student_ffn_is_the_scaled_sum_of_the_kept_teacher_experts(converted) -> None:
    teacher_dir, student_dir = converted["four"]
    plan = json.loads((student_dir / PROVENANCE_FILE).read_text())["plan"]
    teacher = AutoModelForCausalLM.from_pretrained(
        teacher_dir, dtype=torch.float64, experts_implementation="eager"
    )
    student = AutoModelForCausalLM.from_pretrained(
        student_dir, dtype=torch.float64, experts_implementation="eager"
    )
    assert student.config.num_experts == 1 and student.config.intermediate_size == 2 * 32
    x = torch.randn(1, 9, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        for layer_plan in plan["layers"]:
            layer = layer_plan["layer"]
            experts = EXPERTS_IN_MEMORY.from_module(teacher.model.layers[layer].mlp.experts)
            outputs = experts.forward(x[0], Activation("swiglu"))  # [E, T, H]
            expected = sum(
                c * outputs[group[0]]
                for group, c in zip(layer_plan["groups"], layer_plan["scales"], strict=True)
            )
            got = student.model.layers[layer].mlp(x)
            got = (got[0] if isinstance(got, tuple) else got)[0]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_a_one_expert_teacher_and_its_student_give_the_same_logits(converted) -> None:
    teacher_dir, student_dir = converted["one"]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(student(tokens).logits, teacher(tokens).logits, rtol=0, atol=1e-5)
