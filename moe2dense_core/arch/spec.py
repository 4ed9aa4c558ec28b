"""MoEArchSpec: everything the core knows about one MoE family, as data plus small accessors.

One subclass per family in this folder (qwen3_moe.py, mixtral.py, …), registered under its
`config.model_type`. Adding a family = one spec file + one row in the test matrix.

Conventions
- `config` is the checkpoint's config.json as a plain dict (never a transformers object), so the
  spec works from files alone, before any weights are read.
- `reader` is a `moe2dense_core.io.CheckpointReader`: `reader.get(name) -> Tensor` reads one tensor
  from the safetensors shards through the index (dequantising nothing: the spec does that).
- Expert tensors are returned in canonical layout (`ExpertWeights`, float32, dequantised).
- Routing: for token t with router logits z(t) [E], `router_probs` gives p(t) [E], the probability
  over ALL experts before top-k that METHOD.md's `pp`/`cp` scorers use (softmax(z) for every family
  except DeepSeek-V3, whose p is sigmoid(z) without the selection bias). The applied weights w_e(t)
  and the selected set T(t) are read from the router module's own forward output
  `(logits [T, E], top-k weights [T, k], top-k indices [T, k])`, so they are exactly the teacher's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from moe2dense_core.arch.expert_weights import Activation, ExpertWeights


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


class MoEArchSpec(ABC):
    """Architecture knowledge for one family (see module docstring for conventions)."""

    model_type: ClassVar[str]
    """`config.model_type` of the teacher."""
    dense_model_type: ClassVar[str]
    """`model_type` of the dense target (e.g. qwen3 for qwen3_moe; the same type for GPT-OSS)."""
    activation: ClassVar[Activation] = Activation("swiglu")

    # ---- config ---------------------------------------------------------------------------
    @abstractmethod
    def dims(self, config: dict[str, Any]) -> MoEDims:
        """Sizes from the config; raises CheckpointError naming a missing/invalid field."""

    # ---- routing ----------------------------------------------------------------------------
    def router_probs(self, router_logits: torch.Tensor) -> torch.Tensor:
        """p(t) over all E experts: [T, E] logits → [T, E] probabilities (float64)."""
        return torch.softmax(router_logits.double(), dim=-1)

    # ---- a loaded transformers model (hooks, in-memory statistics) ----------------------------
    @abstractmethod
    def router_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The router of decoder layer `layer`; its forward returns (logits, top-k weights, top-k indices)."""

    @abstractmethod
    def experts_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The routed-experts module; its first positional input is the hidden states [T, H]."""

    def shared_gate_module(self, model: nn.Module, layer: int) -> nn.Module | None:
        """Qwen2-MoE's `shared_expert_gate` (output = pre-sigmoid gate [T, 1]); None elsewhere."""
        return None

    @abstractmethod
    def module_expert_weights(self, experts: nn.Module) -> ExpertWeights:
        """Canonical view of an in-memory experts module's parameters."""

    # ---- on-disk checkpoint (released tensor names) -------------------------------------------
    @abstractmethod
    def routed_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        """Every on-disk tensor of the routed experts AND router of a MoE layer (dropped from the dense model)."""

    def expected_shapes(self, config: dict[str, Any], layer: int) -> dict[str, tuple[int, ...]]:
        """On-disk shape of every routed, router, shared and dense-MLP tensor of `layer` that the config
        implies; `checkpoint.validate_checkpoint` compares them with the shard headers before anything runs."""
        return {}

    @abstractmethod
    def read_experts(self, reader: Any, layer: int, experts: list[int]) -> ExpertWeights:
        """Routed experts `experts` of `layer`, canonical float32 (MXFP4 dequantised on read)."""

    def read_router(self, reader: Any, layer: int) -> dict[str, torch.Tensor]:
        """Router tensors of a MoE layer keyed 'weight' [E, H] (+ 'bias' [E], 'e_score_correction_bias' [E])."""
        raise NotImplementedError

    def shared_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        """On-disk tensors of the layer's shared experts (and shared gate); [] if none."""
        return []

    def read_shared(self, reader: Any, layer: int) -> ExpertWeights | None:
        """The layer's shared experts as ONE canonical expert of width shared_width; None if none."""
        return None

    def dense_mlp_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        """On-disk tensors of a teacher layer that is already dense; [] if none."""
        return []

    def read_dense_mlp(self, reader: Any, layer: int) -> ExpertWeights:
        """A teacher's dense layer MLP as one canonical expert (E=1, width dense_width)."""
        raise NotImplementedError(f"{self.model_type} has no dense teacher layers")

    # ---- dense target -------------------------------------------------------------------------
    @abstractmethod
    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        """config.json of the dense student: every layer a dense FFN of width `ffn_width`, no router,
        loadable by stock transformers `AutoModelForCausalLM` (architectures, model_type set)."""

    @abstractmethod
    def dense_ffn_tensors(self, layer: int, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """On-disk tensors (target naming) of the dense FFN of `layer` from one canonical expert (E=1)."""

    def rename_for_dense(self, name: str) -> str | None:
        """Target name of a non-FFN teacher tensor (attention, norms, embeddings); None drops it."""
        return name

    def read_tensor(self, reader: Any, name: str) -> torch.Tensor:
        """A teacher tensor as the (unquantised) dense checkpoint stores it: block-FP8 weights (DeepSeek-V3,
        *-FP8 releases) dequantised to float32 with their `…_scale_inv` partner (which rename_for_dense drops);
        anything else exactly as stored. Assembly copies non-FFN tensors through this."""
        from moe2dense_core.io.fp8 import read_dequantized

        return read_dequantized(reader, name)


_REGISTRY: dict[str, MoEArchSpec] = {}


def register_spec(spec_cls: type[MoEArchSpec]) -> type[MoEArchSpec]:
    """Class decorator: make a family available under its model_type."""
    _REGISTRY[spec_cls.model_type] = spec_cls()
    return spec_cls


def supported_model_types() -> list[str]:
    """Every registered `config.model_type`, sorted."""
    return sorted(_REGISTRY)


def get_spec(model_type: str) -> MoEArchSpec:
    """The spec for `config.model_type`; the error lists the supported types."""
    from moe2dense_core.errors import UnsupportedArchitectureError

    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"config.model_type {model_type!r} is not a supported MoE family; supported: "
            + ", ".join(supported_model_types())
        ) from None
