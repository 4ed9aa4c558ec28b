#!/usr/bin/env bash
# The GPU checks in one prepared run (the device tool; CI has no GPU): the `gpu`-marked tests, then the
# GPU benchmarks, each output also saved under $OUT (default ./gpu-results). Expects the project installed
# in .venv with a CUDA torch, and MOE2DENSE_SHARED_DATA pointing at a copy of ../shared/data (the
# real-size-layer test reads the released Qwen3-30B-A3B config.json from it).
#   bash scripts/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=true PYTHONPATH=.
PY=.venv/bin/python
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } | tee "$OUT/device.txt"
$PY -m pytest -m gpu tests -q -rs 2>&1 | tee "$OUT/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
$PY bench/distill_mfu.py --device cuda 2>&1 | tee "$OUT/distill_mfu.txt"
$PY bench/distill_throughput.py --device cuda --steps 20 2>&1 | tee "$OUT/distill_throughput_cuda.txt"
exit "$tests_rc"
