"""The stage tasks through `.fn` on a tiny trained teacher, in the embedded default (no servers):
source → calibrate → plan → assemble → evaluate → distill, with the outputs checked against the core."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe2dense_core.io.digests import file_sha256
from moe2dense_core.plan import ConversionPlan, PlanConfig, stats_request_for
from moe2dense_core.stats.expert_stats import ExpertStats
from moe2dense_core.stats.request import EVERYTHING, ROUTER_ONLY
from moe2dense_platform.runtime import Runtime
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task, calibration_rows
from tasks.distill import distill_task
from tasks.evaluate import EvalTarget, evaluate_task
from tasks.plan import plan_task
from tasks.source import source_task
from tasks.stage import STAGES
from tests.tasks.stage_fixtures import parent_run_id, teacher  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def chain(teacher, parent_run_id):  # noqa: F811
    torch.set_num_threads(1)
    recipe = teacher.recipe()
    source = source_task.fn(recipe.source)
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    plan = plan_task.fn(source, calibration, recipe.plan, parent_run_id)
    assembled = assemble_task.fn(source, plan, recipe.storage, parent_run_id)
    return recipe, source, calibration, plan, assembled


def test_source_digests_every_file_of_the_snapshot(chain, teacher):  # noqa: F811
    _, source, *_ = chain
    assert source.model_type == "qwen3_moe" and (source.num_experts, source.top_k) == (4, 2)
    assert source.file_digests["model.safetensors"] == file_sha256(teacher.path / "model.safetensors")
    assert source.local_path == str(teacher.path.resolve())


def test_calibration_stats_are_stored_and_match_the_recorded_digest(chain):
    recipe, source, calibration, *_ = chain
    stats = ExpertStats.load(Runtime.from_environment().fetch_uri(calibration.stats_uri))
    assert stats.digest() == calibration.stats_digest
    rows = calibration_rows(source, recipe.calibration)
    assert calibration.num_tokens == rows.numel() == recipe.calibration.num_tokens
    assert torch.equal(
        rows, calibration_rows(source, recipe.calibration)
    )  # seeded: the same tokens every time


def test_plan_and_checkpoint_are_stored_and_load_with_stock_transformers(chain):
    *_, plan, assembled = chain
    runtime = Runtime.from_environment()
    stored = ConversionPlan.from_json(runtime.fetch_uri(plan.plan_uri).read_text())
    assert stored.digest() == plan.plan_digest
    assert {layer.layer: layer.kept for layer in stored.layers} == plan.kept_experts
    model_dir = runtime.fetch_uri(assembled.checkpoint_uri)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "qwen3" and model.config.intermediate_size == plan.target_width
    assert assembled.num_parameters == sum(p.numel() for p in model.parameters())
    assert json.loads((model_dir / "moe2dense.json").read_text())


def test_a_different_plan_gives_a_different_digest(chain, parent_run_id):  # noqa: F811
    _, source, calibration, plan, _ = chain
    other = plan_task.fn(
        source, calibration, PlanConfig(scoring={"name": "random", "seed": 3}), parent_run_id
    )
    assert other.plan_digest != plan.plan_digest and other.stats_digest == plan.stats_digest


def test_evaluate_and_distill_store_their_results(chain, parent_run_id):  # noqa: F811
    recipe, source, _, _, assembled = chain
    target = EvalTarget(
        label="assembled", checkpoint_digest=assembled.checkpoint_digest, location=assembled.checkpoint_uri
    )
    before = evaluate_task.fn(target, recipe.evaluation, parent_run_id)
    distilled = distill_task.fn(source, assembled, recipe.distillation, parent_run_id)
    after_target = EvalTarget(
        label="distilled", checkpoint_digest=distilled.checkpoint_digest, location=distilled.checkpoint_uri
    )
    after = evaluate_task.fn(after_target, recipe.evaluation, parent_run_id)
    assert distilled.checkpoint_digest != assembled.checkpoint_digest
    assert 1.0 < after.perplexity < 300 and 1.0 < before.perplexity < 300
    document = json.loads(Runtime.from_environment().fetch_uri(after.eval_uri).read_text())
    assert document["perplexity"]["value"] == pytest.approx(after.perplexity)


def test_calibration_collects_what_the_plans_read_and_keys_on_it(chain, parent_run_id):  # noqa: F811
    recipe, source, *_ = chain
    router_plan = PlanConfig.model_validate({"scoring": "sf", "grouping": "prune"})
    request = stats_request_for(router_plan)
    assert request == ROUTER_ONLY
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id, request)
    stats = ExpertStats.load(Runtime.from_environment().fetch_uri(calibration.stats_uri))
    assert {layer.collected for layer in stats.layers.values()} == {ROUTER_ONLY}
    key = STAGES["calibrate"].key
    parts = {"source": source, "calibration": recipe.calibration, "statistics": recipe.statistics}
    assert key(None, {**parts, "request": ROUTER_ONLY}) != key(None, {**parts, "request": EVERYTHING})
    plan = plan_task.fn(source, calibration, router_plan, parent_run_id)  # sf + prune read the router only
    assert plan.kept_experts
