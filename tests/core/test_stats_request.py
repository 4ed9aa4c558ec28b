"""Statistics requests: a pass collects only what is asked, methods refuse what was not collected, every
registered method's declared `needs` is enough, plans and sweep grids ask for the union, shards merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe2dense_core.arch import get_spec
from moe2dense_core.conversion import convert
from moe2dense_core.errors import StatsError
from moe2dense_core.grouping import GROUPERS, GroupingRequest, get_grouper
from moe2dense_core.plan import PlanConfig, build_plan, stats_request_for
from moe2dense_core.scoring import SCORERS, get_scorer, rank_experts
from moe2dense_core.stats.collect import collect_stats
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.hooks import attach_stat_hooks
from moe2dense_core.stats.layer_stats import SUM_FIELDS, LayerStats
from moe2dense_core.stats.request import (
    EVERYTHING,
    EXPERT_OUTPUTS,
    GRAM_FIELDS,
    OUTPUT_FIELDS,
    ROUTER_ONLY,
    StatsRequest,
)
from tests.fixtures.tiny_moe import build_tiny_moe, calibration_batches

REQUESTS = (ROUTER_ONLY, EXPERT_OUTPUTS, EVERYTHING)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2-MoE: the family with a shared-expert gate, so every router-side statistic is exercised."""
    return build_tiny_moe("qwen2_moe", tmp_path_factory.mktemp("tiny") / "qwen2_moe")


@pytest.fixture(scope="module")
def collected(teacher_dir: Path) -> dict[StatsRequest, ExpertStats]:
    return {
        request: collect_stats(teacher_dir, calibration_batches(), request=request) for request in REQUESTS
    }


def test_requests_combine_and_gram_needs_the_outputs() -> None:
    assert ROUTER_ONLY.union(EXPERT_OUTPUTS) == EXPERT_OUTPUTS
    assert EXPERT_OUTPUTS.union(EVERYTHING) == EVERYTHING and StatsRequest() == EVERYTHING
    assert EVERYTHING.covers(EXPERT_OUTPUTS) and not EXPERT_OUTPUTS.covers(EVERYTHING)
    with pytest.raises(StatsError, match="gram=True needs expert_outputs=True"):
        StatsRequest(expert_outputs=False, gram=True)
    with pytest.raises(StatsError, match="where.json: `collected` must be"):
        StatsRequest.from_json({"gram": 1, "expert_outputs": True}, "where.json")


@pytest.mark.parametrize("mode", ["in_memory", "layer_by_layer"])
def test_only_the_requested_statistics_are_collected(mode: str, teacher_dir: Path, collected) -> None:
    full = collected[EVERYTHING]
    for request in REQUESTS:
        stats = collect_stats(teacher_dir, calibration_batches(), request=request, mode=mode)
        assert stats.collected == request and all(
            layer.collected == request for layer in stats.layers.values()
        )
        for index, layer in stats.layers.items():
            for name in SUM_FIELDS:
                value, reference = getattr(layer, name), getattr(full.layers[index], name)
                wanted = (name not in OUTPUT_FIELDS or request.expert_outputs) and (
                    name not in GRAM_FIELDS or request.gram
                )
                if wanted:
                    torch.testing.assert_close(
                        value, reference, rtol=1e-6, atol=1e-12, msg=f"{request} {name}"
                    )
                else:
                    assert not bool(value.any()), f"{request}: {name} was collected"
            assert float(layer.shared_gate_sum) > 0  # router side, always collected


def test_a_layer_takes_expert_outputs_exactly_when_it_collects_them() -> None:
    probs = torch.softmax(
        torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1
    )
    weights, indices = probs.topk(2, dim=-1)
    with pytest.raises(StatsError, match="expert_outputs given, but the layer collects router statistics$"):
        LayerStats(0, 4, 2, collected=ROUTER_ONLY).update(probs, weights, indices, torch.zeros(4, 3, 8))
    with pytest.raises(
        StatsError, match="expert_outputs missing, but the layer collects .* \\+ expert_outputs$"
    ):
        LayerStats(0, 4, 2, collected=EXPERT_OUTPUTS).update(probs, weights, indices)
    layer = LayerStats(0, 4, 2, collected=EXPERT_OUTPUTS)
    layer.update(probs, weights, indices, torch.ones(4, 3, 8, dtype=torch.float32))
    assert float(layer.output_sq_norm_sums[0]) == pytest.approx(3 * 8, rel=1e-6) and not bool(
        layer.gram.any()
    )


