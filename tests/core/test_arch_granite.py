"""Granite MoE → dense Granite keeps what makes Granite Granite: the four multipliers (embedding, residual,
attention, logits scaling) and tied embeddings, from the REAL released config; the family-parametrised tests
(test_arch_families, test_assembly_families, …) prove the conversion exact on a tiny model built from it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from moe2dense_core.arch import get_spec
from tests.fixtures.tiny_moe import tiny_config

MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")
RELEASE = "real_moe_configs/ibm-granite__granite-3.1-1b-a400m-instruct/config.json"


def test_the_dense_config_of_the_release_keeps_the_multipliers_and_tied_embeddings(shared_data: Path) -> None:
    released = json.loads((shared_data / RELEASE).read_text())
    dense = get_spec("granitemoe").dense_config(released, 2 * 8 * 512)
    config = AutoConfig.for_model(**dense)
    assert type(config).__name__ == "GraniteConfig" and dense["architectures"] == ["GraniteForCausalLM"]
    for key in MULTIPLIERS:
        assert getattr(config, key) == released[key] != 1, key
    assert config.tie_word_embeddings is True and config.intermediate_size == 8192
    assert not {"num_local_experts", "num_experts_per_tok"} & set(dense)


def test_the_tiny_granite_student_is_a_tied_granite_model_with_the_teachers_multipliers() -> None:
    """The tiny fixture keeps the released (non-1) multipliers, so the exact-logits tests would see a lost one."""
    teacher = tiny_config("granitemoe")
    dense = get_spec("granitemoe").dense_config(teacher, 64)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**dense))
    assert type(model).__name__ == "GraniteForCausalLM"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert {key: getattr(model.config, key) for key in MULTIPLIERS} == {
        key: teacher[key] for key in MULTIPLIERS
    }
    assert all(teacher[key] != 1 for key in MULTIPLIERS)
