"""Recipe files: YAML in (with dotted command-line overrides), YAML and JSON schema out.

Override syntax: `a.b.c=value`. The path walks mappings by key and lists by integer index; missing
mapping levels are created. The value is parsed with YAML semantics, exactly like the file: `8` is an
int, `1e-4` a float, `true` a bool, `null` None, `[1, 2]` a list, `{a: 1}` a mapping, else a string.

Both use PyYAML's safe loader plus the YAML 1.2 float rule, so `1e-4` (no dot) is a float as in
YAML 1.2, not the string PyYAML's YAML 1.1 rules would give.
Overrides apply in order, before validation, so a bad override fails with the field path it set.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tasks.recipe import Recipe, RecipeError, parse_recipe


class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads exponent floats without a dot (`1e-4`) as floats."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # safe: _RecipeLoader is a SafeLoader


def parse_override(override: str) -> tuple[list[str], Any]:
    """`"plan.num_selected=8"` → (["plan", "num_selected"], 8)."""
    path, sep, raw = override.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise RecipeError(f"override {override!r}: expected `dotted.path=value`")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise RecipeError(f"override {override!r}: value is not valid YAML ({error})") from None
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `a.b.c=value` override applied in order."""
    result = copy.deepcopy(data)
    for override in overrides:
        keys, value = parse_override(override)
        node: Any = result
        for depth, key in enumerate(keys[:-1]):
            node = _child(node, key, keys[: depth + 1], override)
        _assign(node, keys[-1], value, keys, override)
    return result


def _child(node: Any, key: str, path: list[str], override: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, key, path, override)]
    if not isinstance(node, dict):
        raise RecipeError(f"override {override!r}: {'.'.join(path[:-1])} is a {type(node).__name__}, not a mapping")
    if node.get(key) is None:
        node[key] = {}
    return node[key]


def _assign(node: Any, key: str, value: Any, path: list[str], override: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, key, path, override)] = value
    elif isinstance(node, dict):
        node[key] = value
    else:
        raise RecipeError(f"override {override!r}: {'.'.join(path[:-1])} is a {type(node).__name__}, not a mapping")


def _list_index(node: list[Any], key: str, path: list[str], override: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise RecipeError(f"override {override!r}: {'.'.join(path)} is not an index of a list of {len(node)}")
    return int(key)


def read_recipe_data(path: Path | str) -> dict[str, Any]:
    """The raw mapping of a YAML recipe file (no validation)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe file {path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_recipe(path: Path | str, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe, apply dotted overrides, validate. Raises RecipeError naming file and field."""
    data = apply_overrides(read_recipe_data(path), overrides)
    origin = str(path) + (f" with overrides {list(overrides)}" if overrides else "")
    return parse_recipe(data, origin)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe (every default filled in) as YAML; `load_recipe` reads it back equal."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def recipe_json_schema() -> str:
    """The JSON schema of a recipe (what `moe2dense schema` prints and the Prefect UI form renders)."""
    return json.dumps(Recipe.model_json_schema(), indent=2)


__all__ = [
    "apply_overrides",
    "load_recipe",
    "parse_override",
    "read_recipe_data",
    "recipe_json_schema",
    "recipe_to_yaml",
]