def test_router_only_statistics_do_not_hook_the_experts(teacher_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    config = json.loads((teacher_dir / "config.json").read_text())
    spec = get_spec("qwen2_moe")
    dims = spec.dims(config)
    experts, router = (f(model, dims.moe_layers[0]) for f in (spec.experts_module, spec.router_module))
    for request, expert_hooks in ((ROUTER_ONLY, 0), (EXPERT_OUTPUTS, 1)):
        stats = ExpertStats(config, "qwen2_moe", dims.num_experts, dims.top_k, collected=request)
        with attach_stat_hooks(model, spec, stats):
            assert (len(router._forward_hooks), len(experts._forward_pre_hooks)) == (1, expert_hooks)


def test_methods_refuse_statistics_they_need_but_were_not_collected(collected) -> None:
    router_only = collected[ROUTER_ONLY].layers[min(collected[ROUTER_ONLY].layers)]
    for name, missing in (("acp", "expert_outputs"), ("reap", "expert_outputs"), ("do_acp", "gram")):
        with pytest.raises(
            StatsError, match=rf"scorer '{name}' needs .*{missing}.*collected router statistics only"
        ):
            get_scorer(name)(router_only, 2)
    expert_outputs = collected[EXPERT_OUTPUTS].layers[min(collected[EXPERT_OUTPUTS].layers)]
    with pytest.raises(StatsError, match=r"scorer 'do_acp' needs gram \(E×E Gram matrix"):
        get_scorer("do_acp")(expert_outputs, 2)
    with pytest.raises(StatsError, match="grouping 'output_cluster' needs gram"):
        get_grouper("output_cluster")(GroupingRequest(expert_outputs, [0, 1, 2, 3], 2))
    with pytest.raises(StatsError, match=r"plan do_acp \+ prune needs gram"):
        build_plan(collected[EXPERT_OUTPUTS], PlanConfig(scoring="do_acp"))


def test_every_method_gives_the_same_answer_on_just_what_it_declares(collected) -> None:
    """A method reading a statistic it does not declare would see zeros here and answer differently."""
    full = collected[EVERYTHING]
    for index, layer in full.layers.items():
        for scorer in SCORERS.entries():
            reduced = collected[scorer.needs].layers[index]
            expected, got = scorer(layer, 4), scorer(reduced, 4)
            assert got.selected == expected.selected, scorer.name
            torch.testing.assert_close(got.scores, expected.scores, rtol=1e-6, atol=1e-12, msg=scorer.name)
        ranked = rank_experts(get_scorer("sf")(layer, 4).scores)[:6]
        for grouper in GROUPERS.entries():
            if grouper.needs_weights:
                continue  # reads weights, not statistics (needs router statistics only: declared ROUTER_ONLY)
            reduced = collected[grouper.needs].layers[index]
            groups = 3 if grouper.merges else len(ranked)
            assert grouper(GroupingRequest(reduced, ranked, groups)) == grouper(
                GroupingRequest(layer, ranked, groups)
            )


def test_a_plan_and_a_sweep_grid_ask_for_the_union_of_their_methods() -> None:
    assert stats_request_for(PlanConfig(scoring="sf")) == ROUTER_ONLY
    assert (
        stats_request_for(PlanConfig(scoring="cp", grouping="router_cluster", num_selected=8)) == ROUTER_ONLY
    )
    assert stats_request_for(PlanConfig(scoring="reap")) == EXPERT_OUTPUTS
    assert (
        stats_request_for(PlanConfig(scoring="pp", grouping="output_cluster", num_selected=8)) == EVERYTHING
    )
    assert stats_request_for(PlanConfig()) == EVERYTHING  # do_acp
    grid = [PlanConfig(scoring=s) for s in ("sf", "ean", "random")]
    assert stats_request_for(grid) == EXPERT_OUTPUTS
    assert stats_request_for([*grid, PlanConfig(scoring="do_acp")]) == EVERYTHING


def test_convert_collects_only_what_its_plan_reads(teacher_dir: Path, tmp_path: Path) -> None:
    config = PlanConfig(scoring="sf")
    result = convert(
        teacher_dir, calibration_batches(), tmp_path / "dense", config, calibration_mode="layer_by_layer"
    )
    router_only = collect_stats(teacher_dir, calibration_batches(), request=ROUTER_ONLY)
    assert result.provenance.plan.stats_digest == router_only.digest()
    assert result.provenance.plan == build_plan(router_only, config)


def test_shards_merge_to_one_pass_and_refuse_other_requests(teacher_dir: Path) -> None:
    batches = calibration_batches()
    for request in (ROUTER_ONLY, EVERYTHING):
        whole = collect_stats(teacher_dir, batches, request=request, mode="layer_by_layer")
        halves = [
            collect_stats(teacher_dir, part, request=request, mode="layer_by_layer")
            for part in (batches[:1], batches[1:])
        ]
        merged = halves[0].merge(halves[1])
        assert merged.collected == request
        for index, layer in whole.layers.items():
            for name in SUM_FIELDS:
                torch.testing.assert_close(
                    getattr(merged.layers[index], name), getattr(layer, name), rtol=1e-12, atol=1e-12
                )
    router_only = collect_stats(teacher_dir, batches[:1], request=ROUTER_ONLY)
    with pytest.raises(StatsError, match="collected"):
        router_only.merge(collect_stats(teacher_dir, batches[1:]))
