"""The tensors validation requires of a teacher, against the REAL released indexes in
../shared/data/real_moe_configs (Mixtral-8x7B: per-expert bf16; gpt-oss-20b: MXFP4 experts): built from the
real config.json alone, the required names are exactly the released tensor names — nothing a real
release lacks is demanded, nothing it stores is unknown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moe2dense_core.arch import get_spec
from moe2dense_core.checkpoint.expected import teacher_tensor_shapes

RELEASES = {"mixtral": "mistralai__Mixtral-8x7B-v0.1", "gpt_oss": "openai__gpt-oss-20b"}


@pytest.mark.parametrize("family", sorted(RELEASES))
def test_required_tensors_are_the_released_tensors(shared_data: Path, family: str) -> None:
    folder = shared_data / "real_moe_configs" / RELEASES[family]
    config = json.loads((folder / "config.json").read_text())
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    spec = get_spec(family)
    expected = teacher_tensor_shapes(config, spec, spec.dims(config), str(folder / "config.json"))
    assert set(expected.required) == set(weight_map)
    assert not expected.optional  # tie_word_embeddings is false in both releases
