"""StreamedTeacher: run a teacher one decoder layer at a time from streamed weights.

Memory: the model exists as a skeleton on the `meta` device; only the embeddings (+ final norm),
the rotary buffers and ONE decoder layer hold real weights at any time. Each layer's state dict is
read tensor by tensor from the checkpoint (CheckpointReader) and converted to the in-memory layout
by transformers' own loading machinery (`get_model_conversion_mapping` +
`convert_and_load_state_dict_in_model`, e.g. per-expert matrices → fused 3-D `gate_up_proj`), so
a layer holds exactly the parameters `from_pretrained` would give it — including pre-quantised
experts (GPT-OSS MXFP4), dequantised by the same transformers quantiser. After use the layer goes
back to `meta`.

Version coupling: this mirrors `PreTrainedModel.from_pretrained` of transformers 5.24 through its
loading internals (get_hf_quantizer, get_init_context, LoadStateDictConfig,
convert_and_load_state_dict_in_model, _get_dtype_plan, _init_weights). The test that layer-by-layer
statistics equal in-memory ones, for every family, is what guards a transformers upgrade.

Layer inputs: the model's own forward builds the embeddings, position ids, rotary embeddings and
the attention masks (causal, sliding-window, per layer type). `layer_inputs` runs that forward with
every decoder layer's `forward` replaced by a recorder that returns its hidden states unchanged, so
what each layer would receive besides the hidden states is captured exactly, per layer and batch.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import convert_and_load_state_dict_in_model
from transformers.modeling_utils import LoadStateDictConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.quantizers.auto import get_hf_quantizer
from transformers.utils.generic import ContextManagers

from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.pretrained import load_config

LayerCall = tuple[tuple[Any, ...], dict[str, Any]]
"""Positional arguments after the hidden states, and keyword arguments, of one decoder-layer call."""


M_MMAP_THRESHOLD = -3
"""glibc mallopt parameter: the size from which malloc serves a block with its own mmap."""
FIXED_MMAP_THRESHOLD = 128 * 1024
"""glibc's initial threshold, kept fixed."""


def pin_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at its initial 128 KiB (process-wide `mallopt`; a no-op off glibc).

    Why: glibc raises the threshold each time a large mmap-ed block is freed (up to 32 MiB), so after the
    first decoder layer the per-expert tensors of transformers' loader (6 MiB each for Qwen3-30B-A3B in
    float32) come from malloc arenas, which keep freed memory resident and fragment: each later layer's
    load then peaks higher and about one layer's weights stay resident after collection (measured,
    collect.py docstring). With the threshold fixed every such block is unmapped when freed.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, FIXED_MMAP_THRESHOLD)


class _StopAfterLastLayer(Exception):
    """Raised by the last recorder: the final norm / head of a meta skeleton must not run."""


