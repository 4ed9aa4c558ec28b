"""The recipe against its teacher's config.json: what the recipe alone cannot know, refused before calibration.

From config.json alone (no weights read, nothing downloaded):
- the architecture is supported (`get_spec(model_type)`) and its sizes readable (`spec.dims`);
- the plan fits E experts and the teacher's top-k (`validate_plan_config`: k ≤ E, k ≤ K ≤ E, `prune`
  needs K = k);
- an expanded teacher routing k' = distillation.train.teacher_top_k (paper Eq. 6) is reachable
  (`check_teacher_top_k`: 1 ≤ k' ≤ E and within group-limited routing), which the distillation
  loop would otherwise refuse only after calibration, assembly and the first evaluations.
Each rule is the core's own; this module only applies them to the recipe and names the recipe field
and the config file in one `RecipeError`.

Callers: the CLI before any flow starts (a local teacher folder), and the convert flow right after
the `source` stage (any teacher, hub ids included).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from moe2dense_core.arch import get_spec
from moe2dense_core.distill.expanded_routing import check_teacher_top_k
from moe2dense_core.errors import DistillError, Moe2DenseError, PlanError
from moe2dense_core.plan import validate_plan_config
from moe2dense_platform.recipe import Recipe, RecipeError


def check_recipe_fits_teacher(
    recipe: Recipe, teacher_dir: Path | str | None = None, origin: str = ""
) -> None:
    """Refuse a recipe its teacher cannot run (module docstring); RecipeError naming field and files.

    teacher_dir: the teacher's folder; None = the recipe's own local source folder, when it holds a
    config.json (a hub id, or a folder without one, is left to the `source` stage).
    origin: where the recipe came from (its file), for the message.
    """
    own_folder = teacher_dir is None
    if own_folder and not recipe.source.is_local:
        return
    config_path = Path(recipe.source.model if own_folder else teacher_dir).expanduser() / "config.json"
    if own_folder and not config_path.is_file():
        return
    config = _read_config(config_path)
    try:
        dims = get_spec(str(config.get("model_type"))).dims(config)
    except Moe2DenseError as error:
        raise RecipeError(f"teacher {config_path}: {error}") from None
    recipe_name = f"recipe {origin}" if origin else f"recipe {recipe.name!r}"
    where = (
        f"{recipe_name} does not fit the teacher {config_path} (E = {dims.num_experts}, top-k = {dims.top_k})"
    )
    try:
        validate_plan_config(recipe.plan, dims.num_experts, dims.top_k)
    except PlanError as error:
        raise RecipeError(f"{where}:\n  plan.{error}") from None
    distillation = recipe.distillation
    if distillation is None or not distillation.enabled or distillation.train.teacher_top_k is None:
        return
    try:  # the core rule reads only `model.config`; config.json gives the same attributes
        check_teacher_top_k(
            SimpleNamespace(config=SimpleNamespace(**config)), distillation.train.teacher_top_k
        )
    except DistillError as error:
        raise RecipeError(f"{where}:\n  distillation.train.teacher_top_k: {error}") from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecipeError(f"teacher {path}: not a readable JSON config ({error})") from None
    if not isinstance(config, dict):
        raise RecipeError(f"teacher {path}: the top level must be a JSON object, got {type(config).__name__}")
    return config


__all__ = ["check_recipe_fits_teacher"]
