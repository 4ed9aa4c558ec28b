"""The public API of issue 3 §6: collect_stats → build_plan → assemble → stock transformers loads and generates."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import moe2dense_core
from moe2dense_core.assembly import PROVENANCE_FILE
from tests.fixtures.tiny_moe import FAMILIES, build_tiny_moe


def calibration_batches(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (2, 16), generator=g) for _ in range(2)]


@pytest.mark.parametrize("family", FAMILIES)
def test_readme_example_converts_every_family_to_a_model_that_loads_and_generates(family, tmp_path):
    from moe2dense_core import PlanConfig, assemble, build_plan, collect_stats

    model_dir = build_tiny_moe(family, tmp_path / "teacher")
    out_dir = tmp_path / "dense"

    stats = collect_stats(model_dir, calibration_batches())
    plan = build_plan(
        stats, PlanConfig(scoring="do_acp", num_selected=2, grouping="prune", scaling="uniform")
    )
    result = assemble(model_dir, plan, out_dir)

    model, loading = AutoModelForCausalLM.from_pretrained(out_dir, output_loading_info=True)
    assert {k: list(v) for k, v in loading.items() if k != "error_msgs" and v} == {}, (
        "weights not loaded exactly"
    )
    assert sum(p.numel() for p in model.parameters()) == result.num_parameters
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    prompt = tokenizer("Once upon a time", return_tensors="pt")
    generated = model.generate(
        **prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 5)
    assert torch.isfinite(model(generated).logits).all()
    provenance = json.loads((out_dir / PROVENANCE_FILE).read_text())
    assert provenance["plan_digest"] == plan.digest() == result.plan_digest
    assert provenance["plan"]["stats_digest"] == stats.digest()


def test_convert_runs_the_whole_pipeline_with_merging(tmp_path):
    """K = 4 > k = 2 experts merged by weight clustering, which needs the expert weights convert() streams."""
    model_dir = build_tiny_moe("qwen3_moe", tmp_path / "teacher")
    config = moe2dense_core.PlanConfig(
        scoring="acp", num_selected=4, grouping="weight_cluster", scaling="proportional"
    )
    result = moe2dense_core.convert(model_dir, calibration_batches(), tmp_path / "dense", config)

    plan = result.provenance.plan
    assert plan.config == config
    assert all(len(lp.kept) == 4 and len(lp.groups) == 2 for lp in plan.layers)
    model = AutoModelForCausalLM.from_pretrained(result.out_dir)
    assert model.config.intermediate_size == 2 * plan.expert_width == plan.target_width
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_every_public_name_resolves():
    for name in moe2dense_core.__all__:
        assert getattr(moe2dense_core, name) is not None, name
    assert set(moe2dense_core.__all__) <= set(dir(moe2dense_core))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = moe2dense_core.no_such_name


def test_importing_the_package_is_cheap():
    """Names load lazily: `import moe2dense_core` pulls in neither torch nor transformers."""
    probe = (
        "import sys, moe2dense_core; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_public_names_stay_what_they_are_after_every_submodule_is_imported_first():
    """Importing a submodule binds it on the package under its own name: a submodule named like a
    public function (once `moe2dense_core/convert.py`) would replace `from moe2dense_core import convert`."""
    probe = (
        "import importlib, pkgutil, types, moe2dense_core\n"
        "for module in pkgutil.iter_modules(moe2dense_core.__path__, 'moe2dense_core.'):\n"
        "    importlib.import_module(module.name)\n"
        "from moe2dense_core import convert\n"
        "assert isinstance(convert, types.FunctionType), convert\n"
        "print(sorted(n for n in moe2dense_core.__all__ if isinstance(getattr(moe2dense_core, n), types.ModuleType)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
