"""The CUDA paths (marker `gpu`; skipped without a CUDA device; run them with scripts/gpu_checks.sh).

- the top-k teacher pass on CUDA writes the same cache as on the CPU (fp32 both sides);
- a conversion with one decoder layer of the released Qwen3-30B-A3B size (hidden 2048, 128 experts of
  width 768, top-8), calibrated layer by layer on the GPU, plans exactly what the CPU plans;
- one bf16 FSDP distillation run over every GPU of the machine (torchrun; NCCL refuses two ranks on one
  GPU, so this one needs ≥ 2 devices) matches the same run in fp32 within bf16's precision.
The CUDA calibration of every tiny family against the CPU is tests/core/test_stats_spill.py's gpu test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from moe2dense_core import PlanConfig, convert
from moe2dense_core.distill import write_topk_cache
from moe2dense_core.shared_data import shared_data_dir
from tests.core.distill_tiny_models import random_rows, tiny_teacher
from tests.fixtures.tiny_moe import tiny_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)"),
]
REPO = Path(__file__).resolve().parents[2]


def test_the_topk_teacher_pass_on_cuda_writes_the_cpu_cache(tmp_path):
    teacher = tiny_teacher(seed=3)
    data = random_rows(8, 16, seed=4)
    write_topk_cache(teacher, data, tmp_path / "cpu", 16, precision="fp32")
    write_topk_cache(teacher.to("cuda"), data, tmp_path / "cuda", 16, precision="fp32")
    for shard in sorted((tmp_path / "cpu").glob("*.safetensors")):
        cpu, cuda = load_file(shard), load_file(tmp_path / "cuda" / shard.name)
        torch.testing.assert_close(cuda["topk_logprobs"], cpu["topk_logprobs"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(cuda["tail_logprob"], cpu["tail_logprob"], rtol=1e-4, atol=1e-4)
        agree = (cuda["topk_ids"] == cpu["topk_ids"]).float().mean()
        assert agree > 0.99, f"{shard.name}: top-k ids agree on {agree:.3f} of positions"


def real_size_layer(out: Path) -> Path:
    """One decoder layer of Qwen3-30B-A3B at its released sizes (random bf16 weights), saved to `out`."""
    released = shared_data_dir() / "real_moe_configs" / "Qwen__Qwen3-30B-A3B" / "config.json"
    if not released.is_file():
        pytest.skip(f"{released} is absent (set MOE2DENSE_SHARED_DATA)")
    fields = json.loads(released.read_text())
    fields.update(num_hidden_layers=1, vocab_size=len(tiny_tokenizer()), tie_word_embeddings=False)
    config = AutoConfig.for_model(
        **{k: v for k, v in fields.items() if k != "model_type"}, model_type="qwen3_moe"
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def test_a_real_size_layer_converts_on_the_device_as_on_the_cpu(tmp_path):
    teacher = real_size_layer(tmp_path / "teacher")
    batches = list(random_rows(4, 128, vocab_size=len(tiny_tokenizer()), seed=5).split(2))
    plans = {}
    for device in ("cpu", "cuda"):
        result = convert(
            teacher,
            batches,
            tmp_path / device,
            PlanConfig(),
            calibration_mode="layer_by_layer",
            calibration_dtype=torch.float32,
            calibration_device=device,
        )
        plans[device] = {layer.layer: layer.kept for layer in result.provenance.plan.layers}
    assert plans["cuda"] == plans["cpu"]


def test_one_bf16_fsdp_distillation_run_over_every_gpu(tmp_path):
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"FSDP over NCCL needs ≥ 2 GPUs; this machine has {gpus}")
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.pt"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={gpus}",
                str(REPO / "tests" / "gpu" / "fsdp_step_worker.py"),
                precision,
                str(out),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=True,
            timeout=600,
        )
        results[precision] = torch.load(out, weights_only=True)
    assert results["bf16"]["logits_dtype"] == "torch.bfloat16"
    assert (
        abs(results["bf16"]["final_loss"] - results["fp32"]["final_loss"])
        < 0.05 * results["fp32"]["final_loss"]
    )
