"""moe2dense_platform/compare_recipe.py: the comparison recipe reads strictly (every bad input named by
its dotted field path), reuses the convert recipe's sections and checks, and loads no Prefect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe2dense_platform.compare_recipe import (
    CompareRecipe,
    check_compare_fits_teacher,
    compare_recipe_json_schema,
    load_compare_recipe,
    parse_compare_recipe,
)
from moe2dense_platform.recipe import DistillationConfig, Recipe, RecipeError, SourceConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "compare.example.yaml"


def minimal() -> dict:
    return {
        "name": "cmp",
        "source": {"model": "org/moe", "revision": "main"},
        "distillation": {"train": {"max_steps": 2}},
        "students": [
            {"name": "ours", "kind": "converted", "plan": {"scoring": "sf"}},
            {"name": "rand", "kind": "random_init"},
        ],
    }


def refusal(data: dict) -> str:
    with pytest.raises(RecipeError) as caught:
        parse_compare_recipe(data)
    return str(caught.value)


def test_the_example_names_the_papers_students_and_reuses_the_convert_sections():
    recipe = load_compare_recipe(EXAMPLE)
    assert [(s.name, s.kind) for s in recipe.students] == [
        ("do_acp", "converted"),
        ("d2d", "d2d"),
        ("random_ffn", "random_ffn"),
        ("random_init", "random_init"),
    ]
    assert recipe.reference.name == "do_acp" and recipe.seeds == [0, 1, 2]
    assert isinstance(recipe.source, SourceConfig) and isinstance(recipe.distillation, DistillationConfig)
    conversion = recipe.conversion_recipe(recipe.students[0])
    assert isinstance(conversion, Recipe) and conversion.plan == recipe.students[0].plan
    assert conversion.name == "qwen3-30b-a3b-vs-baselines-do_acp"


def test_each_seed_gets_the_one_distillation_with_its_seed():
    recipe = parse_compare_recipe(minimal() | {"seeds": [3, 5]})
    first, second = (recipe.distillation_for(seed) for seed in recipe.seeds)
    assert (first.train.seed, second.train.seed) == (3, 5)
    assert first.model_copy(update={"train": second.train}) == second  # nothing else differs


def test_overrides_reach_into_the_student_list_and_errors_name_file_and_field(tmp_path):
    recipe = load_compare_recipe(EXAMPLE, ["students.0.plan.num_selected=16", "seeds=[7]"])
    assert recipe.students[0].plan.num_selected == 16 and recipe.seeds == [7]
    with pytest.raises(
        RecipeError, match=r"compare.example.yaml with overrides .*\n  students\.1\.hidden_size: "
    ):
        load_compare_recipe(EXAMPLE, ["students.1.hidden_size=0"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["students"][1].update(widht_multiple=2),
            "students.1.widht_multiple: unknown key (allowed: ",
        ),
        (
            lambda d: d["students"][1].update(kind="pruned"),
            "students.1.kind: Input should be 'converted', 'd2d', ",
        ),
        (lambda d: d["students"][0].pop("plan"), "students.0.plan: a converted student needs its plan"),
        (lambda d: d["students"][1].update(plan={}), "students.1.plan: only a converted student has a plan"),
        (
            lambda d: d["students"][1].update(hidden_size=64),
            "students.1.hidden_size: an option of d2d students",
        ),
        (
            lambda d: d["students"][0]["plan"].update(num_selected=1, num_groups=2),
            "students.0.plan.num_selected: K = 1",
        ),
        (lambda d: d["students"][1].update(name="ours"), "students: names must be unique; ['ours']"),
        (lambda d: d["students"][1].update(name="no spaces"), "students.1.name: String should match pattern"),
        (lambda d: d["students"].pop(), "students: List should have at least 2 items"),
        (
            lambda d: d["students"][0].update(kind="random_ffn", plan=None),
            "students: the baselines take the size",
        ),
        (
            lambda d: d["students"].append({"name": "d2d", "kind": "d2d"}),
            "twin: a d2d student prunes the dense twin",
        ),
        (lambda d: d.update(seeds=[]), "seeds: List should have at least 1 item"),
        (lambda d: d.update(seeds=[1, 1]), "seeds: each seed once"),
        (lambda d: d.update(seeds=[True]), "seeds.0: Input should be a number, not a boolean"),
        (lambda d: d["distillation"].update(enabled=False), "distillation.enabled: must be true"),
        (lambda d: d["distillation"]["train"].update(seed=4), "distillation.train: seed is set per run"),
        (
            lambda d: d["distillation"]["train"].update(lr=float("inf")),
            "distillation.train.lr: Input should be a finite",
        ),
        (lambda d: d.pop("distillation"), "distillation: Field required"),
        (lambda d: d.update(twin={"model": "org/dense"}), "twin: hub model 'org/dense' needs a revision"),
    ],
)
def test_bad_input_is_refused_naming_the_field(change, expected):
    data = minimal()
    change(data)
    message = refusal(data)
    assert message.startswith("invalid comparison recipe <value>:\n")
    assert expected in message


def test_a_converted_students_plan_is_checked_against_the_teachers_config(tmp_path):
    """The convert recipe's check (recipe_teacher.py), named by the student: K = 9 > E = 8."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3_moe",
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "hidden_size": 32,
                "moe_intermediate_size": 16,
                "num_hidden_layers": 2,
                "vocab_size": 300,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "head_dim": 16,
            }
        )
    )
    data = minimal() | {"source": {"model": str(tmp_path)}}
    data["students"][0]["plan"]["num_selected"] = 9
    with pytest.raises(RecipeError, match=r"^students\.0 \(ours\): .*\n  plan\.num_selected: "):
        check_compare_fits_teacher(parse_compare_recipe(data))
    data["students"][0]["plan"].update(num_selected=4, grouping="output_cluster")
    check_compare_fits_teacher(parse_compare_recipe(data))


def test_the_json_schema_is_the_ui_form_of_a_strict_recipe():
    schema = json.loads(compare_recipe_json_schema())
    assert set(schema["required"]) == {"name", "source", "students", "distillation"}
    assert schema["properties"]["students"]["minItems"] == 2
    assert schema["additionalProperties"] is False
    student = schema["$defs"]["StudentSpec"]
    assert student["additionalProperties"] is False and set(student["required"]) == {"name", "kind"}
    assert CompareRecipe.model_validate(parse_compare_recipe(minimal()).model_dump(mode="json"))  # round trip


def test_the_comparison_recipe_loads_no_orchestration_package():
    probe = (
        "import json, sys\n"
        "import moe2dense_platform.compare_recipe\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'mlflow', 'boto3'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
