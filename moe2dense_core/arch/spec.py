"""MoEArchSpec: everything the core knows about one MoE family, declared as data.

One subclass per family in this folder (qwen3_moe.py, mixtral.py, granitemoe.py, …), registered under its
`config.model_type`. A family declares its config keys, where its MoE parts live in memory and on disk
(`ModuleNames`), how its routed experts are stored (`layouts.py`: per expert or fused, axis order,
gate/up arrangement, biases, MXFP4), its activation and its dense target; this class implements every
read, name, shape and write from those declarations. Methods are overridden only for genuine rules:
layer placement, shared-expert width, a non-softmax router, extra dense-config fields.

Conventions
- `config` is the checkpoint's config.json as a plain dict (never a transformers object), so the
  spec works from files alone, before any weights are read.
- `reader` is a `moe2dense_core.io.CheckpointReader`: `reader.get(name) -> Tensor` reads one tensor
  from the safetensors shards through the index (dequantising nothing: the spec does that).
- Expert tensors are returned in canonical layout (`ExpertWeights`, float32, dequantised).
- On disk, decoder layer i's tensors are named `model.layers.{i}.…` (the released checkpoints and what
  transformers 5.24 `save_pretrained` writes); a teacher layer that is already dense, and the "mlp" dense
  target, hold `model.layers.{i}.mlp.{gate,up,down}_proj.weight`.
- Routing: for token t with router logits z(t) [E], `router_probs` gives p(t) [E], the probability
  over ALL experts before top-k that METHOD.md's `pp`/`cp` scorers use (softmax(z) for every family
  except DeepSeek-V3, whose p is sigmoid(z) without the selection bias). The applied weights w_e(t)
  and the selected set T(t) are read from the router module's own forward output
  `(logits [T, E], top-k weights [T, k], top-k indices [T, k])`, so they are exactly the teacher's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from moe2dense_core.arch.config_fields import require_int, require_int_any, without_keys
from moe2dense_core.arch.expert_weights import Activation, ExpertWeights
from moe2dense_core.arch.layouts import ExpertLayout, FusedLayout, MLPLayout, PerExpertLayout
from moe2dense_core.errors import CheckpointError, Moe2DenseError, UnsupportedArchitectureError
from moe2dense_core.io.fp8 import SCALE_SUFFIX, read_dequantized
from moe2dense_core.registry import Registry

MLP = MLPLayout()
"""gate_proj / up_proj / down_proj: teacher dense layers, shared experts and the "mlp" dense target."""
DENSE_FFNS = ("mlp", "one_expert")
LAYER_PREFIX = re.compile(r"^model\.layers\.(\d+)\.")
"""Every on-disk tensor of decoder layer i starts with `model.layers.{i}.`."""


@dataclass(frozen=True)
class MoEDims:
    """Sizes read from a config.

    num_experts E, top_k k, expert_width I (per routed expert), hidden H, num_layers L,
    moe_layers: indices of decoder layers with a routed MoE block (others are dense MLPs),
    shared_width: total width of always-on shared experts in a MoE layer (0 if none),
    dense_width: intermediate width of the teacher's dense layers (0 if every layer is MoE).
    """

    num_experts: int
    top_k: int
    expert_width: int
    hidden: int
    num_layers: int
    moe_layers: tuple[int, ...]
    shared_width: int = 0
    dense_width: int = 0


@dataclass(frozen=True)
class ModuleNames:
    """Where a decoder layer keeps its MoE parts: `block` relative to the decoder layer, the others relative
    to the block (dotted paths allowed; experts "" = the block itself). In memory these are attribute paths
    of the transformers 5.24 modules; on disk, segments of the tensor names. The router's parameters are
    `{router}.{key}` for each key of `MoEArchSpec.router_tensors`."""

    block: str = "mlp"
    router: str = "gate"
    experts: str = "experts"
    shared: str | None = None
    """The always-on shared-expert MLP, if the family has one."""
    shared_gate: str | None = None
    """Qwen2-MoE's sigmoid gate of the shared expert (weight [1, H]), if the family has one."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a *ForCausalLM (or its base *Model)."""
    return getattr(model, "model", model).layers


def _submodule(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path) if path else module


