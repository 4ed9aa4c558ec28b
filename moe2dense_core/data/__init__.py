"""Text data shared by calibration, distillation and evaluation: sources (hub / local files) and packing."""

from moe2dense_core.data.packing import (
    TokenSplits,
    is_heldout,
    pack_tokens,
    prepare_token_splits,
    split_heldout,
    tokenize_documents,
    tokens_digest,
)
from moe2dense_core.data.sources import TextDataSpec, load_text_dataset

__all__ = [
    "TextDataSpec",
    "TokenSplits",
    "is_heldout",
    "load_text_dataset",
    "pack_tokens",
    "prepare_token_splits",
    "split_heldout",
    "tokenize_documents",
    "tokens_digest",
]