class StreamedTeacher:
    """A causal LM skeleton whose decoder layers are materialised one at a time (see module docstring)."""

    def __init__(self, reader: CheckpointReader, *, dtype: torch.dtype, device: torch.device | str) -> None:
        pin_mmap_threshold()
        self.reader = reader
        self.dtype = dtype
        self.device = torch.device(device)
        config = load_config(reader.model_dir)
        # As from_pretrained: a quantiser for pre-quantised checkpoints (GPT-OSS MXFP4 → dequantised on load),
        # the model built under its init context (meta device, dtype), quantiser module replacement.
        self.hf_quantizer, config, _ = get_hf_quantizer(config, None, {"": self.device}, True, None)
        model_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        with ContextManagers(model_cls.get_init_context(dtype, self.hf_quantizer is not None, False, None)):
            self.model = model_cls(config)
            if self.hf_quantizer is not None:
                self.hf_quantizer.preprocess_model(
                    model=self.model,
                    dtype=dtype,
                    device_map={"": self.device},
                    checkpoint_files=None,
                    use_kernels=False,
                )
        self.model.eval()
        self.layers: nn.ModuleList = self.model.base_model.layers
        self._weight_mapping = get_model_conversion_mapping(self.model, None, self.hf_quantizer)
        self._materialise_non_persistent_buffers()
        outside = ("model.layers.", "lm_head.")  # embeddings, final norm; the head is not needed

        def embeddings(name: str) -> bool:
            return not name.startswith(outside)

        self._load([n for n in reader.names() if embeddings(n)], "embeddings", embeddings)
        reader.release_mapped()

    # ---- weights ------------------------------------------------------------------------------------
    @contextmanager
    def materialised_layer(self, index: int) -> Iterator[nn.Module]:
        """Decoder layer `index` with its weights read from disk; when the block exits it is back on `meta`
        and the checkpoint's memory maps are released."""
        layer = self.layers[index]
        prefix = f"model.layers.{index}."

        def in_layer(name: str) -> bool:
            return name.startswith(prefix)

        try:
            self._load([n for n in self.reader.names() if in_layer(n)], f"decoder layer {index}", in_layer)
            yield layer
        finally:
            layer.to_empty(device="meta")
            self.reader.release_mapped()

    def _load(self, names: list[str], what: str, must_fill: Callable[[str], bool]) -> None:
        """Read on-disk tensors `names` into the model (converted to the in-memory layout); afterwards every
        parameter whose in-memory name satisfies `must_fill` must hold real data."""
        state = {name: self.reader.get(name) for name in names}
        load_config = LoadStateDictConfig(
            device_map={"": self.device},
            dtype=self.dtype,
            dtype_plan=self.model._get_dtype_plan(self.dtype),
            weight_mapping=self._weight_mapping,
            hf_quantizer=self.hf_quantizer,
        )
        info, _ = convert_and_load_state_dict_in_model(self.model, state, load_config)
        where = f"{self.reader.model_dir} ({what})"
        if info.unexpected_keys or info.mismatched_keys or info.conversion_errors:
            raise CheckpointError(
                f"{where}: tensors do not fit the model built from config.json: unexpected "
                f"{sorted(info.unexpected_keys)}, shape mismatches {sorted(info.mismatched_keys)}, "
                f"conversion errors {info.conversion_errors}"
            )
        missing = [n for n, p in self.model.named_parameters() if must_fill(n) and p.is_meta]
        if missing:
            raise CheckpointError(f"{where}: no tensors on disk for parameters {missing}")

    def _materialise_non_persistent_buffers(self) -> None:
        """Rotary `inv_freq` and the like are computed, not stored: allocate and let transformers init them."""
        owners = {}
        for name, buffer in self.model.named_non_persistent_buffers():
            module_name, _, buffer_name = name.rpartition(".")
            owner = self.model.get_submodule(module_name)
            owner.register_buffer(buffer_name, torch.empty_like(buffer, device=self.device), persistent=False)
            owners[module_name] = owner
        for owner in owners.values():
            self.model._init_weights(owner)

    # ---- layer inputs -------------------------------------------------------------------------------
    @torch.no_grad()
    def layer_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[LayerCall]]:
        """Embedded hidden states [B, T, H] and, per decoder layer, the other arguments it is called with."""
        calls: list[LayerCall] = []
        embedded: list[torch.Tensor] = []
        last = len(self.layers) - 1

        def recorder(index: int):
            def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
                if index == 0:
                    embedded.append(hidden_states)
                calls.append((args, kwargs))
                if index == last:
                    raise _StopAfterLastLayer
                return hidden_states

            return forward

        for index, layer in enumerate(self.layers):
            layer.forward = recorder(index)
        try:
            self.model.base_model(input_ids=input_ids.to(self.device), use_cache=False)
        except _StopAfterLastLayer:
            pass
        finally:
            for layer in self.layers:
                del layer.forward
        if len(calls) != len(self.layers):
            raise CheckpointError(f"the model called {len(calls)} of its {len(self.layers)} decoder layers")
        return embedded[0], calls
