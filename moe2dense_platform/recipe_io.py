"""Recipe files: YAML in (with dotted command-line overrides), YAML and JSON schema out.

Override syntax: `a.b.c=value`. The path walks mappings by key and lists by integer index; missing
mapping levels are created. The value is parsed with YAML semantics, exactly like the file: `8` is an
int, `1e-4` a float, `true` a bool, `null` None, `[1, 2]` a list, `{a: 1}` a mapping, else a string.
Only the first `=` separates path and value (`description=a=b` sets "a=b").

Reading and writing share one YAML dialect: PyYAML's safe loader plus the YAML 1.2 float rule, so
`1e-4` (no dot) is a float as in YAML 1.2, not the string PyYAML's YAML 1.1 rules would give, and the
dumper quotes any string that rule would read as a float, so `recipe_to_yaml` round-trips any recipe
whatever its strings hold. A key given twice in one mapping is an error (PyYAML would silently keep
the last). Every YAML problem is reported as `RecipeError` with the file (or override), line, column
and the offending line.
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

from moe2dense_platform.recipe import Recipe, RecipeError, parse_recipe

_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads exponent floats without a dot (`1e-4`) as floats and refuses a key
    given twice in one mapping (merge keys `<<` may still be overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first_seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if earlier is not key_node:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first given on line {earlier.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


class _RecipeDumper(yaml.SafeDumper):
    """yaml.SafeDumper that quotes strings `_RecipeLoader` would read as floats (`'1e-4'`), and writes
    strings holding a YAML 1.1 line break other than \\n (NEL, LS, PS) double-quoted, where they are
    escaped: PyYAML's single-quoted style turns a NEL into a space on the way back."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if _UNICODE_BREAKS.intersection(data):
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_UNICODE_BREAKS = frozenset("\x85\u2028\u2029")
_RecipeDumper.add_representer(str, _RecipeDumper.represent_str)
for _dialect in (_RecipeLoader, _RecipeDumper):
    _dialect.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # safe: _RecipeLoader is a SafeLoader


def yaml_problem(error: yaml.YAMLError) -> str:
    """`line L, column C: <problem> (<context> at line L0)` and the offending line with a caret."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return str(error).replace('"<unicode string>", ', "")
    text = f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    context_mark = getattr(error, "context_mark", None)
    if error.context and context_mark is not None:
        text += f" ({error.context} at line {context_mark.line + 1})"
    snippet = mark.get_snippet(indent=4)
    return f"{text}\n{snippet}" if snippet else text


def parse_override(override: str) -> tuple[list[str], Any]:
    """`"plan.num_selected=8"` → (["plan", "num_selected"], 8)."""
    path, sep, raw = override.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise RecipeError(f"override {override!r}: expected `dotted.path=value`")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        problem = yaml_problem(error)
        raise RecipeError(f"override {override!r}: the value is not valid YAML: {problem}") from None
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
        raise _not_a_mapping(node, path, override)
    if node.get(key) is None:
        node[key] = {}
    return node[key]


def _assign(node: Any, key: str, value: Any, path: list[str], override: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, key, path, override)] = value
    elif isinstance(node, dict):
        node[key] = value
    else:
        raise _not_a_mapping(node, path, override)


def _not_a_mapping(node: Any, path: list[str], override: str) -> RecipeError:
    return RecipeError(
        f"override {override!r}: {'.'.join(path[:-1])} is a {type(node).__name__} ({node!r}), not a mapping"
    )


def _list_index(node: list[Any], key: str, path: list[str], override: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
        raise RecipeError(f"override {override!r}: {'.'.join(path)} is not an index of a list of {len(node)}")
    return int(key)


def read_recipe_data(path: Path | str) -> dict[str, Any]:
    """The raw mapping of a YAML recipe file (no validation); RecipeError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file {path} does not exist")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise RecipeError(f"recipe file {path}: cannot be read ({error.strerror or error})") from None
    try:
        data = _load_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise RecipeError(f"recipe file {path}, line {line}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe file {path}: not valid YAML: {yaml_problem(error)}") from None
    if data is None:
        raise RecipeError(f"recipe file {path} is empty: a recipe needs at least `name` and `source`")
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
    data = recipe.model_dump(mode="json")
    return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True)


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
    "yaml_problem",
]
