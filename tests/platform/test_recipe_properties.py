"""Property-based tests of recipe parsing and overrides, generated from the Recipe model itself.

Every leaf field of the recipe (walked from the pydantic models: type, bounds, choices, pattern) gets
a strategy of valid values and a list of wrong ones, so a field added later is covered without
editing this file. Properties:
1. a valid recipe round-trips: recipe_to_yaml → load_recipe gives an equal recipe (same digest);
2. a mutation of a valid recipe (wrong type, out-of-range value, unknown key at any depth) raises
   RecipeError — never another exception, never a silent accept — on a line naming the mutated path;
3. `--set path=value` equals setting the field directly (same recipe, or the same error lines).
"""

from __future__ import annotations

import copy
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from moe2dense_core.registry import Method, MethodRegistry
from moe2dense_platform.recipe import Recipe, RecipeError, parse_recipe
from moe2dense_platform.recipe_io import _RecipeDumper, load_recipe, recipe_to_yaml

PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]
)

CORPUS = {"source": "files", "paths": ["a.txt"], "dataset": "org/data"}
BASE: dict[str, Any] = {
    "name": "base",
    "source": {"model": "./teacher"},
    "calibration": {"data": CORPUS, "num_tokens": 4096, "seq_len": 64},
    "distillation": {"data": CORPUS, "seq_len": 64, "train": {"max_steps": 10}},
    "evaluation": {
        "downstream": {"tasks": [{"name": "piqa", "format": "multiple_choice", "data_file": "p.jsonl"}]}
    },
    "tracking": {"registered_model": "dense"},
    "storage": {"export_dir": "out"},
}
"""A valid recipe with every section present, so every leaf has a place to be set."""

FIXED = {("source",), ("evaluation", "downstream", "tasks")}
"""Subtrees with semantic rules no type states (a path or pinned hub id; local-vs-hub tasks): not generated."""


@dataclass(frozen=True)
class Leaf:
    """A generated field; a method choice (plan.scoring…) is a Literal of its registry's names that also
    takes {name, **options}."""

    path: tuple[str, ...]
    annotation: Any
    bounds: dict[str, Any]
    registry: MethodRegistry | None = None

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def optional(self) -> bool:
        return type(None) in get_args(self.annotation)

    @property
    def kinds(self) -> set[Any]:
        """Scalar types the annotation admits, without None (Literal: its values' types)."""
        return _kinds(self.annotation) - {type(None)}


