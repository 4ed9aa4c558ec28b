"""The paper's two uninformed baselines [paper]: a student of the same dense architecture

  random_init_student   every weight freshly initialised (transformers' own initialisation);
  random_ffn_student    attention, embeddings, norms and LM head copied from the teacher, FFN random
                        ("random FFN + teacher attention", the paper's Qwen3 baseline).

Both then get the same distillation as the converted student. Initialisation is seeded and leaves
the caller's global torch RNG state as it was.
"""

from __future__ import annotations

from pathlib import Path

import torch

from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.pretrained import load_config

FFN_MARKER = ".mlp."
"""Parameters whose name contains this are the FFN (re-initialised); all others come from the teacher."""

_PLAIN_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _as_config(config):
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    return load_config(Path(config))


def random_init_student(config, *, seed: int = 0):
    """A freshly initialised causal LM of the architecture `config` describes (fp32, CPU).

    config: a transformers PretrainedConfig or a checkpoint folder holding config.json (e.g. the
    converted student's, so the baseline has exactly its architecture).
    """
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(_as_config(config))


def random_ffn_student(teacher_dir: str | Path, student_config, *, seed: int = 0):
    """`random_init_student(student_config, seed=seed)` with every non-FFN parameter copied from the teacher.

    teacher_dir: the teacher checkpoint (an MoE or a dense model), read one tensor at a time.
    Every student parameter outside the FFN must exist in the teacher under the same name and
    shape; otherwise CheckpointError lists the ones that do not (checked before any copy).
    """
    student = random_init_student(student_config, seed=seed)
    copied = {name: p for name, p in student.named_parameters() if FFN_MARKER not in name}
    with CheckpointReader(teacher_dir) as reader:
        missing = [n for n in copied if n not in reader]
        wrong_shape = [
            f"{n} (student {tuple(p.shape)}, teacher {reader.shape(n)})"
            for n, p in copied.items()
            if n in reader and tuple(reader.shape(n)) != tuple(p.shape)
        ]
        quantised = [
            f"{n} ({reader.dtype(n)})"
            for n in copied
            if n in reader and reader.dtype(n) not in _PLAIN_FLOAT_DTYPES
        ]
        if missing or wrong_shape or quantised:
            raise CheckpointError(
                f"{teacher_dir}: cannot copy the teacher's non-FFN weights into the student; "
                f"missing: {missing[:8]}{' …' if len(missing) > 8 else ''}; "
                f"shape mismatch: {wrong_shape[:8]}{' …' if len(wrong_shape) > 8 else ''}; "
                f"not plain floating point (dequantise first): {quantised[:8]}"
            )
        with torch.no_grad():
            for name, tensor in reader.iter_tensors(list(copied)):
                copied[name].copy_(tensor)
    return student
