"""flows/compare.py end to end on the tiny teacher and its dense twin: three students (converted, d2d,
random_init) over two seeds, the budget check before any training, the records in MLflow and Prefect,
and the CLI refusing a bad comparison recipe. A real Prefect server (the session's), MLflow SQLite and
a local artifact store in a temporary home."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flows.cli import finished_task_runs
from flows.compare import TAG_STUDENT, TAG_STUDENT_KIND, compare, compare_flow, planned_stages
from moe2dense_core.baselines.budget import DEFAULT_PARAM_REL_TOL
from moe2dense_core.errors import BudgetMismatchError
from moe2dense_platform.compare_recipe import (
    CompareRecipe,
    StudentSpec,
    load_compare_recipe,
    parse_compare_recipe,
)
from moe2dense_platform.comparison import FILES
from moe2dense_platform.recipe_io import recipe_to_yaml
from moe2dense_platform.reporting.data import COMPARISON_RESULTS, ComparisonResults
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import TAG_PREFECT_FLOW_RUN, TAG_RECIPE_NAME, TAG_STAGE, tracking_client
from tests.flows.tiny_teacher import PROJECT_ROOT, TINY_TEACHER, TinyTeacher

pytestmark = pytest.mark.slow

STUDENTS = [
    {"name": "do_acp", "kind": "converted", "plan": {"scoring": "do_acp"}},
    {"name": "d2d", "kind": "d2d"},
    {"name": "random", "kind": "random_init"},
]


@pytest.fixture(scope="module")
def dense_twin(tiny_teacher: TinyTeacher, tmp_path_factory) -> Path:
    """The tiny teacher's dense twin: dense Qwen3 of FFN width E·I, same corpus, tokenizer and budget."""
    from moe2dense_core.teacher import TeacherModelConfig
    from moe2dense_platform.corpus import CorpusSpec, write_corpus
    from tasks.teacher import train_or_reuse_teacher

    root = tmp_path_factory.mktemp("dense_twin")
    corpus = write_corpus(
        CorpusSpec(source="files", paths=(tiny_teacher.text,), heldout_fraction=0.2), root / "corpus"
    )
    twin = train_or_reuse_teacher(corpus, TeacherModelConfig(**TINY_TEACHER, kind="dense"), root / "teachers")
    return Path(twin.path)


def comparison_recipe(
    tiny_teacher: TinyTeacher, twin: Path, name: str, students: list[dict]
) -> CompareRecipe:
    """The tiny convert recipe's sections (seconds per stage), the given students, seeds 0 and 1."""
    sections = tiny_teacher.recipe().model_dump(mode="json")
    data = {
        key: sections[key]
        for key in ("source", "calibration", "statistics", "distillation", "evaluation", "storage")
    }
    data.update(
        name=name,
        twin={"model": str(twin)},
        students=students,
        seeds=[0, 1],
        tracking={"experiment": "compare-tests"},
    )
    return parse_compare_recipe(data)