def _kinds(annotation: Any) -> set[Any]:
    if get_origin(annotation) is Literal:
        return {type(value) for value in get_args(annotation)}
    args = get_args(annotation)
    return set().union(*(_kinds(a) for a in args if a is not Ellipsis)) if args else {annotation}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def walk(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> tuple[list[Leaf], list[tuple[str, ...]]]:
    """Every generated leaf field under `model`, and every section (mapping) path, root included."""
    leaves, sections = [], [prefix]
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        if path in FIXED:
            continue
        registry = next((m for m in field.metadata if isinstance(m, MethodRegistry)), None)
        inner = _model_of(field.annotation)
        if registry is not None:
            leaves.append(Leaf(path, Literal[tuple(registry.names())], {}, registry))
        elif inner is not None:
            sub_leaves, sub_sections = walk(inner, path)
            leaves += sub_leaves
            sections += sub_sections
        else:
            bounds = {
                k: getattr(m, k)
                for m in field.metadata
                for k in ("ge", "gt", "le", "lt", "min_length", "pattern")
                if getattr(m, k, None) is not None
            }
            leaves.append(Leaf(path, field.annotation, bounds))
    return leaves, sections


def allowed_keys(section: tuple[str, ...]) -> set[str]:
    """The field names (and aliases) the model at `section` accepts (list indices step into the item model)."""
    model: type[BaseModel] | None = Recipe
    for part in section:
        if not part.isdigit():
            assert model is not None
            model = _model_of(model.model_fields[part].annotation)
    assert model is not None
    return {name for name in model.model_fields} | {f.alias for f in model.model_fields.values() if f.alias}


LEAVES, SECTIONS = walk(Recipe)
SECTIONS.append(("evaluation", "downstream", "tasks", "0"))  # a mapping inside a list
BOUNDED = [
    leaf
    for leaf in LEAVES
    if set(leaf.bounds) & {"ge", "gt", "le", "lt", "pattern"} or get_origin(leaf.annotation) is Literal
]
BETA = st.floats(0, 1, exclude_max=True)
YAML_LOOKALIKES = [
    "1e-4",
    "2E5",
    "+1e3",
    ".5e1",
    "yes",
    "no",
    "on",
    "null",
    "~",
    "0x1F",
    "0o17",
    "12:30",
    "1_000",
    "2024-01-01",
    ".inf",
    "-.NaN",
    "true",
    "",
    " lead",
    "trail ",
    "a: b",
    "- x",
    "[x]",
    "a=b=c",
    "\x85",
    "#x",
    "é",
]
"""Strings PyYAML could read back as another type or value, unless written quoted."""


def valid_values(leaf: Leaf) -> st.SearchStrategy[Any]:
    """Values the field's type and bounds accept (cross-field rules are left to `assume`)."""
    if leaf.registry is not None:
        return method_choices(leaf.registry)
    if leaf.path[-1] == "adam_betas":  # tuple[float, float], each in [0, 1) by a model validator
        return st.tuples(BETA, BETA).map(list)
    inner = (
        next(a for a in (get_args(leaf.annotation) or (leaf.annotation,)) if a is not type(None))
        if leaf.optional
        else leaf.annotation
    )
    b = leaf.bounds
    if get_origin(inner) is Union:  # e.g. int | Literal["auto"]: any arm's values
        value = st.one_of([valid_values(Leaf(leaf.path, arm, b)) for arm in get_args(inner)])
    elif get_origin(inner) is Literal:
        value = st.sampled_from(get_args(inner))
    elif inner is bool:
        value = st.booleans()
    elif inner is int:
        low = b.get("ge", b["gt"] + 1 if "gt" in b else -(2**40))
        value = st.integers(low, b.get("le", low + 2**40))
    elif inner is float:
        value = st.floats(
            b.get("ge", b.get("gt", -1e12)),
            b.get("le", b.get("lt", 1e12)),
            exclude_min="gt" in b,
            exclude_max="lt" in b,
            allow_nan=False,
            allow_infinity=False,
        )
    elif inner is str:
        shortest = b.get("min_length", 0)
        value = st.from_regex(b["pattern"], fullmatch=True) if "pattern" in b else st.text(min_size=shortest)
        lookalikes = [
            t
            for t in YAML_LOOKALIKES
            if len(t) >= shortest and ("pattern" not in b or re.match(b["pattern"], t))
        ]
        value = value | st.sampled_from(lookalikes)
    elif inner is Path:
        value = st.from_regex(r"[\w.-]{1,8}(/[\w.-]{1,8}){0,2}", fullmatch=True)
    elif get_origin(inner) is tuple:
        value = st.lists(st.from_regex(r"[\w-]{1,8}\.txt", fullmatch=True), min_size=1, max_size=3)
    else:
        raise AssertionError(f"{leaf.dotted}: no strategy for {inner!r}; teach valid_values this type")
    return (st.none() | value) if leaf.optional else value


def method_choices(registry: MethodRegistry) -> st.SearchStrategy[Any]:
    """A registered name, or {name, some options} with option values from the method's options model."""

    def with_options(method: Method) -> st.SearchStrategy[dict[str, Any]]:
        options = {
            leaf.path[-1]: valid_values(leaf) for leaf in walk(method.options)[0] if leaf.path != ("name",)
        }
        return st.fixed_dictionaries({"name": st.just(method.name)}, optional=options)

    return st.sampled_from(registry.names()) | st.one_of([with_options(m) for m in registry.entries()])


def wrong_values(leaf: Leaf) -> list[Any]:
    """Values of a type the field does not take (a mapping and a nested list fit no leaf)."""
    kinds, wrong = leaf.kinds, [{"x": 1}, [[1, 2]]]
    numeric = bool(kinds & {int, float}) and bool not in kinds
    if numeric:
        wrong += ["abc", True, [1]]
    if kinds == {int}:
        wrong.append(1.5)
    if kinds == {bool}:
        wrong += ["maybe", 2, 1.5, [True]]
    if kinds & {str, Path} and not numeric:
        wrong += [7, 1.5, True] + ([] if get_origin(leaf.annotation) is tuple else [["a"]])
    return wrong


def out_of_range(leaf: Leaf) -> st.SearchStrategy[Any]:
    """Values of the right type that break a bound, a choice list or a pattern."""
    b, options = leaf.bounds, []
    if get_origin(leaf.annotation) is Literal:
        options.append(st.just("not-a-choice") if str in leaf.kinds else st.integers(2, 9))
    if "pattern" in b:
        options.append(st.just("has spaces/and slashes"))
    for key, shift in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
        if key in b:
            limit = b[key]
            if int in leaf.kinds:
                options.append(
                    st.integers(max_value=limit + shift)
                    if shift <= 0 and key in ("ge", "gt")
                    else st.integers(min_value=limit + shift)
                )
            else:
                below = key in ("ge", "gt")
                options.append(
                    st.floats(max_value=limit, exclude_max=key == "ge", allow_nan=False, allow_infinity=False)
                    if below
                    else st.floats(min_value=limit, exclude_min=key == "le", allow_nan=False)
                )
    if float in leaf.kinds:
        options.append(st.sampled_from([math.inf, -math.inf, math.nan]))
    return st.one_of(options)


def set_in(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `data` with `value` at `path` (missing mappings created, list levels indexed)."""
    result = copy.deepcopy(data)
    node: Any = result
    for key in path[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value
    return result


@st.composite
def valid_recipe_data(draw: st.DrawFn) -> dict[str, Any]:
    """BASE with a few leaves set to generated valid values; only mappings that parse are kept."""
    data = BASE
    for leaf in draw(st.lists(st.sampled_from(LEAVES), max_size=6, unique_by=lambda leaf: leaf.path)):
        data = set_in(data, leaf.path, draw(valid_values(leaf)))
    try:
        parse_recipe(data)
    except RecipeError:
        assume(False)  # a cross-field rule (num_tokens ≥ seq_len, warmup ≤ max_steps, K ≥ k …)
    return data


def error_lines(call: Any) -> list[str]:
    """The field lines of the RecipeError `call()` raises (the header names the origin)."""
    with pytest.raises(RecipeError) as error:
        call()
    return str(error.value).splitlines()[1:]


def write_yaml(folder: str, data: dict[str, Any]) -> Path:
    path = Path(folder) / "recipe.yaml"
    path.write_text(
        yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return path


def as_override_value(value: Any) -> str:
    """How a user types `value` after `path=` (YAML flow style, quoted where YAML would misread it)."""
    return yaml.dump(
        {"v": value}, Dumper=_RecipeDumper, default_flow_style=True, width=math.inf, allow_unicode=True
    ).strip()[4:-1]


def test_every_leaf_has_a_strategy() -> None:
    assert len(LEAVES) > 60 and len(SECTIONS) >= 12
    for leaf in LEAVES:
        valid_values(leaf)
        assert wrong_values(leaf), leaf.dotted


@PROPERTY_SETTINGS
@given(data=valid_recipe_data())
def test_valid_recipes_round_trip_through_yaml(data: dict[str, Any]) -> None:
    recipe = parse_recipe(data)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resolved.yaml"
        path.write_text(recipe_to_yaml(recipe), encoding="utf-8")
        loaded = load_recipe(path)
    assert loaded == recipe
    assert loaded.digest() == recipe.digest()


@PROPERTY_SETTINGS
@given(base=valid_recipe_data(), draw=st.data())
def test_a_wrong_type_is_refused_at_its_path(base: dict[str, Any], draw: st.DataObject) -> None:
    leaf = draw.draw(st.sampled_from(LEAVES))
    value = draw.draw(st.sampled_from(wrong_values(leaf)))
    lines = error_lines(lambda: parse_recipe(set_in(base, leaf.path, value)))
    assert any(line.startswith(f"  {leaf.dotted}") for line in lines), (leaf.dotted, value, lines)


@PROPERTY_SETTINGS
@given(base=valid_recipe_data(), draw=st.data())
def test_an_out_of_range_value_is_refused_at_its_path(base: dict[str, Any], draw: st.DataObject) -> None:
    leaf = draw.draw(st.sampled_from(BOUNDED))
    value = draw.draw(out_of_range(leaf))
    lines = error_lines(lambda: parse_recipe(set_in(base, leaf.path, value)))
    assert any(line.startswith(f"  {leaf.dotted}: ") for line in lines), (leaf.dotted, value, lines)


@PROPERTY_SETTINGS
@given(base=valid_recipe_data(), draw=st.data())
def test_an_unknown_key_at_any_depth_is_refused_with_the_allowed_keys(
    base: dict[str, Any], draw: st.DataObject
) -> None:
    section = draw.draw(st.sampled_from(SECTIONS))
    key = draw.draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
    node: Any = base
    for part in section:
        node = node[int(part)] if isinstance(node, list) else node.get(part) or {}
    assume(key not in node and key not in allowed_keys(section))  # a key the section does not define
    path = (*section, key)
    lines = error_lines(lambda: parse_recipe(set_in(base, path, 1)))
    assert [line for line in lines if line.startswith(f"  {'.'.join(path)}: unknown key (allowed: ")], lines


@PROPERTY_SETTINGS
@given(base=valid_recipe_data(), draw=st.data())
def test_an_override_equals_setting_the_field(base: dict[str, Any], draw: st.DataObject) -> None:
    leaf = draw.draw(st.sampled_from(LEAVES))
    value = draw.draw(valid_values(leaf) | st.sampled_from(wrong_values(leaf)))
    dropped = draw.draw(st.sampled_from([None, *(k for k in base if k not in ("name", "source"))]))
    file_data = {k: v for k, v in base.items() if k != dropped}  # overrides also create missing levels
    override = f"{leaf.dotted}={as_override_value(value)}"
    direct = set_in(file_data, leaf.path, value)
    with tempfile.TemporaryDirectory() as folder:
        path = write_yaml(folder, file_data)
        try:
            expected = parse_recipe(direct)
        except RecipeError:
            assert error_lines(lambda: load_recipe(path, [override])) == error_lines(
                lambda: parse_recipe(direct)
            )
        else:
            assert load_recipe(path, [override]) == expected


CHOICES = [leaf for leaf in LEAVES if leaf.registry is not None]


def test_every_method_choice_of_the_plan_is_generated() -> None:
    assert [leaf.dotted for leaf in CHOICES] == ["plan.scoring", "plan.grouping", "plan.scaling"]


@pytest.mark.parametrize(
    ("leaf", "method"),
    [(leaf, method) for leaf in CHOICES for method in leaf.registry.entries()],
    ids=lambda value: value.dotted if isinstance(value, Leaf) else value.name,
)
def test_an_unknown_option_is_refused_with_the_options_of_its_method(leaf: Leaf, method: Method) -> None:
    lines = error_lines(lambda: parse_recipe(set_in(BASE, leaf.path, {"name": method.name, "colour": 1})))
    allowed = ", ".join(method.options.model_fields)
    assert lines == [f"  {leaf.dotted}.colour: unknown key (allowed: {allowed}) (got 1)"]


def test_an_option_of_plan_schema_1_is_refused_naming_its_new_place() -> None:
    lines = error_lines(lambda: parse_recipe({**BASE, "plan": {"scaling": "uniform", "router_mass": True}}))
    assert lines == [
        "  plan.router_mass: is now an option of its method, written scaling: {name: uniform, router_mass: …} (got True)"
    ]
