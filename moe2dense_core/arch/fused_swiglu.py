"""FusedSwigluMoESpec: shared machinery of the families whose experts are bias-free SwiGLU MLPs.

Covers Qwen3-MoE, Qwen2-MoE, OLMoE, Mixtral, DeepSeek-V2/V3 (GPT-OSS has its own spec).

On disk (released per-expert format, which transformers 5.24 `save_pretrained` also writes):
    model.layers.{i}.{block}.gate.weight                       router [E, H]
    model.layers.{i}.{block}.experts.{e}.{gate}.weight         [I, H]   (gate / up / down projection names
    model.layers.{i}.{block}.experts.{e}.{up}.weight           [I, H]    per family: gate_proj/up_proj/down_proj,
    model.layers.{i}.{block}.experts.{e}.{down}.weight         [H, I]    Mixtral w1/w3/w2; block 'mlp' or
                                                                         Mixtral's 'block_sparse_moe')
    model.layers.{i}.mlp.{gate_proj,up_proj,down_proj}.weight  a teacher layer that is already dense
Block-FP8 checkpoints (DeepSeek-V3/R1, *-FP8 releases: `….weight` F8_E4M3 + `….weight_scale_inv`) are
dequantised on read.
In memory (transformers 5.24): `model.model.layers[i].mlp.gate` (router, forward → (logits [T, E],
top-k weights [T, k], top-k indices [T, k])) and `.mlp.experts` with fused parameters
    gate_up_proj [E, 2I, H]  (rows 0..I-1 gate, I..2I-1 up)     down_proj [E, H, I].
Expert e computes f_e(x) = down_e · (silu(gate_e x) ⊙ up_e x).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from moe2dense_core.arch.config_fields import optional_int, require_int, require_int_any
from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import MoEArchSpec, MoEDims
from moe2dense_core.errors import CheckpointError, Moe2DenseError
from moe2dense_core.io.fp8 import SCALE_SUFFIX, read_dequantized

_LAYER_PREFIX = re.compile(r"^model\.layers\.(\d+)\.")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a *ForCausalLM (or its base *Model)."""
    return getattr(model, "model", model).layers


