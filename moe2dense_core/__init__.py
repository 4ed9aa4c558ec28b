"""moe2dense_core: convert a trained Mixture-of-Experts LM into a dense one (arXiv 2605.28207).

    from moe2dense_core import collect_stats, build_plan, assemble, PlanConfig
    stats = collect_stats(model_dir, batches)      # batches: iterable of LongTensor [B, T] token ids
    plan = build_plan(stats, PlanConfig(scoring="do_acp", num_selected=8, grouping="prune",
                                        scaling="uniform"))
    assemble(model_dir, plan, out_dir)             # dense checkpoint + tokenizer + model card

Names are imported lazily on first use, so `import moe2dense_core` stays cheap (no transformers
import until statistics are collected). The library never imports prefect, mlflow or boto3.
No submodule is named like a public name: importing `moe2dense_core.<x>` binds the module as the
package attribute `x`, which would shadow a lazily exported `x` (hence `convert` lives in conversion.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moe2dense_core.arch.spec import get_spec, supported_model_types
    from moe2dense_core.assembly.checkpoint import AssemblyResult, assemble
    from moe2dense_core.conversion import convert
    from moe2dense_core.errors import (
        CheckpointError,
        Moe2DenseError,
        PlanError,
        UnsupportedArchitectureError,
    )
    from moe2dense_core.plan import ConversionPlan, LayerPlan, PlanConfig, build_plan
    from moe2dense_core.stats.collect import collect_stats
    from moe2dense_core.stats.expert_stats import ExpertStats

_EXPORTS: dict[str, str] = {
    "collect_stats": "moe2dense_core.stats.collect",
    "ExpertStats": "moe2dense_core.stats.expert_stats",
    "build_plan": "moe2dense_core.plan",
    "PlanConfig": "moe2dense_core.plan",
    "ConversionPlan": "moe2dense_core.plan",
    "LayerPlan": "moe2dense_core.plan",
    "assemble": "moe2dense_core.assembly.checkpoint",
    "AssemblyResult": "moe2dense_core.assembly.checkpoint",
    "convert": "moe2dense_core.conversion",
    "get_spec": "moe2dense_core.arch.spec",
    "supported_model_types": "moe2dense_core.arch.spec",
    "Moe2DenseError": "moe2dense_core.errors",
    "CheckpointError": "moe2dense_core.errors",
    "PlanError": "moe2dense_core.errors",
    "UnsupportedArchitectureError": "moe2dense_core.errors",
}

__all__ = [
    "AssemblyResult",
    "CheckpointError",
    "ConversionPlan",
    "ExpertStats",
    "LayerPlan",
    "Moe2DenseError",
    "PlanConfig",
    "PlanError",
    "UnsupportedArchitectureError",
    "assemble",
    "build_plan",
    "collect_stats",
    "convert",
    "get_spec",
    "supported_model_types",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'moe2dense_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
