"""The teacher's tokenizer against its model: present where needed, and no id beyond the embedding.

A tokenizer with V_tok = len(tokenizer) tokens (base vocabulary + added tokens) emits ids 0 … V_tok − 1;
the model's embedding has config.vocab_size = V rows, so V_tok > V means some text maps to ids the
model (and the dense student, which gets a copy of the tokenizer) cannot embed. V_tok < V is normal
(embeddings padded to a multiple of 64 / 128).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moe2dense_core.errors import CheckpointError

VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.tiktoken")
"""A folder holds a tokenizer when one of these (the files carrying the vocabulary) is in it."""


def config_vocab_size(config: dict[str, Any], where: str) -> int:
    """config.json's vocab_size V; CheckpointError naming `where` unless it is a positive integer."""
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise CheckpointError(f"{where}: field 'vocab_size' must be a positive integer, got {vocab_size!r}")
    return vocab_size


def tokenizer_files(model_dir: Path) -> list[str]:
    """Names of the vocabulary files in `model_dir`, sorted ([] when it has no tokenizer)."""
    return sorted({p.name for pattern in VOCABULARY_FILES for p in model_dir.glob(pattern) if p.is_file()})


def require_tokenizer_files(model_dir: Path) -> None:
    """CheckpointError naming the folder and the looked-for files when it has no tokenizer."""
    if not tokenizer_files(model_dir):
        raise CheckpointError(
            f"{model_dir}: no tokenizer files (looked for {', '.join(VOCABULARY_FILES)}); the calibration "
            "text cannot be tokenized and the dense student would ship without a tokenizer"
        )


def check_tokenizer_vocabulary(model_dir: Path, vocab_size: int) -> None:
    """When `model_dir` holds a tokenizer: it loads (stock AutoTokenizer, no remote code) and
    len(tokenizer) ≤ vocab_size; CheckpointError naming the tokenizer file otherwise."""
    files = tokenizer_files(model_dir)
    if not files:
        return
    from moe2dense_core.pretrained import load_tokenizer

    try:
        size = len(load_tokenizer(model_dir))
    except Exception as exc:  # tokenizers / sentencepiece / tiktoken each raise their own types
        raise CheckpointError(f"{model_dir / files[0]}: the tokenizer does not load: {exc}") from None
    if size > vocab_size:
        raise CheckpointError(
            f"{model_dir / files[0]}: the tokenizer has {size} tokens but config.json vocab_size is "
            f"{vocab_size}: ids {vocab_size}…{size - 1} would index past the embedding"
        )
