"""Down-projection scalings (METHOD.md "Down-projection scaling"), registered under their METHOD.md names.

from moe2dense_core.scaling import get_scaling
scales = get_scaling("uniform")(layer_stats, groups)   # c_g per group (options at their defaults)
"""

from moe2dense_core.scaling import proportional, uniform  # noqa: F401  (registration)
from moe2dense_core.scaling.registry import SCALINGS, Scaling, get_scaling, register_scaling, scaling_names
from moe2dense_core.scaling.shared import shared_scale

__all__ = ["SCALINGS", "Scaling", "get_scaling", "register_scaling", "scaling_names", "shared_scale"]
