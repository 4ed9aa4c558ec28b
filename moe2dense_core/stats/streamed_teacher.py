"""StreamedTeacher: run a teacher one decoder layer at a time from streamed weights.

Memory: the model exists as a skeleton on the `meta` device; only the rotary buffers and the NON-expert
weights of ONE decoder layer (attention, norms, router, shared experts / shared gate, or a dense MLP) hold
real data at any time. The embedding matrix, the final norm and the head are never loaded, and a layer's
routed experts are never all in memory either:
  embeddings      `layer_inputs` reads only the rows of the calibration tokens of the on-disk embedding
                  tensor (`reader.index_select`) and passes them to the model's forward as
                  `inputs_embeds`, so the model still applies whatever it does to its embeddings
                  (GraniteMoE's embedding_multiplier, once, as with input_ids), builds its masks and
                  rotary tables; the map is released after every batch.
  routed experts  their parameters stay on `meta`; while a layer is materialised its experts module gets an
                  instance-level `forward` (so the module's hooks still fire) computing the routed output
                  from weights read from disk a block of experts at a time (`ExpertBlocks`,
                  streamed_experts.py); the statistics read the same blocks (`expert_blocks`).
The other weights of a layer are read tensor by tensor from the checkpoint (CheckpointReader) and
converted to the in-memory layout by transformers' own loading machinery (`get_model_conversion_mapping` +
`convert_and_load_state_dict_in_model`), so they are exactly the parameters `from_pretrained` would give.
After use the layer goes back to `meta` and the checkpoint's memory maps are released.

Version coupling: this mirrors `PreTrainedModel.from_pretrained` of transformers 5.24 through its
loading internals (get_hf_quantizer, get_init_context, LoadStateDictConfig,
convert_and_load_state_dict_in_model, _get_dtype_plan, _init_weights), and the experts' call
experts(hidden [T, H], top-k indices [T, k], top-k weights [T, k]) of every supported family. The test
that layer-by-layer statistics equal in-memory ones, for every family, is what guards an upgrade.

Layer inputs: the model's own forward builds the position ids, rotary embeddings and the attention masks
(causal, sliding-window, per layer type). `layer_inputs` runs that forward with every decoder layer's
`forward` replaced by a recorder that returns its hidden states unchanged, so what each layer would
receive besides the hidden states is captured exactly, per layer and batch; the last recorder stops the
forward before the final norm.
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

from moe2dense_core.arch import get_spec
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.fp8 import SCALE_SUFFIX
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.pretrained import load_config
from moe2dense_core.stats.memory_bounds import DEFAULT_MAX_BLOCK_BYTES
from moe2dense_core.stats.streamed_experts import ExpertBlocks, routed_forward

LayerCall = tuple[tuple[Any, ...], dict[str, Any]]
"""Positional arguments after the hidden states, and keyword arguments, of one decoder-layer call."""


def trim_free_heap() -> None:
    """Give the C heap's free memory back to the OS (glibc `malloc_trim(0)`; a no-op off glibc).

    Why: memory freed by malloc stays in its arenas, so what a layer's temporaries (weight conversions,
    activations, the experts read for each block) leave free there would stay resident after the layer;
    trimmed after every layer, the process returns to its baseline instead (measured, collect.py docstring).
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    malloc_trim(0)


class _StopAfterLastLayer(Exception):
    """Raised by the last recorder: the final norm / head of a meta skeleton must not run."""


