"""Documents → held-out split → token ids → fixed-length rows, for calibration, distillation and evaluation.

Pipeline: documents (str) → `split_heldout(docs, fraction)` → train / held-out documents →
`tokenize_documents` → `pack_tokens(streams, seq_len)` → LongTensor [N, seq_len].
`prepare_token_splits` runs all of it.

[defined here] The held-out split is decided per document, before packing, by a hash of the document's
text: a document (and every copy of it) lands on one side only, no packed row mixes the two sides, and
the split does not change when documents are added, removed or reordered.
[defined here] Packing concatenates documents, each followed by the tokenizer's EOS id (when it has one),
and cuts the stream into rows of `seq_len` tokens; the last partial row is dropped, so no row needs padding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from moe2dense_core.errors import DataError


def is_heldout(document: str, heldout_fraction: float, seed: int = 0) -> bool:
    """True when the document belongs to the held-out side: u = sha256(seed, text) / 2^64 < fraction."""
    digest = hashlib.sha256(f"{seed}\x00{document}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def split_heldout(
    documents: Sequence[str], heldout_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, held-out) documents, each in input order; see the module docstring for the rule."""
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    train: list[str] = []
    heldout: list[str] = []
    for doc in documents:
        (heldout if is_heldout(doc, heldout_fraction, seed) else train).append(doc)
    return train, heldout


def tokenize_documents(documents: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids per document with the tokenizer's special tokens (e.g. a BOS) and EOS appended.

    `tokenizer` is a Hugging Face tokenizer (callable on a list of strings, optional `eos_token_id`).
    """
    encoded = tokenizer(list(documents), add_special_tokens=True)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return [list(ids) for ids in encoded]
    return [list(ids) if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]


def pack_tokens(token_streams: Iterable[Sequence[int]], seq_len: int) -> torch.Tensor:
    """Concatenate the streams and cut rows of `seq_len`: → LongTensor [N, seq_len] (remainder dropped).

    Raises DataError when there are fewer than `seq_len` tokens in all.
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be ≥ 2, got {seq_len}")
    flat = [tok for stream in token_streams for tok in stream]
    rows = len(flat) // seq_len
    if rows == 0:
        raise DataError(f"only {len(flat)} tokens: not enough for one row of seq_len={seq_len}")
    return torch.tensor(flat[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


@dataclass(frozen=True)
class TokenSplits:
    """Packed training rows [N_train, seq_len] and held-out rows [N_heldout, seq_len] (int64)."""

    train: torch.Tensor
    heldout: torch.Tensor


def prepare_token_splits(
    documents: Sequence[str], tokenizer: Any, seq_len: int, *, heldout_fraction: float = 0.05, seed: int = 0
) -> TokenSplits:
    """Split documents into train / held-out (module docstring), tokenize and pack each side."""
    train_docs, heldout_docs = split_heldout(documents, heldout_fraction, seed)
    if not heldout_docs:
        raise DataError(
            f"heldout_fraction={heldout_fraction} selected none of {len(documents)} documents; raise it"
        )
    return TokenSplits(
        train=pack_tokens(tokenize_documents(train_docs, tokenizer), seq_len),
        heldout=pack_tokens(tokenize_documents(heldout_docs, tokenizer), seq_len),
    )


def tokens_digest(sequences: torch.Tensor) -> str:
    """sha256 of the int64 row-major bytes of a [N, L] token tensor: identifies the data of a cache."""
    return hashlib.sha256(
        sequences.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    ).hexdigest()
