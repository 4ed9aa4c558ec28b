"""Architecture specs: one file per MoE family, registered under its `config.model_type`.

Importing this package registers every family; `get_spec(model_type)` returns one.
"""

from moe2dense_core.arch import (  # noqa: F401  (importing a family module registers its spec)
    deepseek_v2,
    deepseek_v3,
    gpt_oss,
    granitemoe,
    mixtral,
    olmoe,
    qwen2_moe,
    qwen3_moe,
)
from moe2dense_core.arch.expert_weights import Activation, ExpertWeights
from moe2dense_core.arch.spec import (
    FAMILIES,
    MoEArchSpec,
    MoEDims,
    get_spec,
    register_spec,
    supported_model_types,
)

__all__ = [
    "FAMILIES",
    "Activation",
    "ExpertWeights",
    "MoEArchSpec",
    "MoEDims",
    "get_spec",
    "register_spec",
    "supported_model_types",
]
