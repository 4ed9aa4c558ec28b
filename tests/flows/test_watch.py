"""flows/watch.py: hub client and filters against a fake hub; end to end against real Prefect + MLflow."""

from __future__ import annotations

import contextlib

import pytest
from pydantic import ValidationError

from flows.watch import WatchConfig, conversion_recipe, find_releases
from tasks.hub import HubClient, HubError, HubModel
from tasks.recipe import RecipeError

QWEN_30B = HubModel(id="Qwen/Qwen3-30B-A3B", sha="a" * 40, model_type="qwen3_moe")


def test_hub_client_lists_and_reads_revisions(fake_hub):
    with HubClient(fake_hub.url) as hub:
        assert hub.list_model_ids(author="deepseek-ai") == ["deepseek-ai/DeepSeek-V2-Lite"]
        assert hub.list_model_ids(author="Qwen", search="a22b") == ["Qwen/Qwen3-235B-A22B"]
        assert hub.model_info("Qwen/Qwen3-30B-A3B") == QWEN_30B


def test_hub_errors_say_whether_retrying_helps(fake_hub):
    with HubClient(fake_hub.url) as hub:
        fake_hub.fail_next = 1
        with pytest.raises(HubError, match="HTTP 503") as unavailable:
            hub.list_model_ids(author="Qwen")
        assert unavailable.value.transient
        with pytest.raises(HubError, match="HTTP 404") as missing:
            hub.model_info("Qwen/none")
        assert not missing.value.transient


def test_releases_are_filtered_by_organisation_pattern_and_architecture(fake_hub):
    config = WatchConfig(hub_url=fake_hub.url, organisations=("Qwen", "deepseek-ai"))
    found = find_releases.fn(config)
    assert [r.id for r in found] == [
        "Qwen/Qwen3-235B-A22B",
        "Qwen/Qwen3-30B-A3B",
        "deepseek-ai/DeepSeek-V2-Lite",
    ]
    narrowed = WatchConfig(
        hub_url=fake_hub.url,
        organisations=("Qwen", "deepseek-ai"),
        name_pattern="30B|Lite",
        model_types=("deepseek_v2",),
    )
    assert [r.id for r in find_releases.fn(narrowed)] == ["deepseek-ai/DeepSeek-V2-Lite"]


def test_bad_watch_configs_name_the_field():
    with pytest.raises(ValidationError, match="model_types"):
        WatchConfig(model_types=("qwen3",))
    with pytest.raises(ValidationError, match="name_pattern"):
        WatchConfig(name_pattern="(unclosed")


def test_the_conversion_recipe_is_pinned_to_the_release_and_validated():
    recipe = conversion_recipe(QWEN_30B, WatchConfig())
    assert (recipe.source.model, recipe.source.revision, recipe.name) == (
        QWEN_30B.id,
        QWEN_30B.sha,
        "Qwen_Qwen3-30B-A3B",
    )
    with pytest.raises(RecipeError, match="plan.num_selected"):
        conversion_recipe(QWEN_30B, WatchConfig(recipe_overrides=("plan.num_selected=-1",)))


@pytest.mark.integration
def test_watch_triggers_exactly_the_new_model_and_is_idempotent(team_stack, fake_hub):
    from mlflow.exceptions import MlflowException
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.convert import convert_flow
    from flows.watch import release_tag, watch_flow
    from tasks.tracking import Lineage, tracking_client

    convert_flow.to_deployment(name="watch-it").apply()  # no worker: its runs stay scheduled
    client = tracking_client(team_stack)
    with contextlib.suppress(MlflowException):  # already there when the session registered it before
        client.create_registered_model("watch-it-dense")
    already = Lineage(source_model="Qwen/Qwen3-30B-A3B", source_revision="a" * 40)
    client.create_model_version("watch-it-dense", "s3://elsewhere/model", tags=already.as_tags())
    config = WatchConfig(hub_url=fake_hub.url, organisations=("Qwen",), deployment="convert/watch-it")

    first = watch_flow(config)
    new = "Qwen/Qwen3-235B-A22B@" + "d" * 40
    assert first.converted == ["Qwen/Qwen3-30B-A3B@" + "a" * 40]
    assert list(first.triggered) == [new]
    second = watch_flow(config)
    assert second.triggered == {} and second.in_flight == [new]

    tag = release_tag(HubModel(id="Qwen/Qwen3-235B-A22B", sha="d" * 40, model_type="qwen3_moe"))
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
    assert [str(run.id) for run in runs] == [first.triggered[new]]
    assert runs[0].parameters["recipe"]["source"] == {
        "model": "Qwen/Qwen3-235B-A22B",
        "revision": "d" * 40,
        "trust_remote_code": False,
        "allow_pickle": False,
    }
