"""`moe2dense report RUN_ID` on real runs (issue 11): the tiny teacher converted and swept on a real Prefect
server, a local artifact root and an MLflow SQLite file; the report of a cached re-run, of the sweep and
of a comparison (its documented results artifact), each checked against the flow's own results, and the
convert flow's report stage drawn by the same renderer."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.convert import convert_flow
from flows.sweep import SweepGrid, SweepRecipe, sweep_flow
from moe2dense_core.plan import ConversionPlan
from moe2dense_platform.reporting.data import COMPARISON_RESULTS, ComparedModel, ComparisonResults
from moe2dense_platform.settings import Settings
from moe2dense_platform.storage import open_artifact_store
from moe2dense_platform.tracking import TAG_FLOW, TAG_RECIPE_NAME, tracking_client
from tests.platform.report_checks import check_report_folder, figure, kept_and_groups

DRAWN_FOR_A_CONVERSION = ["kept-experts.png", "scores.png", "distillation.png"]
DISTILL_STEPS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def runs(prefect_server, tiny_teacher, tmp_path_factory):
    """A conversion (distilled, every step logged) and a 2 scorers × 2 K sweep of the same recipe, on a
    fresh home: local artifact root, MLflow SQLite, the real Prefect server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    root = tmp_path_factory.mktemp("report_cli")
    with pytest.MonkeyPatch.context() as patch:
        for name in (
            "MOE2DENSE_S3_ENDPOINT_URL",
            "MOE2DENSE_MLFLOW_ARTIFACT_LOCATION",
            "MOE2DENSE_SETTINGS_FILE",
        ):
            patch.delenv(name, raising=False)
        patch.setenv("MOE2DENSE_HOME", str(root / "home"))
        patch.setenv("MOE2DENSE_ARTIFACT_ROOT", str(root / "store"))
        patch.setenv("MOE2DENSE_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'home' / 'mlflow.db'}")
        patch.setenv("MOE2DENSE_PREFECT_API_URL", prefect_server)
        with temporary_settings(
            updates={PREFECT_API_URL: prefect_server, PREFECT_LOCAL_STORAGE_PATH: str(root / "prefect")}
        ):
            recipe = tiny_teacher.recipe("name=report-it", "distillation.train.log_every=1")
            converted = convert_flow(recipe)
            grid = SweepGrid(scorers=("sf", "do_acp"), num_selected=(None, 3), groupings=("output_cluster",))
            swept = sweep_flow(SweepRecipe(recipe=recipe, grid=grid, distill_best=1))
            yield recipe, converted, swept


def report(*args: str) -> str:
    shown = CliRunner().invoke(app, ["report", *args])
    assert shown.exit_code == 0, shown.output
    return shown.output


def assert_kept_map_is_the_plan(document: dict, kept_experts: dict[int, list[int]]) -> None:
    (matrix,) = figure(document, "kept-experts.png")["data"].values()
    kept, _ = kept_and_groups(matrix)
    assert kept == [sorted(kept_experts[layer]) for layer in sorted(kept_experts)]


def test_the_report_stage_draws_with_the_same_renderer(runs):
    _, converted, _ = runs
    store = open_artifact_store(Settings())
    folder = store.fetch(store.ref_from_uri(converted.report_uri))
    document = check_report_folder(folder)
    assert [f["file"] for f in document["figures"]] == DRAWN_FOR_A_CONVERSION
    assert_kept_map_is_the_plan(document, converted.plan.kept_experts)
    assert {c["metric"]: c["steps"] for c in document["data"]["curves"]} == {
        "loss": DISTILL_STEPS,
        "kl": DISTILL_STEPS,
    }


def test_the_report_of_a_cached_rerun_draws_the_conversion_and_lands_on_its_run(runs):
    recipe, first, _ = runs
    again = convert_flow(recipe)  # every stage cached: the parent links the runs that made the results
    output = report(again.mlflow_run_id)
    folder = Settings().home / "reports" / again.mlflow_run_id
    assert f"report: {folder / 'index.html'}" in output.replace("\n", "")
    document = check_report_folder(folder)
    assert [f["file"] for f in document["figures"]] == DRAWN_FOR_A_CONVERSION
    assert_kept_map_is_the_plan(document, first.plan.kept_experts)
    (drawn_plan,) = document["data"]["plans"]
    assert ConversionPlan.model_validate(drawn_plan["plan"]).digest() == first.plan.plan_digest
    rows = {row["label"]: row["perplexity"] for row in document["data"]["evaluations"]}
    assert rows == {e.label: pytest.approx(e.perplexity) for e in first.evaluations}
    assert list(rows) == ["teacher", "assembled", "distilled"]
    assert {(c["label"], c["metric"]) for c in document["data"]["curves"]} == {
        ("distill", "loss"),
        ("distill", "kl"),
    }

    client = tracking_client(Settings())
    logged = {Path(a.path).name for a in client.list_artifacts(again.mlflow_run_id, "report")}
    assert logged == {p.name for p in folder.iterdir()}
    copy = Path(client.download_artifacts(again.mlflow_run_id, "report", str(folder.parent / "from-mlflow")))
    assert check_report_folder(copy) == document


