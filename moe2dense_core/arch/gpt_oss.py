"""GPT-OSS (openai/gpt-oss-20b, -120b) → the same `gpt_oss` type with ONE expert, top-1 (as the paper ships it).

On disk, released (MXFP4, config has quantization_config.quant_method = "mxfp4"):
    model.layers.{i}.mlp.router.weight [E, H], .bias [E]                                 (bf16)
    model.layers.{i}.mlp.experts.gate_up_proj_blocks U8 [E, 2I, H/32, 16], _scales U8 [E, 2I, H/32]
    model.layers.{i}.mlp.experts.gate_up_proj_bias [E, 2I]
    model.layers.{i}.mlp.experts.down_proj_blocks U8 [E, H, I/32, 16],  _scales U8 [E, H, I/32]
    model.layers.{i}.mlp.experts.down_proj_bias [E, H]
  rows of gate_up are INTERLEAVED: even rows gate, odd rows up (the same for the bias).
On disk, unquantised (what `save_pretrained` writes for a bf16/fp32 model): the in-memory layout
    gate_up_proj [E, H, 2I] (interleaved columns), gate_up_proj_bias [E, 2I], down_proj [E, I, H], down_proj_bias [E, H].
Expert [transformers GptOssExperts]: g, u = (x W_gu + b_gu)[0::2], [1::2];
    f_e(x) = ((clamp(u, ±7) + 1) · min(g, 7) · sigmoid(1.702 · min(g, 7))) W_d + b_d   (clamped SwiGLU).
Routing [GptOssTopKRouter]: z = W_r x + b_r; top-k on z, then softmax over the k selected logits.
`router_probs` gives p(t) = softmax(z(t)) over all E [defined here: the distribution whose restriction to
the selected set, renormalised, is exactly the applied weights].

Dense target [paper]: `gpt_oss` with num_local_experts = 1 and top-1 (softmax over one logit is 1), experts
kept unquantised (quantization_config dropped), biases and clamped SwiGLU kept; the single expert's
gate/up are re-interleaved into gate_up_proj.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moe2dense_core.arch.config_fields import require_int, require_int_any
from moe2dense_core.arch.expert_weights import Activation, ExpertWeights
from moe2dense_core.arch.fused_swiglu import decoder_layers
from moe2dense_core.arch.spec import MoEArchSpec, MoEDims, register_spec
from moe2dense_core.errors import CheckpointError, Moe2DenseError
from moe2dense_core.io.mxfp4 import BLOCK_SIZE, dequantize_mxfp4

SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0


@register_spec
class GptOssSpec(MoEArchSpec):
    model_type = "gpt_oss"
    dense_model_type = "gpt_oss"
    activation = Activation("clamped_swiglu", alpha=SWIGLU_ALPHA, limit=SWIGLU_LIMIT)

    # ---- config ---------------------------------------------------------------------------------
    def dims(self, config: dict[str, Any]) -> MoEDims:
        num_experts = require_int_any(config, ("num_local_experts", "num_experts"))
        top_k = require_int_any(config, ("num_experts_per_tok", "experts_per_token"))
        if top_k > num_experts:
            raise CheckpointError(f"config.json: top-k {top_k} exceeds num_local_experts {num_experts}")
        for key, expected in (("swiglu_alpha", SWIGLU_ALPHA), ("swiglu_limit", SWIGLU_LIMIT)):
            if config.get(key, expected) != expected:
                raise CheckpointError(
                    f"config.json field {key!r} = {config[key]}: only {expected} is supported"
                )
        num_layers = require_int(config, "num_hidden_layers")
        return MoEDims(
            num_experts=num_experts,
            top_k=top_k,
            expert_width=require_int(config, "intermediate_size"),
            hidden=require_int(config, "hidden_size"),
            num_layers=num_layers,
            moe_layers=tuple(range(num_layers)),
        )

    @staticmethod
    def is_mxfp4(config: dict[str, Any]) -> bool:
        """True when the experts are stored as MXFP4 blocks/scales (the released layout)."""
        return (config.get("quantization_config") or {}).get("quant_method") == "mxfp4"

    # ---- a loaded transformers model ----------------------------------------------------------------
    def _mlp(self, model: nn.Module, layer: int) -> nn.Module:
        mlp = decoder_layers(model)[layer].mlp
        if not hasattr(mlp, "router"):
            raise Moe2DenseError(f"gpt_oss: decoder layer {layer} has no router")
        return mlp

    def router_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self._mlp(model, layer).router

    def experts_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self._mlp(model, layer).experts

    def module_expert_weights(self, experts: nn.Module) -> ExpertWeights:
        """Canonical copies of gate_up_proj [E, H, 2I] (interleaved), down_proj [E, I, H] and the biases."""
        gate_up = experts.gate_up_proj.detach()
        bias = experts.gate_up_proj_bias.detach()
        return ExpertWeights(
            gate=gate_up[..., 0::2].transpose(1, 2),
            up=gate_up[..., 1::2].transpose(1, 2),
            down=experts.down_proj.detach().transpose(1, 2),
            gate_bias=bias[:, 0::2],
            up_bias=bias[:, 1::2],
            down_bias=experts.down_proj_bias.detach(),
        )

    # ---- on-disk names ------------------------------------------------------------------------------
    @staticmethod
    def _prefix(layer: int) -> str:
        return f"model.layers.{layer}.mlp."

    def router_tensor_names(self, layer: int) -> dict[str, str]:
        return {"weight": f"{self._prefix(layer)}router.weight", "bias": f"{self._prefix(layer)}router.bias"}

    def expert_tensor_names(self, config: dict[str, Any], layer: int) -> dict[str, str]:
        """Role → on-disk name of the layer's fused expert tensors, for the layout the config declares."""
        base = f"{self._prefix(layer)}experts."
        names = {"gate_up_bias": f"{base}gate_up_proj_bias", "down_bias": f"{base}down_proj_bias"}
        if self.is_mxfp4(config):
            for proj in ("gate_up", "down"):
                names[f"{proj}_blocks"] = f"{base}{proj}_proj_blocks"
                names[f"{proj}_scales"] = f"{base}{proj}_proj_scales"
        else:
            names.update(gate_up=f"{base}gate_up_proj", down=f"{base}down_proj")
        return names

    def routed_tensor_names(self, config: dict[str, Any], layer: int) -> list[str]:
        return [*self.router_tensor_names(layer).values(), *self.expert_tensor_names(config, layer).values()]

    def expected_shapes(self, config: dict[str, Any], layer: int) -> dict[str, tuple[int, ...]]:
        d = self.dims(config)
        e, h, i = d.num_experts, d.hidden, d.expert_width
        names = self.expert_tensor_names(config, layer)
        shapes = {
            self.router_tensor_names(layer)["weight"]: (e, h),
            self.router_tensor_names(layer)["bias"]: (e,),
            names["gate_up_bias"]: (e, 2 * i),
            names["down_bias"]: (e, h),
        }
        if self.is_mxfp4(config):
            for width in (h, i):
                if width % BLOCK_SIZE:
                    raise CheckpointError(
                        f"gpt_oss MXFP4: hidden/intermediate size {width} is not a multiple of 32"
                    )
            shapes[names["gate_up_blocks"]] = (e, 2 * i, h // BLOCK_SIZE, BLOCK_SIZE // 2)
            shapes[names["gate_up_scales"]] = (e, 2 * i, h // BLOCK_SIZE)
            shapes[names["down_blocks"]] = (e, h, i // BLOCK_SIZE, BLOCK_SIZE // 2)
            shapes[names["down_scales"]] = (e, h, i // BLOCK_SIZE)
        else:
            shapes[names["gate_up"]] = (e, h, 2 * i)
            shapes[names["down"]] = (e, i, h)
        return shapes

    # ---- on-disk reads ------------------------------------------------------------------------------
    def read_router(self, reader: Any, layer: int) -> dict[str, torch.Tensor]:
        return {key: reader.get(name).float() for key, name in self.router_tensor_names(layer).items()}

    def read_experts(self, reader: Any, layer: int, experts: list[int]) -> ExpertWeights:
        """Experts `experts` of `layer` in canonical float32: MXFP4 dequantised, gate/up de-interleaved."""
        names = self.expert_tensor_names(reader.config, layer)
        idx = torch.as_tensor(list(experts), dtype=torch.long)
        if self.is_mxfp4(reader.config):
            gate_up = dequantize_mxfp4(
                reader.get(names["gate_up_blocks"])[idx],
                reader.get(names["gate_up_scales"])[idx],
                name=names["gate_up_blocks"],
            )  # [e, 2I, H]
            down = dequantize_mxfp4(
                reader.get(names["down_blocks"])[idx],
                reader.get(names["down_scales"])[idx],
                name=names["down_blocks"],
            )  # [e, H, I]
        else:
            gate_up = reader.get(names["gate_up"])[idx].float().transpose(1, 2)  # [e, 2I, H]
            down = reader.get(names["down"])[idx].float().transpose(1, 2)  # [e, H, I]
        bias = reader.get(names["gate_up_bias"])[idx].float()
        return ExpertWeights(
            gate=gate_up[:, 0::2].contiguous(),
            up=gate_up[:, 1::2].contiguous(),
            down=down.contiguous(),
            gate_bias=bias[:, 0::2].contiguous(),
            up_bias=bias[:, 1::2].contiguous(),
            down_bias=reader.get(names["down_bias"])[idx].float(),
        )

    # ---- dense target -------------------------------------------------------------------------------
    def dense_config(self, config: dict[str, Any], ffn_width: int) -> dict[str, Any]:
        self.dims(config)
        dense = {k: v for k, v in config.items() if k not in ("quantization_config", "num_experts")}
        dense.update(num_local_experts=1, num_experts_per_tok=1, intermediate_size=ffn_width)
        if "experts_per_token" in dense:
            dense["experts_per_token"] = 1
        return dense

    def dense_ffn_tensors(self, layer: int, ffn: ExpertWeights) -> dict[str, torch.Tensor]:
        """One-expert MoE: zero router; gate/up re-interleaved into gate_up_proj [1, H, 2W]; missing biases = 0."""
        if ffn.num_experts != 1:
            raise ValueError(f"gpt_oss: dense FFN of layer {layer} must be one expert, got {ffn.num_experts}")
        w, h = ffn.width, ffn.hidden
        zeros = ffn.gate.new_zeros
        gate_up = zeros(1, h, 2 * w)
        gate_up[..., 0::2] = ffn.gate.transpose(1, 2)
        gate_up[..., 1::2] = ffn.up.transpose(1, 2)
        gate_up_bias = zeros(1, 2 * w)
        gate_up_bias[:, 0::2] = ffn.gate_bias if ffn.gate_bias is not None else 0
        gate_up_bias[:, 1::2] = ffn.up_bias if ffn.up_bias is not None else 0
        base = f"{self._prefix(layer)}experts."
        router = self.router_tensor_names(layer)
        return {
            router["weight"]: zeros(1, h),
            router["bias"]: zeros(1),
            f"{base}gate_up_proj": gate_up,
            f"{base}gate_up_proj_bias": gate_up_bias,
            f"{base}down_proj": ffn.down.transpose(1, 2).contiguous(),
            f"{base}down_proj_bias": ffn.down_bias if ffn.down_bias is not None else zeros(1, h),
        }

    def rename_for_dense(self, name: str) -> str | None:
        """Router and expert tensors are replaced by `dense_ffn_tensors`; every other tensor keeps its name."""
        parts = name.split(".")
        if len(parts) > 4 and parts[:2] == ["model", "layers"] and parts[3] == "mlp":
            return None
        return name
