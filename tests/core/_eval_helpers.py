"""Shared helpers for the evaluation and baseline tests: tiny LMs with known outputs, cached tiny1m."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


class FixedLogitsLM(torch.nn.Module):
    """Emits the same logits row [V] at every position: p(v | anything) = softmax(row)."""

    def __init__(self, row: torch.Tensor) -> None:
        super().__init__()
        self.row = torch.nn.Parameter(row.clone().float(), requires_grad=False)
        self.config = SimpleNamespace(vocab_size=row.numel())

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.row.expand(batch, length, -1))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (restored after).

    The test machine's 2 cores are shared by several jobs; with 2 intra-op threads a small matmul
    measured ~10× slower than with 1 under that load.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny1m_dir(shared_data: Path) -> Path:
    """models/tiny1m in the shared data folder; skips the test when it is absent."""
    path = shared_data / "models" / "tiny1m"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path} is absent from the shared data folder")
    return path


@cache
def load_tiny1m(path: Path):
    """(model, tokenizer): the real tiny dense Llama (0.94 M parameters, vocab 512), float32 on CPU.

    Cached per process: tests must not modify the model's weights (training mode is fine).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def tinystories_ids(shared_data: Path, tokenizer) -> torch.Tensor:
    """text/tinystories_sample.txt tokenized by tiny1m's tokenizer, BOS first: 1,883 ids."""
    text = (shared_data / "text" / "tinystories_sample.txt").read_text()
    return torch.tensor([tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False).input_ids)
