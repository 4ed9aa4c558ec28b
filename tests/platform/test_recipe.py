"""Recipes: the shipped YAML files, strict validation with field paths, dotted overrides, schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from moe2dense_core.shared_data import shared_data_dir
from moe2dense_platform.recipe import Recipe, RecipeError, parse_recipe
from moe2dense_platform.recipe_io import (
    _load_yaml,
    apply_overrides,
    load_recipe,
    parse_override,
    read_recipe_data,
    recipe_json_schema,
    recipe_to_yaml,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# convert recipes only: not watch files, comparison recipes (tests/platform/test_compare_recipe.py) nor the
# study's settings (configs/study/, tests/flows/test_study_smoke.py)
SHIPPED = sorted(
    p
    for p in CONFIGS.rglob("*.yaml")
    if not p.name.startswith(("watch.", "compare.")) and p.parent.name != "study"
)
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
        "demo.yaml",
        "examples/mixtral_8x7b.yaml",
        "examples/olmoe_1b_7b.yaml",
        "paper/deepseek_v2_lite.yaml",
        "paper/gpt_oss_20b.yaml",
        "paper/qwen3_30b_a3b.yaml",
    ]


@pytest.mark.parametrize(
    "file, model, tokens",
    [
        ("qwen3_30b_a3b.yaml", "Qwen/Qwen3-30B-A3B", 4.0e9),
        ("deepseek_v2_lite.yaml", "deepseek-ai/DeepSeek-V2-Lite", 0.3e9),
        ("gpt_oss_20b.yaml", "openai/gpt-oss-20b", 0.3e9),
    ],
)
def test_paper_recipes_match_method_md(file: str, model: str, tokens: float) -> None:
    """DO-ACP, K = k, prune, uniform; the paper's KD token budget (±2%) on 8 GPUs; its task suite."""
    recipe = load_recipe(CONFIGS / "paper" / file)
    assert recipe.source.model == model and recipe.source.revision
    plan = recipe.plan
    assert (str(plan.scoring), plan.num_selected, str(plan.grouping), str(plan.scaling)) == (
        "do_acp",
        None,
        "prune",
        "uniform",
    )
    train = recipe.distillation.train
    assert recipe.distillation.world_size == 8  # the paper's 8 GPUs
    budget = train.max_steps * recipe.distillation.tokens_per_step(recipe.distillation.world_size)
    assert budget == pytest.approx(tokens, rel=0.02)
    assert train.loss == "forward_kl"
    assert [(t.name, t.num_fewshot) for t in recipe.evaluation.downstream.tasks] == PAPER_TASKS


PUBLISHED_PINS = {
    # recipe: (hub commit, shared-data file published for that commit, its sha256 as published)
    "qwen3_30b_a3b.yaml": (
        "ad44e777bcd18fa416d9da3bd8f70d33ebb85d39",
        "real_moe_configs/Qwen__Qwen3-30B-A3B/config.json",
        "2850ddb3bf7aecad20b611e2d44f3077fc8193f4827c93beddd4c02ad63c2297",
    ),
    "gpt_oss_20b.yaml": (
        "6cee5e81ee83917806bbde320786a8fb61efebee",
        "real_moe_configs/openai__gpt-oss-20b/model.safetensors.index.json",
        "0e085b977c4c9942f85938828e8c989ed7d5cdabf852e4da6a67c116cd502cd1",
    ),
    "deepseek_v2_lite.yaml": ("604d5664dddd88a0433dbae533b7fe9472482de0", None, None),
}


@pytest.mark.parametrize("file", sorted(PUBLISHED_PINS))
def test_paper_recipes_pin_the_published_commit(file: str) -> None:
    """Every paper recipe pins a full commit sha; where the shared data holds a file published for that
    commit, its bytes are the published ones (README, "Paper recipes are pinned")."""
    commit, evidence, sha256 = PUBLISHED_PINS[file]
    assert load_recipe(CONFIGS / "paper" / file).source.revision == commit
    if evidence is None:
        return
    path = shared_data_dir() / evidence
    if not path.is_file():
        pytest.skip(f"{path} absent: set MOE2DENSE_SHARED_DATA to the shared data folder")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def test_errors_name_the_field_path_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\nsource: {model: ./t}\ncalibration: {num_tokens: -5, seq_len: 16}\n"
        "plan: {scoring: magic}\nstatistics: {mode: streaming, colour: red}\n"
    )
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert str(path) in message
    assert "calibration.num_tokens: Input should be greater than 0 (got -5)" in message
    assert "plan.scoring:" in message and "'magic'" in message
    assert "statistics.mode:" in message
    assert (
        "statistics.colour: unknown key (allowed: mode, dtype, device, max_chunk_bytes, max_hidden_bytes, "
        "max_block_bytes)" in message
    )