class MoEArchSpec:
    """Architecture knowledge for one family (see module docstring). Class variables are the declarations;
    the defaults are the common case (Qwen3-MoE: `mlp.gate`, per-expert gate_proj/up_proj/down_proj on disk,
    fused gate_up_proj [E, 2I, H] in memory, SwiGLU, softmax routing)."""

    # ---- declarations -------------------------------------------------------------------------------
    model_type: ClassVar[str]
    """`config.model_type` of the teacher."""
    dense_model_type: ClassVar[str]
    """`model_type` of the dense target (e.g. qwen3 for qwen3_moe; the same type for GPT-OSS)."""
    activation: ClassVar[Activation] = Activation("swiglu")
    """The experts' gated activation; `dims` checks config.json selects it (`Activation.check_config`)."""
    num_experts_keys: ClassVar[tuple[str, ...]] = ("num_experts", "num_local_experts")
    """Config aliases of the routed-expert count (released name first, then what transformers 5 writes)."""
    top_k_keys: ClassVar[tuple[str, ...]] = ("num_experts_per_tok",)
    expert_width_key: ClassVar[str] = "moe_intermediate_size"
    modules: ClassVar[ModuleNames] = ModuleNames()
    """In-memory module names (transformers 5.24)."""
    module_experts: ClassVar[FusedLayout] = FusedLayout("gate_up_proj", "down_proj")
    """In-memory parameters of the experts module (attribute names)."""
    disk: ClassVar[ModuleNames] = ModuleNames()
    """On-disk name segments (the released checkpoints)."""
    disk_experts: ClassVar[ExpertLayout] = PerExpertLayout()
    """On-disk routed experts, names relative to `model.layers.{i}.{disk.block}.{disk.experts}.`."""
    router_tensors: ClassVar[tuple[str, ...]] = ("weight",)
    """Router parameters: 'weight' [E, H], any other (bias, e_score_correction_bias) [E]."""
    dense_ffn: ClassVar[str] = "mlp"
    """Dense target FFN: "mlp" — `model.layers.{i}.mlp.{gate,up,down}_proj.weight`; "one_expert" — the
    teacher's own MoE block with E = 1, top-1 (softmax over one logit is exactly 1) and a zero router."""
    dense_architecture: ClassVar[str | None] = None
    """`architectures` of the dense target when it is another model type (e.g. "MistralForCausalLM")."""
    moe_config_fields: ClassVar[tuple[str, ...]] = ()
    """MoE-only config fields the dense config drops (with quantization_config: the student is unquantised)."""

    # ---- config ---------------------------------------------------------------------------------------
    def moe_layer_indices(self, config: dict[str, Any], num_layers: int) -> tuple[int, ...]:
        """Decoder layers with a routed MoE block; default: all."""
        return tuple(range(num_layers))

    def shared_width(self, config: dict[str, Any]) -> int:
        """Total width of the always-on shared experts of one MoE layer (0: none)."""
        return 0

    def dims(self, config: dict[str, Any]) -> MoEDims:
        """Sizes from the config, after checking it selects the declared activation; raises CheckpointError
        naming a missing/invalid field."""
        self.activation.check_config(config)
        num_experts = require_int_any(config, self.num_experts_keys)
        top_k = require_int_any(config, self.top_k_keys)
        if top_k > num_experts:
            top_k_key = next(key for key in self.top_k_keys if config.get(key) is not None)
            raise CheckpointError(
                f"config.json field {top_k_key!r} = {top_k} exceeds the number of experts {num_experts} "
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

    # ---- routing ----------------------------------------------------------------------------------------
    def router_probs(self, router_logits: torch.Tensor) -> torch.Tensor:
        """p(t) over all E experts: [T, E] logits → [T, E] probabilities (float64)."""
        return torch.softmax(router_logits.double(), dim=-1)

    # ---- a loaded transformers model (hooks, in-memory statistics) ---------------------------------------
    def moe_block(self, model: nn.Module, layer: int) -> nn.Module:
        """The in-memory MoE block (`modules.block`) of decoder layer `layer`."""
        try:
            block = _submodule(decoder_layers(model)[layer], self.modules.block)
            _submodule(block, self.modules.experts)
        except AttributeError:
            raise Moe2DenseError(
                f"{self.model_type}: decoder layer {layer} has no routed experts (a dense layer)"
            ) from None
        return block

    def router_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The router of decoder layer `layer`; its forward returns (logits, top-k weights, top-k indices)."""
        return _submodule(self.moe_block(model, layer), self.modules.router)

    def experts_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The routed-experts module; its first positional input is the hidden states [T, H]."""
        return _submodule(self.moe_block(model, layer), self.modules.experts)

    def shared_module(self, model: nn.Module, layer: int) -> nn.Module | None:
        """The always-on shared-expert MLP (input [.., H] → [.., H]); None if the family has none."""
        shared = self.modules.shared
        return None if shared is None else _submodule(self.moe_block(model, layer), shared)

    def shared_gate_module(self, model: nn.Module, layer: int) -> nn.Module | None:
        """Qwen2-MoE's `shared_expert_gate` (output = pre-sigmoid gate [T, 1]); None elsewhere."""
        gate = self.modules.shared_gate
        return None if gate is None else _submodule(self.moe_block(model, layer), gate)

    def module_expert_weights(self, experts: nn.Module) -> ExpertWeights:
        """Canonical views (no copy, module dtype) of an in-memory experts module's parameters."""
        return self.module_experts.from_module(experts)

    # ---- on-disk names and shapes ---------------------------------------------------------------------
    def block_prefix(self, layer: int) -> str:
        """On-disk name prefix of the MoE block of decoder layer `layer` (e.g. `model.layers.3.mlp.`)."""
        return f"model.layers.{layer}.{self.disk.block}."

    def experts_prefix(self, layer: int) -> str:
        """On-disk prefix the routed-expert layout's names are relative to."""
        experts = self.disk.experts
        return self.block_prefix(layer) + (f"{experts}." if experts else "")

    def router_tensor_names(self, layer: int) -> dict[str, str]:
        """Router tensors keyed as `read_router` returns them → on-disk name."""
        return {key: f"{self.block_prefix(layer)}{self.disk.router}.{key}" for key in self.router_tensors}

    def _shared_prefix(self, layer: int) -> str | None:
        return None if self.disk.shared is None else f"{self.block_prefix(layer)}{self.disk.shared}."

    def _shared_gate_name(self, layer: int) -> str | None:
        gate = self.disk.shared_gate
        return None if gate is None else f"{self.block_prefix(layer)}{gate}.weight"

    def routed_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        """Every on-disk tensor of the routed experts AND router of a MoE layer (dropped from the dense model)."""
        experts = self.disk_experts.tensor_names(
            self.experts_prefix(layer), config, self.dims(config).num_experts
        )
        return [*self.router_tensor_names(layer).values(), *experts]

    def shared_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        """On-disk tensors of the layer's shared experts (and shared gate); [] if none."""
        prefix, gate = self._shared_prefix(layer), self._shared_gate_name(layer)
        return [*(MLP.names(prefix) if prefix else ()), *([gate] if gate else [])]

    def dense_mlp_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        """On-disk tensors of a teacher layer that is already dense; [] if none."""
        if layer in self.dims(config).moe_layers:
            return []
        return list(MLP.names(f"model.layers.{layer}.mlp."))

    def expected_shapes(self, config: dict[str, Any], layer: int) -> dict[str, tuple[int, ...]]:
        """On-disk shape of every routed, router, shared and dense-MLP tensor of `layer` that the config
        implies; `checkpoint.validate_checkpoint` compares them with the shard headers before anything runs."""
        d = self.dims(config)
        if layer not in d.moe_layers:
            return MLP.shapes(f"model.layers.{layer}.mlp.", d.dense_width, d.hidden)
        shapes = {
            name: (d.num_experts, d.hidden) if key == "weight" else (d.num_experts,)
            for key, name in self.router_tensor_names(layer).items()
        }
        shapes.update(
            self.disk_experts.shapes(
                self.experts_prefix(layer), config, d.num_experts, d.expert_width, d.hidden
            )
        )
        if (prefix := self._shared_prefix(layer)) is not None:
            shapes.update(MLP.shapes(prefix, d.shared_width, d.hidden))
        if (gate := self._shared_gate_name(layer)) is not None:
            shapes[gate] = (1, d.hidden)
        return shapes

    # ---- on-disk reads ----------------------------------------------------------------------------------
    def read_router(self, reader: Any, layer: int) -> dict[str, torch.Tensor]:
        """Router tensors of a MoE layer keyed 'weight' [E, H] (+ 'bias' [E], 'e_score_correction_bias' [E])."""
        return {
            key: self.read_tensor(reader, name).float()
            for key, name in self.router_tensor_names(layer).items()
        }

    def read_experts(self, reader: Any, layer: int, experts: list[int]) -> ExpertWeights:
        """Routed experts `experts` of `layer` (in that order), canonical float32 (MXFP4 / FP8 dequantised)."""
        return self.disk_experts.read(reader, self.experts_prefix(layer), reader.config, experts)

    def read_experts_into(self, reader: Any, layer: int, experts: list[int], out: ExpertWeights) -> None:
        """Routed experts `experts` of `layer` copied into the canonical views `out` [len(experts), …] of any
        dtype: per-expert layouts convert straight from the checkpoint's pages (no float32 copy on the way),
        fused ones read as `read_experts` does and copy."""
        self.disk_experts.read_into(reader, self.experts_prefix(layer), reader.config, experts, out)

    def read_shared(self, reader: Any, layer: int) -> ExpertWeights | None:
        """The layer's shared experts as ONE canonical expert of width shared_width; None if none."""
        prefix = self._shared_prefix(layer)
        return None if prefix is None else MLP.read(reader, prefix)

    def read_dense_mlp(self, reader: Any, layer: int) -> ExpertWeights:
        """A teacher's dense layer MLP as one canonical expert (E=1, width dense_width)."""
        return MLP.read(reader, f"model.layers.{layer}.mlp.")

    def read_tensor(self, reader: Any, name: str) -> torch.Tensor:
        """A teacher tensor as the (unquantised) dense checkpoint stores it: block-FP8 weights (DeepSeek-V3,
        *-FP8 releases) dequantised to float32 with their `…_scale_inv` partner (which rename_for_dense drops);
        anything else exactly as stored. Assembly copies non-FFN tensors through this."""
        return read_dequantized(reader, name)

    # ---- dense target -----------------------------------------------------------------------------------
    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        """config.json of the dense student: every layer a dense FFN of width `ffn_width`, no router,
        loadable by stock transformers `AutoModelForCausalLM` (architectures, model_type set). The teacher's
        config without `moe_config_fields` and quantization_config; "one_expert": every expert-count and
        top-k alias = 1; `dense_architecture`: model_type and architectures of the target."""
        self.dims(config)
        dense = without_keys(config, ("quantization_config", *self.moe_config_fields))
        if self.dense_ffn == "one_expert":
            for keys in (self.num_experts_keys, self.top_k_keys):
                dense.update({key: 1 for key in keys if key in dense or key == keys[0]})
        if self.dense_architecture is not None:
            dense.update(model_type=self.dense_model_type, architectures=[self.dense_architecture])
        dense["intermediate_size"] = ffn_width
        return dense

    def dense_ffn_tensors(self, layer: int, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """On-disk tensors (target naming) of the dense FFN of `layer` from one canonical expert (E=1):
        "mlp" a bias-free MLP; "one_expert" the expert in the teacher's unquantised layout plus a zero router
        (router weight [1, H], other router tensors [1]; any value gives softmax 1)."""
        if self.dense_ffn == "mlp":
            return MLP.write(f"model.layers.{layer}.mlp.", ffn)
        if ffn.num_experts != 1:
            raise ValueError(
                f"{self.model_type}: dense FFN of layer {layer} must be one expert, got {ffn.num_experts}"
            )
        router = {
            name: ffn.gate.new_zeros((1, ffn.hidden) if key == "weight" else (1,))
            for key, name in self.router_tensor_names(layer).items()
        }
        return {**router, **self.disk_experts.write(self.experts_prefix(layer), ffn)}

    def rename_for_dense(self, name: str) -> str | None:
        """Target name of a non-FFN teacher tensor (attention, norms, embeddings: unchanged); None drops it.
        Every tensor of a layer's FFN block (router, routed, shared, teacher dense MLP) is dropped —
        assembly writes the dense FFN through `dense_ffn_tensors` —, and so are FP8 `…_scale_inv` tensors
        (`read_tensor` dequantises their weights)."""
        if name.endswith(SCALE_SUFFIX):
            return None
        match = LAYER_PREFIX.match(name)
        if match and name[match.end() :].startswith((f"{self.disk.block}.", "mlp.")):
            return None
        return name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.dense_ffn not in DENSE_FFNS:
            raise TypeError(f"{cls.__name__}.dense_ffn: {cls.dense_ffn!r}, expected one of {DENSE_FFNS}")


FAMILIES: Registry[MoEArchSpec] = Registry("config.model_type", "MoE family", UnsupportedArchitectureError)
"""Every supported family (an instance of its spec) under its `config.model_type`."""


def register_spec(spec_cls: type[MoEArchSpec]) -> type[MoEArchSpec]:
    """Class decorator: make a family available under its model_type."""
    FAMILIES.add(spec_cls.model_type, spec_cls())
    return spec_cls


supported_model_types = FAMILIES.names
get_spec = FAMILIES.get