@pytest.fixture(scope="module")
def embedded(prefect_server, tmp_path_factory):
    """A fresh home (local artifact root, MLflow SQLite) and the session's Prefect server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    home = tmp_path_factory.mktemp("compare_home")
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "MOE2DENSE_ARTIFACT_ROOT",
            "MOE2DENSE_MLFLOW_TRACKING_URI",
            "MOE2DENSE_S3_ENDPOINT_URL",
            "MOE2DENSE_MLFLOW_ARTIFACT_LOCATION",
            "MOE2DENSE_SETTINGS_FILE",
        ):
            patch.delenv(name, raising=False)
        patch.setenv("MOE2DENSE_HOME", str(home))
        patch.setenv("MOE2DENSE_PREFECT_API_URL", prefect_server)
        with temporary_settings(
            updates={PREFECT_API_URL: prefect_server, PREFECT_LOCAL_STORAGE_PATH: str(home / "prefect")}
        ):
            yield Settings()


@pytest.fixture(scope="module")
def compared(embedded, tiny_teacher, dense_twin, tmp_path_factory):
    """From a recipe file, as the study calls it; the teacher runs once (its top-k logits cached) for the
    3 × 2 distillations."""
    path = tmp_path_factory.mktemp("compare_recipe") / "compare.yaml"
    path.write_text(recipe_to_yaml(comparison_recipe(tiny_teacher, dense_twin, "compare-three", STUDENTS)))
    finished: list[str] = []
    with finished_task_runs(finished.append):
        result = compare(str(path), ["distillation.teacher=cached"])
    return load_compare_recipe(path, ["distillation.teacher=cached"]), result, finished


def nested_runs(client, run_id: str) -> list:
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")


def test_every_student_is_distilled_per_seed_on_one_budget_and_evaluated_against_the_teacher(compared):
    recipe, result, finished = compared
    students = {s.name: s for s in result.comparison.students}
    assert list(students) == ["do_acp", "d2d", "random"]
    reference = students["do_acp"].num_params
    budget = recipe.distillation.train.max_steps * recipe.distillation.train.micro_batch_size * 64
    for student in students.values():
        assert abs(student.num_params - reference) <= DEFAULT_PARAM_REL_TOL * reference, student.name
        assert [s.seed for s in student.seeds] == [0, 1]
        assert {s.tokens_seen for s in student.seeds} == {student.train_tokens} == {budget}
        for outcome in student.seeds:
            assert math.isfinite(outcome.perplexity) and outcome.perplexity > 1
            assert outcome.kl_to_teacher is not None and outcome.kl_to_teacher >= 0
    # a converted or pruned student is built once; a random one is initialised by each seed
    assert len({s.built_uri for s in students["do_acp"].seeds}) == 1
    assert len({s.built_uri for s in students["d2d"].seeds}) == 1
    assert len({s.built_uri for s in students["random"].seeds}) == 2
    assert len({s.distilled_uri for s in students["do_acp"].seeds}) == 2  # the seed orders the batches
    assert len(finished) == len(planned_stages(recipe))


def test_the_parent_run_nests_one_run_per_student_and_holds_the_table(compared, embedded):
    _, result, _ = compared
    client = tracking_client(embedded)
    children = nested_runs(client, result.mlflow_run_id)
    student_runs = {run.data.tags[TAG_STUDENT]: run for run in children if TAG_STUDENT in run.data.tags}
    assert set(student_runs) == {"do_acp", "d2d", "random"}
    assert {run.data.tags[TAG_STUDENT_KIND] for run in student_runs.values()} == {
        "converted",
        "d2d",
        "random_init",
    }
    shared = sorted(run.data.tags[TAG_STAGE] for run in children if TAG_STUDENT not in run.data.tags)
    assert shared == ["calibrate", "evaluate-teacher", "source", "teacher_logits"]  # each once
    stages = {
        name: sorted(r.data.tags[TAG_STAGE] for r in nested_runs(client, run.info.run_id))
        for name, run in student_runs.items()
    }
    per_seed = ["distill", "distill", "evaluate-{}-seed0", "evaluate-{}-seed1"]
    assert stages["do_acp"] == sorted(["assemble", "plan", *(s.format("do_acp") for s in per_seed)])
    assert stages["d2d"] == sorted(["baseline-d2d", *(s.format("d2d") for s in per_seed)])
    assert stages["random"] == sorted(["baseline-random_init"] * 2 + [s.format("random") for s in per_seed])

    artifacts = {Path(a.path).name for a in client.list_artifacts(result.mlflow_run_id, "comparison")}
    assert artifacts == set(FILES)
    document = json.loads(
        Path(client.download_artifacts(result.mlflow_run_id, "comparison/comparison.json")).read_text()
    )
    assert document["schema_version"] == 1
    assert [row["model"] for row in document["table"]] == ["teacher", "do_acp", "d2d", "random"]
    assert document["table"][1]["perplexity_std"] is not None  # two seeds: an error bar
    markdown = Path(client.download_artifacts(result.mlflow_run_id, "comparison/comparison.md")).read_text()
    report = Path(client.download_artifacts(result.mlflow_run_id, COMPARISON_RESULTS)).read_text()
    models = ComparisonResults.model_validate_json(report).models  # what `moe2dense report RUN_ID` reads
    assert [(m.label, m.seed) for m in models][:3] == [("teacher", None), ("do_acp", 0), ("do_acp", 1)]
    assert len(models) == 1 + 3 * 2 and models[1].plan_run_id is not None
    assert "| d2d | d2d |" in markdown


def test_the_flow_run_has_the_comparison_table_artifact(compared, embedded):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    _, result, _ = compared
    flow_run_id = tracking_client(embedded).get_run(result.mlflow_run_id).data.tags[TAG_PREFECT_FLOW_RUN]
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["comparison"]),
            )
        )
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [row["model"] for row in rows] == ["teacher", "do_acp", "d2d", "random"]


def test_unequal_parameter_counts_are_refused_before_any_training_naming_the_student(
    embedded, tiny_teacher, dense_twin
):
    """k' = 1 dense block instead of the teacher's top-k = 2: half the FFN, far outside 1%."""
    narrow = {"name": "narrow", "kind": "converted", "plan": {"scoring": "do_acp", "num_groups": 1}}
    recipe = comparison_recipe(tiny_teacher, dense_twin, "compare-unequal", [STUDENTS[0], narrow])
    with pytest.raises(BudgetMismatchError, match=r"for \['narrow'\]"):
        compare_flow(recipe)
    client = tracking_client(embedded)
    experiment = client.get_experiment_by_name("compare-tests")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{TAG_RECIPE_NAME}` = 'compare-unequal'")
    stages = {run.data.tags.get(TAG_STAGE) for run in runs}
    assert {"assemble", "student-narrow"} <= stages and "distill" not in stages
    (parent,) = [run for run in runs if TAG_STAGE not in run.data.tags]
    assert parent.info.status == "FAILED"


def test_the_cli_refuses_a_bad_comparison_recipe_naming_the_field(tmp_path):
    command = [
        sys.executable,
        "-c",
        "from flows.cli import app; app()",
        "compare",
        "configs/compare.example.yaml",
        "students.1.width_multiple=0",
        "--home",
        str(tmp_path),
    ]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "students.1.width_multiple: Input should be greater than or equal to 1" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_a_random_ffn_student_carries_the_teachers_attention_and_a_seeded_random_ffn(
    tiny_teacher, dense_twin, tmp_path
):
    """build_baseline (the stage's work) with the twin's architecture as the reference: every non-FFN
    tensor is the MoE teacher's, the FFN is a function of the seed."""
    from moe2dense_core.io.reader import CheckpointReader
    from tasks.baseline_student import build_baseline
    from tasks.source import resolve_source

    source = resolve_source(tiny_teacher.recipe().source)
    spec = StudentSpec(name="rffn", kind="random_ffn")
    build = lambda seed: build_baseline(spec, source, dense_twin, None, None, seed, tmp_path)[0]  # noqa: E731
    first, again, other = build(0), build(0), build(1)
    with CheckpointReader(tiny_teacher.path) as teacher:
        for name, tensor in first.state_dict().items():
            if ".mlp." not in name and name in teacher:
                assert torch.equal(tensor, next(teacher.iter_tensors([name]))[1].float()), name
    ffn = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(first.state_dict()[ffn], again.state_dict()[ffn])
    assert not torch.equal(first.state_dict()[ffn], other.state_dict()[ffn])


def test_a_twin_with_another_vocabulary_is_refused_before_pruning(tiny_teacher, dense_twin, tmp_path):
    from moe2dense_core.errors import CheckpointError
    from moe2dense_platform.recipe import SourceConfig
    from tasks.baseline_student import twin_folder

    config = json.loads((dense_twin / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"vocab_size": config["vocab_size"] + 64}))
    with pytest.raises(CheckpointError, match=r"vocab_size 364, the teacher's is 300"):
        twin_folder(SourceConfig(model=str(tmp_path)), str(tiny_teacher.path))
    assert twin_folder(SourceConfig(model=str(dense_twin)), str(tiny_teacher.path)) == dense_twin