@pytest.mark.parametrize(
    "source, expected",
    [
        ({"model": "org/name"}, "needs a revision"),
        ({"model": "not a hub id"}, "neither an existing local path nor a hub id"),
        ({"model": "./t", "trust_remote_code": True}, "source.trust_remote_code"),
        ({"model": "./t", "allow_pickle": True}, "source.allow_pickle"),
    ],
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
    [
        ("plan.num_selected=8", ["plan", "num_selected"], 8),
        ("distillation.train.lr=1e-4", ["distillation", "train", "lr"], 1e-4),
        ("plan.router_mass=true", ["plan", "router_mass"], True),
        ("source.revision=null", ["source", "revision"], None),
        ("name=my-run", ["name"], "my-run"),
        ("calibration.data.paths=[a.txt, b.txt]", ["calibration", "data", "paths"], ["a.txt", "b.txt"]),
        ("description=a=b", ["description"], "a=b"),
    ],
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
    with pytest.raises(RecipeError, match=r"a.b is a int \(1\), not a mapping"):
        apply_overrides(data, ["a.b.c=1"])
    with pytest.raises(RecipeError, match="expected `dotted.path=value`"):
        parse_override("plan.scoring")


def test_overrides_on_a_recipe_file_are_validated_with_their_path() -> None:
    recipe = load_recipe(CONFIGS / "demo.yaml", ["plan.num_selected=6", "plan.grouping=weight_cluster"])
    assert (recipe.plan.num_selected, recipe.plan.grouping.name) == (6, "weight_cluster")
    with pytest.raises(RecipeError, match=r"(?s)with overrides.*plan\.num_selected: Input should be greater"):
        load_recipe(CONFIGS / "demo.yaml", ["plan.num_selected=0"])
    with pytest.raises(
        RecipeError, match=r"plan.scorin: unknown key \(allowed: scoring, .*\); did you mean 'scoring'\?"
    ):
        load_recipe(CONFIGS / "demo.yaml", ["plan.scorin=sf"])


def test_unreadable_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match=f"recipe file {tmp_path} is not a file"):
        load_recipe(tmp_path)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="top level must be a mapping, got list"):
        load_recipe(tmp_path / "list.yaml")
    for empty in ("", "# only a comment\n", "---\n"):
        (tmp_path / "empty.yaml").write_text(empty)
        with pytest.raises(
            RecipeError, match=r"empty.yaml is empty: a recipe needs at least `name` and `source`"
        ):
            load_recipe(tmp_path / "empty.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"name: t\nsource: {model: ./t}\ndescription: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"latin1.yaml, line 3: not UTF-8 text"):
        load_recipe(tmp_path / "latin1.yaml")


@pytest.mark.parametrize(
    "text, where, problem",
    [
        (
            "name: t\nsource:\n  model: ./t\n   extra: 1\n",
            "line 4, column 9",
            "mapping values are not allowed here",
        ),
        (
            "name: t\nsource:\n\tmodel: ./t\n",
            "line 3, column 1",
            "found character '\\t' that cannot start any token",
        ),
        ("name: [unclosed\n", "line 2, column 1", "(while parsing a flow sequence at line 1)"),
    ],
)
def test_yaml_errors_name_the_file_line_and_column(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    first = str(error.value).splitlines()[0]
    assert first.startswith(f"recipe file {path}: not valid YAML: {where}: ")
    assert problem in first
    assert "<unicode string>" not in str(error.value)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: `name: a / name: b` would silently run `b`."""
    path = tmp_path / "twice.yaml"
    path.write_text("name: a\nsource: {model: ./t}\nname: b\n")
    with pytest.raises(
        RecipeError, match=r"line 3, column 1: duplicate key 'name' \(first given on line 1\)"
    ):
        load_recipe(path)
    path.write_text("name: a\nsource: {model: ./t}\nplan:\n  scoring: sf\n  scoring: do_acp\n")
    with pytest.raises(
        RecipeError, match=r"line 5, column 3: duplicate key 'scoring' \(first given on line 4\)"
    ):
        load_recipe(path)
    with pytest.raises(RecipeError, match="duplicate key 'a'"):
        parse_override("plan={a: 1, a: 2}")
    path.write_text("name: a\nsource: &s {model: ./t, revision: null}\nplan: {scoring: sf}\n")
    assert load_recipe(path).source.model == "./t"  # anchors still work
    path.write_text("name: a\nbase: &b {model: ./t, revision: x}\n")
    with pytest.raises(
        RecipeError, match="base: unknown key"
    ):  # `<<` may override merged keys, as YAML intends
        parse_recipe({**read_recipe_data(path), "source": {"model": "./t"}}, "x")
    assert _load_yaml("a: &b {m: 1, n: 2}\nc: {<<: *b, m: 3}\n")["c"] == {"m": 3, "n": 2}


def test_yaml_out_quotes_strings_that_read_back_as_floats(tmp_path: Path) -> None:
    """`1e-4` is a float in the recipe dialect (YAML 1.2 rule): a string `1e-4` must be written quoted.
    A NEL (U+0085) in PyYAML's single-quoted style came back as a space."""
    tracking = {"run_name": "2E5", "experiment": "+1e3", "registered_model": "a\x85b"}
    recipe = parse_recipe(minimal(description="1e-4", tracking=tracking))
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe_to_yaml(recipe))
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(
    "sections, line",
    [
        (
            {"calibration": {"num_tokens": True}},
            "calibration.num_tokens: Input should be a number, not a boolean (got True)",
        ),
        (
            {"distillation": {"train": {"max_steps": True}}},
            "distillation.train.max_steps: Input should be a number, not a boolean (got True)",
        ),
        (
            {"distillation": {"train": {"max_steps": 2, "adam_betas": [0.9, False]}}},
            "distillation.train.adam_betas.1: Input should be a number, not a boolean (got False)",
        ),
        (
            {"distillation": {"train": {"max_steps": 2, "lr": float("inf")}}},
            "distillation.train.lr: Input should be a finite number (got inf)",
        ),
        (
            {"distillation": {"train": {"max_steps": 2, "weight_decay": "inf"}}},
            "distillation.train.weight_decay: Input should be a finite number (got 'inf')",
        ),
        (
            {"distillation": {"train": {"max_steps": 2, "lr": float("nan")}}},
            "distillation.train.lr: Input should be a finite number (got nan)",
        ),
        (
            {"plan": {"scoring": {"name": "do_acp", "ridge": float("inf")}}},
            "plan.scoring.ridge: Input should be a finite number (got inf)",
        ),
        (
            {"plan": {"scoring": {"name": "do_acp", "exhaustive_limit": True}}},
            "plan.scoring.exhaustive_limit: Input should be a valid integer (got True)",
        ),
    ],
)
def test_lax_numbers_are_refused(sections: dict, line: str) -> None:
    """pydantic reads `true` as 1 and accepts ±inf where only a lower bound is set; a recipe does not."""
    with pytest.raises(RecipeError) as error:
        parse_recipe(minimal(**sections))
    assert f"  {line}" in str(error.value).splitlines()
    assert len(str(error.value).splitlines()) == 2  # one error, not also the section check it would trip


