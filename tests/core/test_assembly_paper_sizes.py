"""The student built from a REAL released config has the paper's size (METHOD.md "The paper's configurations").

Student = the teacher's active path minus the router: FFN width k·I (+ shared width), every other
weight unchanged. Paper: Qwen3-30B-A3B (128 experts, top-8, I = 768) → FFN 6144, 3.34B parameters, as
Qwen3ForCausalLM; GPT-OSS-20B (32 experts, top-4, I = 2880) → FFN 11520, 4.19B, as GptOssForCausalLM
with one expert. Built on the meta device from `spec.dense_config` (no weights).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from moe2dense_core.arch.spec import get_spec


@pytest.mark.parametrize(
    ("folder", "model_type", "ffn_width", "architecture", "billions"),
    [
        ("Qwen__Qwen3-30B-A3B", "qwen3_moe", 6144, "Qwen3ForCausalLM", 3.34),
        ("openai__gpt-oss-20b", "gpt_oss", 11520, "GptOssForCausalLM", 4.19),
    ],
    ids=["qwen3_30b_a3b", "gpt_oss_20b"],
)
def test_student_of_a_released_model_has_the_papers_size(
    shared_data, folder, model_type, ffn_width, architecture, billions
):
    config = json.loads((shared_data / "real_moe_configs" / folder / "config.json").read_text())
    spec = get_spec(model_type)
    dims = spec.dims(config)
    assert dims.top_k * dims.expert_width + dims.shared_width == ffn_width

    dense = spec.dense_config(config, ffn_width)
    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(AutoConfig.for_model(**dense))
    assert type(student).__name__ == architecture == dense["architectures"][0]
    assert round(sum(p.numel() for p in student.parameters()) / 1e9, 2) == billions