def test_the_report_of_a_sweep_draws_its_grid_plans_and_distillation(runs, tmp_path):
    _, _, swept = runs
    report(swept.mlflow_run_id, "--out", str(tmp_path / "sweep"))
    document = check_report_folder(tmp_path / "sweep")
    assert [f["file"] for f in document["figures"]] == ["perplexity-grid.png", *DRAWN_FOR_A_CONVERSION]
    (panel,) = figure(document, "perplexity-grid.png")["data"].values()
    assert (panel["scorers"], panel["K"]) == (["do_acp", "sf"], ["k", "3"])
    by_cell = {(str(e.plan.scoring), e.plan.num_selected): e.perplexity for e in swept.entries}
    assert panel["perplexity"] == [
        [pytest.approx(by_cell[(scorer, k)]) for k in (None, 3)] for scorer in ("do_acp", "sf")
    ]
    drawn = [ConversionPlan.model_validate(p["plan"]).digest() for p in document["data"]["plans"]]
    assert drawn == [e.plan_digest for e in swept.entries]  # best first, each found by its digest
    best = swept.entries[0]
    distilled = [r for r in document["data"]["evaluations"] if r["label"].startswith("distilled")]
    assert [r["perplexity"] for r in distilled] == [pytest.approx(best.distilled_perplexity)]
    assert {c["metric"]: c["steps"] for c in document["data"]["curves"]} == {
        "loss": DISTILL_STEPS,
        "kl": DISTILL_STEPS,
    }


def test_the_report_of_a_comparison_reads_its_results_artifact(runs, tmp_path):
    """What a compare flow logs (data.ComparisonResults) on a parent run tagged `moe2dense.flow=compare`."""
    recipe, converted, _ = runs
    client = tracking_client(Settings())
    experiment = client.get_experiment_by_name(recipe.tracking.experiment).experiment_id
    parent = client.create_run(
        experiment, run_name="compare-it", tags={TAG_FLOW: "compare", TAG_RECIPE_NAME: "cmp"}
    )
    teacher, _, distilled = converted.evaluations
    results = ComparisonResults(
        models=[
            ComparedModel(label="teacher", kind="teacher", perplexity=teacher.perplexity),
            ComparedModel(
                label="do_acp",
                kind="converted",
                seed=0,
                perplexity=distilled.perplexity,
                kl_to_teacher=0.25,
                num_params=converted.final.num_parameters,
                plan_run_id=converted.plan.mlflow_run_id,
                distill_run_id=converted.final.mlflow_run_id,
            ),
            ComparedModel(label="random_ffn", kind="random_ffn", seed=0, perplexity=99.5, kl_to_teacher=2.5),
        ]
    )
    client.log_text(parent.info.run_id, results.model_dump_json(), COMPARISON_RESULTS)
    report(parent.info.run_id, "--out", str(tmp_path / "comparison"))
    document = check_report_folder(tmp_path / "comparison")
    assert document["data"]["kind"] == "comparison"
    assert [(r["label"], r["kl_to_teacher"]) for r in document["data"]["evaluations"]] == [
        ("teacher", None),
        ("do_acp", 0.25),
        ("random_ffn", 2.5),
    ]
    assert_kept_map_is_the_plan(document, converted.plan.kept_experts)
    assert {c["label"] for c in document["data"]["curves"]} == {"do_acp (seed 0)"}
    page = (tmp_path / "comparison" / "index.html").read_text(encoding="utf-8")
    assert "KL to teacher" in page and "random_ffn" in page


def test_a_stage_run_or_a_missing_run_is_refused_by_name(runs):
    _, converted, _ = runs
    shown = CliRunner().invoke(app, ["report", converted.plan.mlflow_run_id])
    assert shown.exit_code == 1
    assert f"is the 'plan' stage run of parent run {converted.mlflow_run_id}" in shown.output.replace(
        "\n", ""
    )
    missing = CliRunner().invoke(app, ["report", "0" * 32])
    assert missing.exit_code == 1 and "no MLflow run" in missing.output
