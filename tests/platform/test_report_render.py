"""The report renderer on real plans (build_plan on simulated statistics): the page's links, the PNGs,
what each figure draws, the atomic folder swap, and bad input refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from moe2dense_core.plan import PlanConfig, build_plan
from moe2dense_platform.reporting.data import (
    Curve,
    EvalRow,
    LabelledPlan,
    ReportData,
    SweepPoint,
    lineage_rows,
    plan_label,
)
from moe2dense_platform.reporting.render import render_report
from tests.fixtures.synthetic_stats import qwen3_moe_config, simulate_expert_stats
from tests.platform.report_checks import check_report_folder, figure, kept_and_groups

E, TOP_K, LAYERS = 8, 2, 3
CONFIGS = [
    PlanConfig(scoring="sf", grouping="prune"),
    PlanConfig(scoring="do_acp", grouping="prune"),
    PlanConfig(scoring="sf", num_selected=4, grouping="output_cluster"),
    PlanConfig(scoring="do_acp", num_selected=4, grouping="output_cluster"),
    PlanConfig(scoring="sf", grouping="output_cluster"),
]


@pytest.fixture(scope="module")
def plans() -> list[LabelledPlan]:
    config = qwen3_moe_config(num_experts=E, top_k=TOP_K, num_layers=LAYERS)
    stats = simulate_expert_stats(config, list(range(LAYERS)), num_experts=E, top_k=TOP_K, seed=5)
    return [LabelledPlan(label=plan_label(c), plan=build_plan(stats, c)) for c in CONFIGS]


@pytest.fixture(scope="module")
def sweep_data(plans) -> ReportData:
    points = [
        SweepPoint(plan=p.plan.config, plan_digest=p.plan.digest(), perplexity=20.0 + 3 * i)
        for i, p in enumerate(plans)
    ]
    points[0] = points[0].model_copy(update={"distilled_perplexity": 15.5, "distilled_mean_acc": 0.41})
    curves = [
        Curve(label="distilled", metric="loss", steps=[1, 2, 3, 4], values=[4.0, 3.1, 2.7, 2.5]),
        Curve(label="distilled", metric="kl", steps=[1, 2, 3, 4], values=[0.9, 0.6, 0.5, 0.45]),
    ]
    return ReportData(
        kind="sweep",
        title="tiny <sweep>",
        run_id="0123abcd",
        lineage=lineage_rows(source_model="tiny-moe", snapshot_digest="ab" * 32),
        evaluations=[
            EvalRow(label="teacher", kind="teacher", perplexity=10.0),
            EvalRow(label="distilled", kind="converted", perplexity=15.5, mean_acc=0.41),
        ],
        plans=plans[:3],
        sweep=points,
        curves=curves,
    )


@pytest.fixture(scope="module")
def rendered(sweep_data, tmp_path_factory):
    return render_report(sweep_data, tmp_path_factory.mktemp("report") / "sweep")


def test_the_page_links_every_png_and_nothing_broken(rendered):
    document = check_report_folder(rendered.folder)
    assert [f["file"] for f in document["figures"]] == [
        "perplexity-grid.png",
        "kept-experts.png",
        "scores.png",
        "distillation.png",
    ]


def test_each_figure_has_a_panel_per_plan_grid_and_metric(rendered, sweep_data):
    document = check_report_folder(rendered.folder)
    panels = {f["file"]: f["panels"] for f in document["figures"]}
    assert panels == {
        "perplexity-grid.png": 2,  # (prune, uniform) and (output_cluster, uniform)
        "kept-experts.png": len(sweep_data.plans),
        "scores.png": len(sweep_data.plans),
        "distillation.png": 2,  # loss and KL
    }


def test_the_kept_expert_map_is_each_plans_kept_experts_and_groups(rendered, sweep_data):
    maps = figure(check_report_folder(rendered.folder), "kept-experts.png")["data"]
    assert list(maps) == [p.label for p in sweep_data.plans]
    for labelled in sweep_data.plans:
        kept, groups = kept_and_groups(maps[labelled.label])
        assert kept == [sorted(layer.kept) for layer in labelled.plan.layers]
        for layer, group_of in zip(labelled.plan.layers, groups, strict=True):
            assert group_of == {e: g for g, members in enumerate(layer.groups) for e in members}
    k4_kept, _ = kept_and_groups(maps[plan_label(CONFIGS[2])])
    assert [len(layer) for layer in k4_kept] == [4] * LAYERS  # K = 4 of 8 experts in every layer


def test_the_score_map_orders_experts_as_the_scorer_does(rendered, sweep_data):
    scores = figure(check_report_folder(rendered.folder), "scores.png")["data"]
    for labelled in sweep_data.plans:
        for layer, drawn in zip(labelled.plan.layers, scores[labelled.label], strict=True):
            assert min(drawn) == 0.0 and max(drawn) == 1.0
            assert sorted(range(E), key=lambda e: drawn[e]) == sorted(range(E), key=lambda e: layer.scores[e])


def test_the_perplexity_grid_puts_each_configuration_in_its_cell(rendered, sweep_data):
    grid = figure(check_report_folder(rendered.folder), "perplexity-grid.png")["data"]
    assert grid["prune · uniform"] == {
        "scorers": ["do_acp", "sf"],
        "K": ["k"],
        "perplexity": [[23.0], [20.0]],
    }
    assert grid["output_cluster · uniform"] == {
        "scorers": ["do_acp", "sf"],
        "K": ["k", "4"],
        "perplexity": [[None, 29.0], [32.0, 26.0]],  # do_acp at K = k is not in this sweep
    }


def test_the_tables_are_on_the_page_with_text_escaped(rendered):
    page = (rendered.folder / "index.html").read_text(encoding="utf-8")
    assert "tiny &lt;sweep&gt;" in page and "<sweep>" not in page
    assert "× teacher" in page and "1.550" in page  # distilled perplexity 15.5 / teacher 10.0
    assert "Sweep: 5 configurations, best first" in page


def test_rendering_again_replaces_the_whole_folder(sweep_data, tmp_path):
    curves_only = ReportData(kind="conversion", title="first", curves=sweep_data.curves)
    first = render_report(curves_only, tmp_path / "report")
    assert [f.file for f in first.figures] == ["distillation.png"]
    tables_only = ReportData(kind="conversion", title="second", evaluations=sweep_data.evaluations)
    second = render_report(tables_only, tmp_path / "report")
    assert check_report_folder(second.folder)["figures"] == []
    assert sorted(p.name for p in second.folder.iterdir()) == ["index.html", "report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging or previous copy left


def test_a_curve_with_a_value_missing_is_refused():
    with pytest.raises(ValidationError, match="curve 'distilled' loss: 3 steps, 2 values"):
        Curve(label="distilled", metric="loss", steps=[1, 2, 3], values=[1.0, 0.5])
