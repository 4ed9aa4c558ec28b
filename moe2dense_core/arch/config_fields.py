"""Typed reads of config.json fields that name the field when it is missing or wrong, and the layer
placement rules read from them."""

from __future__ import annotations

from typing import Any

from moe2dense_core.errors import CheckpointError


def require_int(config: dict[str, Any], key: str, *, minimum: int = 1) -> int:
    """config[key] as an int ≥ minimum, else CheckpointError naming the field."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(
            f"config.json field {key!r} of model_type {config.get('model_type')!r} must be an integer, got {value!r}"
        )
    if value < minimum:
        raise CheckpointError(f"config.json field {key!r} must be ≥ {minimum}, got {value}")
    return value


def require_int_any(config: dict[str, Any], keys: tuple[str, ...], *, minimum: int = 1) -> int:
    """The first of `keys` present in config (aliases of one field, e.g. the released `num_experts` and the
    `num_local_experts` that transformers 5 writes), as an int ≥ minimum; the error names every alias."""
    for key in keys:
        if config.get(key) is not None:
            return require_int(config, key, minimum=minimum)
    raise CheckpointError(
        f"config.json of model_type {config.get('model_type')!r} has none of the fields {', '.join(map(repr, keys))}"
    )


def optional_int(config: dict[str, Any], key: str, default: int, *, minimum: int = 0) -> int:
    """config[key] as an int ≥ minimum when present (and not null), else `default`."""
    if config.get(key) is None:
        return default
    return require_int(config, key, minimum=minimum)


def without_keys(config: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A copy of config without `keys` (the fields a dense target does not have)."""
    return {k: v for k, v in config.items() if k not in keys}


def sparse_step_moe_layers(config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """Qwen2/3-MoE placement: layer i is MoE iff i ∉ mlp_only_layers and (i + 1) % decoder_sparse_step == 0."""
    step = optional_int(config, "decoder_sparse_step", 1, minimum=1)
    mlp_only = config.get("mlp_only_layers") or []
    if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
        raise CheckpointError(
            f"config.json field 'mlp_only_layers' must be a list of layer indices, got {mlp_only!r}"
        )
    return tuple(i for i in range(num_layers) if i not in mlp_only and (i + 1) % step == 0)
