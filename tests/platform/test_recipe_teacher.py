"""check_recipe_fits_teacher: what only the teacher's config.json can refuse, refused before calibration.

Teachers here are real config.json files: a scaled-down Qwen3-MoE written to disk, and the released
DeepSeek-R1 config (group-limited routing) from ../shared/data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from moe2dense_platform.recipe import RecipeError, parse_recipe
from moe2dense_platform.recipe_teacher import check_recipe_fits_teacher
from tests.fixtures.synthetic_stats import qwen3_moe_config


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    """A local teacher folder whose config.json has E = 8 experts, top-k = 2."""
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(qwen3_moe_config(num_experts=8, top_k=2)))
    return folder


def recipe_for(model: str, **sections):
    return parse_recipe({"name": "t", "source": {"model": model}, **sections})


def distill(**train) -> dict:
    return {"train": {"max_steps": 2, **train}}


def test_a_recipe_that_fits_passes(teacher: Path) -> None:
    check_recipe_fits_teacher(recipe_for(str(teacher)))
    check_recipe_fits_teacher(
        recipe_for(str(teacher), plan={"num_selected": 8, "grouping": "output_cluster"})
    )
    check_recipe_fits_teacher(recipe_for(str(teacher), distillation=distill(teacher_top_k=8)))


@pytest.mark.parametrize(
    "sections, line",
    [
        ({"plan": {"num_selected": 9, "grouping": "output_cluster"}}, "plan.num_selected: K = 9 > E = 8"),
        (
            {"plan": {"num_selected": 4}},
            "plan.num_selected: grouping 'prune' keeps each expert unmerged, so K must equal k = 2",
        ),
        (
            {"plan": {"num_groups": 9, "num_selected": 9, "grouping": "output_cluster"}},
            "plan.num_groups: 9 dense blocks",
        ),
        (
            {"distillation": distill(teacher_top_k=9)},
            "distillation.train.teacher_top_k: teacher_top_k=9 must lie in [1, E=8]",
        ),
    ],
)
def test_what_the_teacher_cannot_run_is_refused_naming_field_and_files(
    teacher: Path, sections: dict, line: str
) -> None:
    with pytest.raises(RecipeError) as error:
        check_recipe_fits_teacher(recipe_for(str(teacher), **sections), origin="my.yaml")
    header, detail = str(error.value).splitlines()
    assert header == f"recipe my.yaml does not fit the teacher {teacher / 'config.json'} (E = 8, top-k = 2):"
    assert detail.strip().startswith(line)


def test_a_disabled_distillation_is_not_checked(teacher: Path) -> None:
    distillation = {**distill(teacher_top_k=9), "enabled": False}
    check_recipe_fits_teacher(recipe_for(str(teacher), distillation=distillation))


def test_group_limited_routing_bounds_the_expanded_top_k(shared_data: Path, tmp_path: Path) -> None:
    """DeepSeek-R1: E = 256, n_group = 8, topk_group = 4, so at most 4 × 32 = 128 experts are reachable."""
    folder = tmp_path / "deepseek-r1"
    shutil.copytree(shared_data / "real_moe_configs" / "deepseek-ai__DeepSeek-R1", folder)
    check_recipe_fits_teacher(recipe_for(str(folder), distillation=distill(teacher_top_k=128)))
    with pytest.raises(
        RecipeError, match=r"distillation.train.teacher_top_k: teacher_top_k=129 exceeds what group-limited"
    ):
        check_recipe_fits_teacher(recipe_for(str(folder), distillation=distill(teacher_top_k=129)))


def test_an_unsupported_or_unreadable_config_is_named(teacher: Path) -> None:
    config = teacher / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with pytest.raises(
        RecipeError, match=rf"teacher {config}: config.model_type: unknown MoE family 'llama'"
    ):
        check_recipe_fits_teacher(recipe_for(str(teacher)))
    config.write_text("{not json")
    with pytest.raises(RecipeError, match=rf"teacher {config}: not a readable JSON config"):
        check_recipe_fits_teacher(recipe_for(str(teacher)))


def test_only_a_local_config_is_read_unless_a_folder_is_given(teacher: Path, tmp_path: Path) -> None:
    """Hub ids and folders without config.json are the source stage's; a given folder must have one."""
    impossible = {"plan": {"num_selected": 99, "grouping": "output_cluster"}}
    check_recipe_fits_teacher(
        parse_recipe({"name": "t", "source": {"model": "org/name", "revision": "main"}, **impossible})
    )
    check_recipe_fits_teacher(recipe_for(str(tmp_path / "empty-folder"), **impossible))
    with pytest.raises(RecipeError, match="plan.num_selected: K = 99 > E = 8"):
        check_recipe_fits_teacher(
            parse_recipe({"name": "t", "source": {"model": "org/name", "revision": "main"}, **impossible}),
            teacher,
        )
    with pytest.raises(RecipeError, match="not a readable JSON config"):
        check_recipe_fits_teacher(recipe_for(str(teacher)), tmp_path / "empty-folder")