class FusedSwigluMoESpec(MoEArchSpec):
    """Base for bias-free SwiGLU families (see module docstring). Subclasses set the class variables
    and implement `moe_layer_indices` (when not every layer is MoE) and `dense_config`."""

    disk_block: ClassVar[str] = "mlp"
    """Attribute name of the MoE block inside a decoder layer, as stored on disk."""
    disk_projections: ClassVar[tuple[str, str, str]] = ("gate_proj", "up_proj", "down_proj")
    """On-disk names of one expert's (gate, up, down) projections."""
    num_experts_keys: ClassVar[tuple[str, ...]] = ("num_experts", "num_local_experts")
    """Config aliases of the routed-expert count (released name first, then what transformers 5 writes)."""
    top_k_key: ClassVar[str] = "num_experts_per_tok"
    expert_width_key: ClassVar[str] = "moe_intermediate_size"
    shared_block: ClassVar[str | None] = None
    """On-disk attribute of the always-on shared expert MLP inside the MoE block, if the family has one."""

    # ---- config ---------------------------------------------------------------------------------
    def moe_layer_indices(self, config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
        """Decoder layers with a routed MoE block; default: all."""
        return tuple(range(num_layers))

    def shared_width(self, config: dict[str, Any]) -> int:
        """Total width of the always-on shared experts of one MoE layer (0: none)."""
        return 0

    def dims(self, config: dict[str, Any]) -> MoEDims:
        num_experts = require_int_any(config, self.num_experts_keys)
        top_k = require_int(config, self.top_k_key)
        if top_k > num_experts:
            raise CheckpointError(
                f"config.json field {self.top_k_key!r} = {top_k} exceeds the number of experts {num_experts} "
                f"(field {' / '.join(self.num_experts_keys)})"
            )
        num_layers = require_int(config, "num_hidden_layers")
        moe_layers = self.moe_layer_indices(config, num_layers)
        dense_width = require_int(config, "intermediate_size") if len(moe_layers) < num_layers else 0
        return MoEDims(
            num_experts=num_experts,
            top_k=top_k,
            expert_width=require_int(config, self.expert_width_key),
            hidden=require_int(config, "hidden_size"),
            num_layers=num_layers,
            moe_layers=moe_layers,
            shared_width=self.shared_width(config),
            dense_width=dense_width,
        )

    # ---- a loaded transformers model ----------------------------------------------------------------
    def moe_block(self, model: nn.Module, layer: int) -> nn.Module:
        """The in-memory MoE block (`.mlp`) of decoder layer `layer`."""
        block = decoder_layers(model)[layer].mlp
        if not hasattr(block, "experts"):
            raise Moe2DenseError(
                f"{self.model_type}: decoder layer {layer} has no routed experts (a dense layer)"
            )
        return block

    def router_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.moe_block(model, layer).gate

    def experts_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.moe_block(model, layer).experts

    def module_expert_weights(self, experts: nn.Module) -> ExpertWeights:
        """Views (no copy, module dtype) of fused gate_up_proj [E, 2I, H] and down_proj [E, H, I]."""
        gate_up = experts.gate_up_proj.detach()
        width = gate_up.shape[1] // 2
        return ExpertWeights(gate=gate_up[:, :width], up=gate_up[:, width:], down=experts.down_proj.detach())

    # ---- on-disk names ------------------------------------------------------------------------------
    def block_prefix(self, layer: int) -> str:
        """On-disk name prefix of the MoE block of decoder layer `layer` (e.g. `model.layers.3.mlp.`)."""
        return f"model.layers.{layer}.{self.disk_block}."

    def router_tensor_names(self, layer: int) -> dict[str, str]:
        """Router tensors keyed as `read_router` returns them → on-disk name."""
        return {"weight": f"{self.block_prefix(layer)}gate.weight"}

    def expert_tensor_names(self, layer: int, expert: int) -> tuple[str, str, str]:
        """On-disk (gate, up, down) weight names of one routed expert."""
        base = f"{self.block_prefix(layer)}experts.{expert}."
        return tuple(f"{base}{proj}.weight" for proj in self.disk_projections)  # type: ignore[return-value]

    def routed_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        names = list(self.router_tensor_names(layer).values())
        for expert in range(self.dims(config).num_experts):
            names.extend(self.expert_tensor_names(layer, expert))
        return names

    def shared_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        if self.shared_block is None:
            return []
        return list(self._mlp_names(f"{self.block_prefix(layer)}{self.shared_block}."))

    def dense_mlp_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        if layer in self.dims(config).moe_layers:
            return []
        return list(self._mlp_names(f"model.layers.{layer}.mlp."))

    def expected_shapes(self, config: dict[str, Any], layer: int) -> dict[str, tuple[int, ...]]:
        d = self.dims(config)
        h = d.hidden
        if layer not in d.moe_layers:
            names = self._mlp_names(f"model.layers.{layer}.mlp.")
            return dict(zip(names, [(d.dense_width, h), (d.dense_width, h), (h, d.dense_width)], strict=True))
        shapes = {name: self._router_shape(key, d) for key, name in self.router_tensor_names(layer).items()}
        i = d.expert_width
        for expert in range(d.num_experts):
            gate, up, down = self.expert_tensor_names(layer, expert)
            shapes.update({gate: (i, h), up: (i, h), down: (h, i)})
        if self.shared_block is not None:
            s = d.shared_width
            gate, up, down = self._mlp_names(f"{self.block_prefix(layer)}{self.shared_block}.")
            shapes.update({gate: (s, h), up: (s, h), down: (h, s)})
        return shapes

    def _router_shape(self, key: str, d: MoEDims) -> tuple[int, ...]:
        return (d.num_experts, d.hidden) if key == "weight" else (d.num_experts,)

    @staticmethod
    def _mlp_names(prefix: str) -> tuple[str, str, str]:
        return tuple(f"{prefix}{p}.weight" for p in ("gate_proj", "up_proj", "down_proj"))  # type: ignore[return-value]

    # ---- on-disk reads ------------------------------------------------------------------------------
    def read_router(self, reader: Any, layer: int) -> dict[str, torch.Tensor]:
        return {
            key: read_dequantized(reader, name).float()
            for key, name in self.router_tensor_names(layer).items()
        }

    def read_experts(self, reader: Any, layer: int, experts: list[int]) -> ExpertWeights:
        """Stack the per-expert matrices of `experts` (in that order) into canonical float32."""
        gates, ups, downs = [], [], []
        for expert in experts:
            gate, up, down = self.expert_tensor_names(layer, expert)
            gates.append(read_dequantized(reader, gate).float())
            ups.append(read_dequantized(reader, up).float())
            downs.append(read_dequantized(reader, down).float())
        return ExpertWeights(gate=torch.stack(gates), up=torch.stack(ups), down=torch.stack(downs))

    def read_shared(self, reader: Any, layer: int) -> ExpertWeights | None:
        if self.shared_block is None:
            return None
        return _read_mlp(reader, f"{self.block_prefix(layer)}{self.shared_block}.")

    def read_dense_mlp(self, reader: Any, layer: int) -> ExpertWeights:
        return _read_mlp(reader, f"model.layers.{layer}.mlp.")

    # ---- dense target -------------------------------------------------------------------------------
    def dense_ffn_tensors(self, layer: int, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """`model.layers.{layer}.mlp.{gate,up,down}_proj.weight` of a bias-free dense SwiGLU MLP."""
        if ffn.num_experts != 1 or any(b is not None for b in (ffn.gate_bias, ffn.up_bias, ffn.down_bias)):
            raise ValueError(f"{self.model_type}: dense FFN of layer {layer} must be one bias-free expert")
        gate, up, down = self._mlp_names(f"model.layers.{layer}.mlp.")
        return {gate: ffn.gate[0], up: ffn.up[0], down: ffn.down[0]}

    def rename_for_dense(self, name: str) -> str | None:
        """Every tensor of a layer's FFN block (router, routed, shared, teacher dense MLP) is dropped —
        assembly writes the dense FFN through `dense_ffn_tensors` —, and so are FP8 `…_scale_inv` tensors
        (`read_tensor` dequantises their weights); all other tensors keep their name."""
        if name.endswith(SCALE_SUFFIX):
            return None
        match = _LAYER_PREFIX.match(name)
        if match and (
            name.startswith(f"{match.group(0)}{self.disk_block}.") or name.startswith(f"{match.group(0)}mlp.")
        ):
            return None
        return name


def _read_mlp(reader: Any, prefix: str) -> ExpertWeights:
    gate, up, down = (
        read_dequantized(reader, name).float() for name in FusedSwigluMoESpec._mlp_names(prefix)
    )
    return ExpertWeights(gate=gate[None], up=up[None], down=down[None])


def sparse_step_moe_layers(config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """Qwen2/3-MoE placement: layer i is MoE iff i ∉ mlp_only_layers and (i + 1) % decoder_sparse_step == 0."""
    step = optional_int(config, "decoder_sparse_step", 1, minimum=1)
    mlp_only = config.get("mlp_only_layers") or []
    if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
        raise CheckpointError(
            f"config.json field 'mlp_only_layers' must be a list of layer indices, got {mlp_only!r}"
        )
    return tuple(i for i in range(num_layers) if i not in mlp_only and (i + 1) % step == 0)