def test_lax_number_errors_come_with_the_other_errors() -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe(minimal(calibration={"num_tokens": True}, plan={"scoring": "magic"}))
    lines = str(error.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["calibration.num_tokens", "plan.scoring"]


@pytest.mark.parametrize(
    "sections, path",
    [
        ({"calibration": {"seq_len": 1, "num_tokens": 8}}, "calibration.seq_len"),
        ({"distillation": {"seq_len": 1, "train": {"max_steps": 1}}}, "distillation.seq_len"),
        ({"evaluation": {"seq_len": 1}}, "evaluation.seq_len"),
        ({"evaluation": {"perplexity_tokens": 1}}, "evaluation.perplexity_tokens"),
    ],
)
def test_token_counts_need_two_tokens(sections: dict, path: str) -> None:
    """One token predicts nothing: the data stage would refuse seq_len=1 only when it runs."""
    with pytest.raises(RecipeError, match=f"{path}: Input should be greater than or equal to 2 \\(got 1\\)"):
        parse_recipe(minimal(**sections))


@pytest.mark.parametrize(
    "plan, line",
    [
        (
            {"num_selected": 2, "num_groups": 4, "grouping": "output_cluster"},
            "plan.num_selected: K = 2 < k = 4",
        ),
        (
            {"num_selected": 8, "num_groups": 4},
            "plan.num_selected: grouping 'prune' keeps each expert unmerged",
        ),
        (
            {"num_selected": 8, "num_groups": 4, "grouping": {"name": "prune"}},
            "plan.num_selected: grouping 'prune'",
        ),
    ],
)
def test_plan_sizes_that_no_teacher_allows_are_refused_at_load(plan: dict, line: str) -> None:
    """Known from the recipe alone: refused before the teacher is even resolved."""
    with pytest.raises(RecipeError) as error:
        parse_recipe(minimal(plan=plan))
    assert any(text.strip().startswith(line) for text in str(error.value).splitlines())


def test_long_bad_values_are_cut() -> None:
    with pytest.raises(RecipeError) as error:
        parse_recipe(minimal(plan={"scoring": "x" * 1000}))
    line = str(error.value).splitlines()[1]
    assert len(line) < 300 and line.endswith("…)")


def test_override_errors_name_the_override() -> None:
    with pytest.raises(
        RecipeError, match=r"override 'plan=\{a: \[1': the value is not valid YAML: line 1, column"
    ):
        parse_override("plan={a: [1")


def test_json_schema_covers_every_section() -> None:
    schema = json.loads(recipe_json_schema())
    assert schema == Recipe.model_json_schema()
    assert set(schema["properties"]) == {
        "schema_version",
        "name",
        "description",
        "source",
        "calibration",
        "statistics",
        "plan",
        "distillation",
        "evaluation",
        "tracking",
        "storage",
    }
    assert schema["required"] == ["name", "source"]
    assert schema["additionalProperties"] is False
