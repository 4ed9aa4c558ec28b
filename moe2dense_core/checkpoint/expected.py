"""The tensors a checkpoint of a given config.json must hold, from the model class built on the meta device.

`model_tensor_shapes(config)` builds `AutoModelForCausalLM.from_config(config)` under torch.device("meta")
(no memory, no weights: only names and shapes), takes its state dict and maps it to the on-disk layout
with transformers' own `revert_weight_conversion` — exactly what `save_pretrained` writes. (transformers
5.24 fuses routed experts in memory, `…mlp.experts.gate_up_proj` [E, 2I, H], while checkpoints store them
per expert, `…experts.{e}.gate_proj.weight` [I, H]; the reverse conversion splits them.) In that order:
    required  every parameter and persistent buffer: on-disk name → shape
    optional  tied copies (`lm_head.weight` when tie_word_embeddings): a checkpoint may or may not store them
Non-persistent buffers (rotary inv_freq) are not in the state dict and never expected.

A teacher may be stored quantised (GPT-OSS experts as MXFP4 blocks/scales, DeepSeek-V3 block-FP8 with
`…_scale_inv` partners), which no unquantised save writes. `teacher_tensor_shapes` therefore keeps the
converted names outside each decoder layer's FFN block (attention, norms, embeddings, head: the names
`spec.rename_for_dense` keeps) and takes the FFN block's on-disk names and shapes from the family spec
(`spec.expected_shapes`: router, routed, shared and dense-MLP tensors, quantised layouts included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moe2dense_core.arch.spec import LAYER_PREFIX, MoEArchSpec, MoEDims
from moe2dense_core.errors import CheckpointError

MOE_FIELDS = "the MoE fields"


@dataclass
class ExpectedTensors:
    """Names → shapes a checkpoint must hold (`required`) or may hold (`optional`); `from_spec` are the
    names whose shapes the family spec derives from the MoE fields (the rest come from `model_class`)."""

    model_class: str
    required: dict[str, tuple[int, ...]] = field(default_factory=dict)
    optional: dict[str, tuple[int, ...]] = field(default_factory=dict)
    from_spec: set[str] = field(default_factory=set)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """The expected shape of `name`, or None when the model has no such tensor."""
        return self.required.get(name, self.optional.get(name))

    def implied_by(self, name: str) -> str:
        """What in config.json fixes the shape of `name` (for error messages)."""
        return MOE_FIELDS if name in self.from_spec else f"{self.model_class} built from it"


def model_tensor_shapes(config: dict[str, Any], where: str) -> ExpectedTensors:
    """State-dict names and shapes of the causal LM that config.json describes (see module docstring).

    where: the config file, named in the CheckpointError raised when transformers cannot build the model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    try:
        hf_config = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
        on_disk = revert_weight_conversion(model, model.state_dict())
    except Exception as exc:  # transformers raises many types for an inconsistent config
        raise CheckpointError(
            f"{where}: transformers cannot build a {config.get('model_type')!r} model from it: {exc}"
        ) from None
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    expected = ExpectedTensors(model_class=type(model).__name__)
    for name, tensor in on_disk.items():
        target = expected.optional if name in tied else expected.required
        target[name] = tuple(tensor.shape)
    return expected


def teacher_tensor_shapes(
    config: dict[str, Any], spec: MoEArchSpec, dims: MoEDims, where: str
) -> ExpectedTensors:
    """On-disk names and shapes of a teacher checkpoint: outside the decoder layers first, then layer by
    layer its tensors outside the FFN block (the converted meta model: every name `spec.rename_for_dense`
    keeps) and its FFN block's tensors (`spec.expected_shapes`), in that order."""
    meta = model_tensor_shapes(config, where)
    by_layer: dict[int, dict[str, tuple[int, ...]]] = {layer: {} for layer in range(dims.num_layers)}
    expected = ExpectedTensors(model_class=meta.model_class, optional=meta.optional)
    for name, shape in meta.required.items():
        match = LAYER_PREFIX.match(name)
        if match is None:
            expected.required[name] = shape
        elif spec.rename_for_dense(name) is not None:
            by_layer[int(match.group(1))][name] = shape
    for layer, non_ffn in by_layer.items():
        expected.required.update(non_ffn)
        ffn = spec.expected_shapes(config, layer)
        expected.required.update(ffn)
        expected.from_spec.update(ffn)
    return expected
