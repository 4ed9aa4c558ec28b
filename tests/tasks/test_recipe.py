"""Recipes: the shipped YAML files, strict validation with field paths, dotted overrides, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.recipe import Recipe, RecipeError, parse_recipe
from tasks.recipe_io import apply_overrides, load_recipe, parse_override, recipe_json_schema, recipe_to_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(CONFIGS.rglob("*.yaml"))
PAPER_TASKS = [("winogrande", 5), ("hellaswag", 10), ("arc_easy", 25), ("arc_challenge", 25), ("mmlu", 5)]


def minimal(**sections) -> dict:
    return {"name": "t", "source": {"model": "./teacher"}, **sections}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_recipe_validates_and_round_trips(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    written = tmp_path / "resolved.yaml"
    written.write_text(recipe_to_yaml(recipe))
    assert load_recipe(written) == recipe
    assert load_recipe(written).digest() == recipe.digest()


def test_shipped_recipes_are_the_expected_set() -> None:
    assert [str(p.relative_to(CONFIGS)) for p in SHIPPED] == [
        "demo.yaml", "examples/mixtral_8x7b.yaml", "examples/olmoe_1b_7b.yaml",
        "paper/deepseek_v2_lite.yaml", "paper/gpt_oss_20b.yaml", "paper/qwen3_30b_a3b.yaml",
    ]


@pytest.mark.parametrize(
    "file, model, tokens",
    [("qwen3_30b_a3b.yaml", "Qwen/Qwen3-30B-A3B", 4.0e9),
     ("deepseek_v2_lite.yaml", "deepseek-ai/DeepSeek-V2-Lite", 0.3e9),
     ("gpt_oss_20b.yaml", "openai/gpt-oss-20b", 0.3e9)],
)
def test_paper_recipes_match_method_md(file: str, model: str, tokens: float) -> None:
    """DO-ACP, K = k, prune, uniform; the paper's KD token budget (±2%) on 8 GPUs; its task suite."""
    recipe = load_recipe(CONFIGS / "paper" / file)
    assert recipe.source.model == model and recipe.source.revision
    plan = recipe.plan
    assert (plan.scoring, plan.num_selected, plan.grouping, plan.scaling) == ("do_acp", None, "prune", "uniform")
    train = recipe.distillation.train
    budget = train.max_steps * train.sequences_per_step(world_size=8) * recipe.distillation.seq_len
    assert budget == pytest.approx(tokens, rel=0.02)
    assert train.loss == "forward_kl"
    assert [(t.name, t.num_fewshot) for t in recipe.evaluation.downstream.tasks] == PAPER_TASKS


def test_errors_name_the_field_path_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsource: {model: ./t}\ncalibration: {num_tokens: -5, seq_len: 16}\n"
                    "plan: {scoring: magic}\nstatistics: {mode: streaming, colour: red}\n")
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert str(path) in message
    assert "calibration.num_tokens: Input should be greater than 0 (got -5)" in message
    assert "plan.scoring:" in message and "'magic'" in message
    assert "statistics.mode:" in message
    assert "statistics.colour: Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    "source, expected",
    [({"model": "org/name"}, "needs a revision"),
     ({"model": "not a hub id"}, "neither an existing local path nor a hub id"),
     ({"model": "./t", "trust_remote_code": True}, "source.trust_remote_code"),
     ({"model": "./t", "allow_pickle": True}, "source.allow_pickle")],
)
def test_source_must_be_pinned_and_safe(source: dict, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(minimal(source=source))


def test_cross_field_checks() -> None:
    with pytest.raises(RecipeError, match="smaller than one sequence"):
        parse_recipe(minimal(calibration={"num_tokens": 100, "seq_len": 512}))
    with pytest.raises(RecipeError, match="distillation.train"):
        parse_recipe(minimal(distillation={"seq_len": 64}))  # a distillation needs its training config
    with pytest.raises(RecipeError, match="warmup_steps"):
        parse_recipe(minimal(distillation={"train": {"max_steps": 5, "warmup_steps": 10}}))


def test_recipes_are_frozen() -> None:
    recipe = parse_recipe(minimal())
    with pytest.raises(Exception, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, keys, value",
    [("plan.num_selected=8", ["plan", "num_selected"], 8),
     ("distillation.train.lr=1e-4", ["distillation", "train", "lr"], 1e-4),
     ("plan.router_mass=true", ["plan", "router_mass"], True),
     ("source.revision=null", ["source", "revision"], None),
     ("name=my-run", ["name"], "my-run"),
     ("calibration.data.paths=[a.txt, b.txt]", ["calibration", "data", "paths"], ["a.txt", "b.txt"]),
     ("description=a=b", ["description"], "a=b")],
)
def test_overrides_parse_with_yaml_semantics(override: str, keys: list[str], value: object) -> None:
    assert parse_override(override) == (keys, value)


def test_overrides_apply_in_order_create_levels_and_index_lists() -> None:
    data = {"a": {"b": 1}, "tasks": [{"name": "x"}, {"name": "y"}], "none": None}
    result = apply_overrides(data, ["a.b=2", "a.c.d=3", "tasks.1.name=z", "a.b=4", "none.x=1"])
    assert result == {"a": {"b": 4, "c": {"d": 3}}, "tasks": [{"name": "x"}, {"name": "z"}], "none": {"x": 1}}
    assert data["a"] == {"b": 1}  # the input is not modified
    with pytest.raises(RecipeError, match="not an index"):
        apply_overrides(data, ["tasks.5.name=z"])
    with pytest.raises(RecipeError, match="a.b is a int"):
        apply_overrides(data, ["a.b.c=1"])
    with pytest.raises(RecipeError, match="expected `dotted.path=value`"):
        parse_override("plan.scoring")


def test_overrides_on_a_recipe_file_are_validated_with_their_path() -> None:
    recipe = load_recipe(CONFIGS / "demo.yaml", ["plan.num_selected=6", "plan.grouping=weight_cluster"])
    assert (recipe.plan.num_selected, recipe.plan.grouping) == (6, "weight_cluster")
    with pytest.raises(RecipeError, match=r"(?s)with overrides.*plan\.num_selected: Input should be greater"):
        load_recipe(CONFIGS / "demo.yaml", ["plan.num_selected=0"])
    with pytest.raises(RecipeError, match="plan.typo: Extra inputs are not permitted"):
        load_recipe(CONFIGS / "demo.yaml", ["plan.typo=1"])


def test_unreadable_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "broken.yaml")


def test_json_schema_covers_every_section() -> None:
    schema = json.loads(recipe_json_schema())
    assert schema == Recipe.model_json_schema()
    assert set(schema["properties"]) == {
        "schema_version", "name", "description", "source", "calibration", "statistics", "plan",
        "distillation", "evaluation", "tracking", "storage",
    }
    assert schema["required"] == ["name", "source"]
    assert schema["additionalProperties"] is False
