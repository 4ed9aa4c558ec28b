"""Distillation of the dense student from its MoE teacher (METHOD.md step 6, paper Eq. 5-6).

from moe2dense_core.distill import DistillConfig, TextDataSpec, distill, load_text_dataset, prepare_token_splits
splits = prepare_token_splits(load_text_dataset(TextDataSpec(source="corpus.txt")), tok, seq_len=512)
result = distill(student, teacher, splits.train, DistillConfig(max_steps=1000))
"""

from moe2dense_core.data import (
    TextDataSpec,
    TokenSplits,
    load_text_dataset,
    pack_tokens,
    prepare_token_splits,
    split_heldout,
    tokenize_documents,
    tokens_digest,
)
from moe2dense_core.distill.checkpointing import full_training_state, latest_checkpoint
from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.distill.expanded_routing import expanded_teacher_routing
from moe2dense_core.distill.loop import DistillResult, distill
from moe2dense_core.distill.losses import (
    divergence_per_token,
    divergence_sum,
    forward_kl_per_token,
    jsd_per_token,
    kd_loss,
    next_token_ce_sum,
    reverse_kl_per_token,
    temperature_logprobs,
    topk_bucket_logprobs,
)
from moe2dense_core.distill.precision import bf16_supported, resolve_precision
from moe2dense_core.distill.topk_cache import TopKCache, TopKCacheManifest, write_topk_cache
from moe2dense_core.errors import DataError, DistillError

__all__ = [
    "DataError",
    "DistillConfig",
    "DistillError",
    "DistillResult",
    "TextDataSpec",
    "TokenSplits",
    "TopKCache",
    "TopKCacheManifest",
    "bf16_supported",
    "distill",
    "divergence_per_token",
    "divergence_sum",
    "expanded_teacher_routing",
    "forward_kl_per_token",
    "full_training_state",
    "jsd_per_token",
    "kd_loss",
    "latest_checkpoint",
    "load_text_dataset",
    "next_token_ce_sum",
    "pack_tokens",
    "prepare_token_splits",
    "resolve_precision",
    "reverse_kl_per_token",
    "split_heldout",
    "temperature_logprobs",
    "tokenize_documents",
    "tokens_digest",
    "topk_bucket_logprobs",
    "write_topk_cache",
]