class StreamedTeacher:
    """A causal LM skeleton whose decoder layers are materialised one at a time (see module docstring).

    max_block_bytes: bound on the float32 bytes of one block of routed experts (streamed_experts.py)."""

    def __init__(
        self,
        reader: CheckpointReader,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    ) -> None:
        self.reader = reader
        self.spec = get_spec(reader.model_type)
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_block_bytes = max_block_bytes
        self.moe_layers = self.spec.dims(reader.config).moe_layers
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
        self.embedding_name = self._checked_embedding_name()

    # ---- weights ------------------------------------------------------------------------------------
    def expert_blocks(self, layer: int) -> ExpertBlocks:
        """The routed experts of MoE layer `layer`, read from disk in blocks, on the teacher's device."""
        return ExpertBlocks.of(self.reader, self.spec, layer, self.max_block_bytes, self.device)

    @contextmanager
    def materialised_layer(self, index: int) -> Iterator[nn.Module]:
        """Decoder layer `index` with its non-expert weights read from disk and, for a MoE layer, its routed
        experts streamed (module docstring); when the block exits it is back on `meta` and the checkpoint's
        memory maps are released."""
        layer = self.layers[index]
        prefix = f"model.layers.{index}."
        if index in self.moe_layers:
            experts = self.spec.experts_module(self.model, index)
            streamed_names = self._routed_expert_names(index)  # on disk
            streamed_params = {f"{self._module_name(experts)}.{n}" for n, _ in experts.named_parameters()}
        else:
            experts, streamed_names, streamed_params = None, set(), set()

        def to_read(name: str) -> bool:
            return name.startswith(prefix) and name not in streamed_names

        def must_fill(name: str) -> bool:
            return name.startswith(prefix) and name not in streamed_params

        try:
            self._load([n for n in self.reader.names() if to_read(n)], f"decoder layer {index}", must_fill)
            if experts is not None:
                experts.forward = routed_forward(self.expert_blocks(index), experts)
            yield layer
        finally:
            if experts is not None and "forward" in vars(experts):
                del experts.forward
            layer.to_empty(device="meta")
            self.reader.release_mapped()
            trim_free_heap()

    def _routed_expert_names(self, index: int) -> set[str]:
        """On-disk tensors of the routed experts of MoE layer `index` (with FP8 `…_scale_inv` partners)."""
        router = set(self.spec.router_tensor_names(index).values())
        names = [n for n in self.spec.routed_tensor_names(self.reader.config, index) if n not in router]
        return {*names, *(n + SCALE_SUFFIX for n in names if n + SCALE_SUFFIX in self.reader)}

    def _module_name(self, module: nn.Module) -> str:
        return next(name for name, m in self.model.named_modules() if m is module)

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

    def _checked_embedding_name(self) -> str:
        """On-disk name of the input embedding matrix (its in-memory name); CheckpointError naming it when
        the checkpoint lacks it or stores another shape than the model's [V, H]."""
        weight = self.model.get_input_embeddings().weight
        name = next(n for n, p in self.model.named_parameters() if p is weight)
        if name not in self.reader:
            raise CheckpointError(f"{self.reader.model_dir}: the embedding matrix {name!r} is not on disk")
        if self.reader.shape(name) != tuple(weight.shape):
            raise CheckpointError(
                f"{self.reader.model_dir}: tensor {name!r} has shape {list(self.reader.shape(name))}, "
                f"the model built from config.json needs {list(weight.shape)}"
            )
        return name

    # ---- layer inputs -------------------------------------------------------------------------------
    @torch.no_grad()
    def layer_inputs(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[LayerCall]]:
        """Embedded hidden states [B, T, H] and, per decoder layer, the other arguments it is called with.

        The embeddings are the rows input_ids [B, T] of the on-disk embedding matrix (only the distinct
        tokens' rows are read), in the teacher's dtype, given to the model as inputs_embeds (module
        docstring)."""
        tokens, positions = torch.unique(input_ids.cpu(), return_inverse=True)  # ascending: runs read as one
        rows = self.reader.index_select(self.embedding_name, tokens.tolist())  # [U, H], U distinct tokens
        self.reader.release_mapped()
        inputs_embeds = rows[positions].to(device=self.device, dtype=self.dtype)  # [B, T, H]
        del rows
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
            self.model.base_model(inputs_embeds=inputs_embeds, use_cache=False)
        except _StopAfterLastLayer:
            pass
        finally:
            for layer in self.layers:
                del layer.forward
        if len(calls) != len(self.layers):
            raise CheckpointError(f"the model called {len(calls)} of its {len(self.layers)} decoder layers")
        return embedded[0], calls
