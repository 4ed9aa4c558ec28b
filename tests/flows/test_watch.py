"""flows/watch.py: hub client, entry checks and filters against a fake hub; the scheduled deployment and
the CLI end to end against real Prefect + MLflow servers."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.watch import (
    NOTHING_WATCHED,
    conversion_recipe,
    find_releases,
    recipe_template,
    skip_reason,
    watch_flow,
)
from flows.watch_config import WatchConfig, WatchConfigError, WatchEntry, load_watch_config
from moe2dense_core.arch import supported_model_types
from moe2dense_platform.hub import HubClient, HubError, HubModel
from moe2dense_platform.storage import LocalArtifactStore

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = str(PROJECT_ROOT / "configs" / "demo.yaml")
QWEN_30B = HubModel(
    id="Qwen/Qwen3-30B-A3B",
    sha="a" * 40,
    model_type="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM",),
    num_parameters=30_532_122_624,
    checkpoint_bytes=61_064_245_248,
)


def entry(**fields) -> WatchEntry:
    return WatchEntry(**{"organisation": "Qwen", "recipe": DEMO_RECIPE, "max_parameters": 10**11, **fields})


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from flows.cli import app; app()", *args, "--home", str(home)]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def test_hub_client_resolves_the_revision_to_its_commit_with_architecture_and_size(fake_hub):
    with HubClient(fake_hub.url) as hub:
        assert hub.list_model_ids(author="deepseek-ai") == ["deepseek-ai/DeepSeek-V2-Lite"]
        assert hub.list_model_ids(author="Qwen", search="a22b") == ["Qwen/Qwen3-235B-A22B"]
        assert hub.model_info("Qwen/Qwen3-30B-A3B") == QWEN_30B
        assert hub.model_info("Qwen/Qwen3-30B-A3B", "a" * 40) == QWEN_30B
        unsized = hub.model_info("allenai/OLMoE-1B-7B-0924")
        assert (unsized.num_parameters, unsized.checkpoint_bytes) == (None, None)


def test_hub_errors_say_whether_retrying_helps(fake_hub):
    with HubClient(fake_hub.url) as hub:
        fake_hub.fail_next = 1
        with pytest.raises(HubError, match="HTTP 503") as unavailable:
            hub.list_model_ids(author="Qwen")
        assert unavailable.value.transient
        with pytest.raises(HubError, match="HTTP 404") as missing:
            hub.model_info("Qwen/none")
        assert not missing.value.transient


def test_the_default_config_watches_nothing():
    assert WatchConfig().entries == ()
    assert inspect.signature(watch_flow.fn).parameters["config"].default == WatchConfig()


def test_releases_are_screened_by_architecture_and_size_with_a_reason(fake_hub):
    qwen = entry(max_checkpoint_bytes=100 * 10**9)
    reasons = {r.label: skip_reason(qwen, r) for r in find_releases.fn(qwen, fake_hub.url)}
    assert reasons[QWEN_30B.label] is None
    assert reasons["Qwen/Qwen3-235B-A22B@" + "d" * 40] == (
        "too large: 235,093,634,560 parameters > limit 100,000,000,000"
    )
    assert reasons["Qwen/Qwen3-8B@" + "b" * 40].startswith("unsupported architecture: model_type 'qwen3'")
    assert reasons["Qwen/Qwen3-MoE-Custom@" + "c" * 40].startswith("unsupported architecture")
    assert skip_reason(entry(max_parameters=None, max_checkpoint_bytes=60 * 10**9), QWEN_30B) == (
        "too large: 61,064,245,248 checkpoint bytes > limit 60,000,000,000"
    )
    olmoe = entry(organisation="allenai")
    (unsized,) = find_releases.fn(olmoe, fake_hub.url)
    assert (
        skip_reason(olmoe, unsized) == "size unknown: the hub reports no parameters (limit 100,000,000,000)"
    )
    only_deepseek = entry(model_types=("deepseek_v2",))
    assert "is not one of ['deepseek_v2']" in skip_reason(only_deepseek, QWEN_30B)
    assert f"is not one of {supported_model_types()}" in skip_reason(qwen, HubModel(id="x/y", sha="1"))


def test_bad_watch_entries_name_the_entry_and_field(tmp_path):
    def error_of(**fields) -> str:
        path = tmp_path / "watch.yaml"
        path.write_text(
            yaml.safe_dump({"entries": [{"organisation": "Qwen", "max_parameters": 1, **fields}]})
        )
        with pytest.raises(WatchConfigError) as raised:
            load_watch_config(path)
        return str(raised.value)

    assert "entries.0: watch entry Qwen/.*: recipe 'configs/demo.yaml' is a relative path" in error_of(
        recipe="configs/demo.yaml"
    )
    assert "recipe file /nowhere/recipe.yaml does not exist" in error_of(recipe="/nowhere/recipe.yaml")
    assert "is a URI of none of" in error_of(recipe="https://example.com/recipe.yaml")
    assert "set max_parameters and/or max_checkpoint_bytes" in error_of(
        recipe=DEMO_RECIPE, max_parameters=None
    )
    assert "entries.0.model_types" in error_of(recipe=DEMO_RECIPE, model_types=["qwen3"])
    assert "entries.0.name_pattern" in error_of(recipe=DEMO_RECIPE, name_pattern="(unclosed")
    assert "entries.0.organization" in error_of(recipe=DEMO_RECIPE, organization="Qwen")
    with pytest.raises(WatchConfigError, match="watch entry Qwen/.*: .*plan.num_selected"):
        recipe_template(entry(recipe_overrides=("plan.num_selected=-1",)))


def test_a_recipe_in_the_artifact_store_is_used_and_a_missing_one_names_the_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE2DENSE_HOME", str(tmp_path))
    store = LocalArtifactStore(tmp_path / "artifacts")
    stored = store.uri_for(store.put_file(DEMO_RECIPE, kind="recipe"))
    template = recipe_template(entry(recipe=stored))
    assert conversion_recipe(QWEN_30B, entry(recipe=stored), template).source.revision == "a" * 40
    missing = stored.replace(stored.split("/")[-2], "0" * 64)
    with pytest.raises(WatchConfigError, match="watch entry Qwen/.*: "):
        recipe_template(entry(recipe=missing))


def test_a_bad_entry_stops_the_cli_before_any_hub_call(fake_hub, tmp_path):
    watch_file = tmp_path / "watch.yaml"
    bad = {
        "organisation": "Qwen",
        "recipe": DEMO_RECIPE,
        "max_parameters": 1,
        "recipe_overrides": ["plan.x=1"],
    }
    watch_file.write_text(yaml.safe_dump({"hub_url": fake_hub.url, "entries": [bad]}))
    result = run_cli("watch", str(watch_file), home=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "watch entry Qwen/.*" in result.stdout and "plan.x" in result.stdout
    assert fake_hub.requests == []
    nothing = run_cli("watch", home=tmp_path)
    assert nothing.returncode == 0 and NOTHING_WATCHED in " ".join(nothing.stdout.split())


def test_the_conversion_recipe_is_pinned_to_the_commit_and_validated():
    digits_only = QWEN_30B.model_copy(update={"sha": "9" * 40})  # YAML would read it as a number
    recipe = conversion_recipe(digits_only, entry(), Path(DEMO_RECIPE))
    assert (recipe.source.model, recipe.source.revision, recipe.name) == (
        QWEN_30B.id,
        "9" * 40,
        "Qwen_Qwen3-30B-A3B",
    )


def test_the_example_watch_file_is_valid_where_the_worker_image_puts_the_project(tmp_path):
    text = (PROJECT_ROOT / "configs" / "watch.example.yaml").read_text()
    assert "/opt/moe2dense/" in text
    local = tmp_path / "watch.yaml"
    local.write_text(text.replace("/opt/moe2dense/", f"{PROJECT_ROOT}/"))
    config = load_watch_config(local)
    assert [e.organisation for e in config.entries] == ["Qwen", "deepseek-ai"]
    for watched in config.entries:
        recipe_template(watched)


def execute_like_a_worker(flow_run_id: str, prefect_api_url: str) -> subprocess.CompletedProcess:
    """What a process worker runs for a flow run: `python -m prefect.engine` with its id in the environment."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PREFECT__FLOW_RUN_ID": flow_run_id}
    command = [sys.executable, "-m", "prefect.engine"]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def tagged_runs(tag: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as prefect:
        return prefect.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


@pytest.mark.integration
def test_the_scheduled_deployment_as_registered_watches_nothing(team_stack, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.deploy import deploy_all

    deploy_all(gpu_pool="gpu-it", watch_cron="*/30 * * * *")
    flow_run = run_deployment("watch/scheduled", timeout=0)  # what the scheduler creates at each tick
    result = execute_like_a_worker(str(flow_run.id), prefect_server)
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(flow_run.id).state.is_completed(), result.stdout + result.stderr
    assert NOTHING_WATCHED in result.stdout + result.stderr


@pytest.mark.integration
def test_watch_converts_new_commits_skips_with_reasons_and_a_dry_run_triggers_nothing(
    team_stack, prefect_server, fake_hub, tmp_path
):
    from mlflow.exceptions import MlflowException
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.convert import convert_flow
    from flows.watch import release_tag
    from moe2dense_platform.tracking import Lineage, tracking_client

    convert_flow.to_deployment(name="watch-it").apply()  # no worker: its runs stay scheduled
    client = tracking_client(team_stack)
    with contextlib.suppress(MlflowException):  # already there when the session registered it before
        client.create_registered_model("watch-it-dense")
    converted = Lineage(source_model="Qwen/Qwen3-30B-A3B", source_revision="a" * 40)
    version = client.create_model_version("watch-it-dense", "s3://elsewhere/model", tags=converted.as_tags())
    config = WatchConfig(hub_url=fake_hub.url, deployment="convert/watch-it", entries=(entry(),))

    # 1. the watch deployment with this config, run as a worker runs it: everything skipped, with reasons
    watch_flow.to_deployment(name="watch-it", parameters={"config": config.model_dump(mode="json")}).apply()
    flow_run = run_deployment("watch/watch-it", timeout=0)
    logs = execute_like_a_worker(str(flow_run.id), prefect_server)
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(flow_run.id).state.is_completed(), logs.stdout + logs.stderr
    said = " ".join((logs.stdout + logs.stderr).split())
    assert f"skip {QWEN_30B.label}: already converted at {'a' * 40}: watch-it-dense/{version.version}" in said
    assert f"skip Qwen/Qwen3-235B-A22B@{'d' * 40}: too large" in said
    assert f"skip Qwen/Qwen3-8B@{'b' * 40}: unsupported architecture" in said
    assert "scheduled conversion" not in said

    # 2. a new commit of the converted model: the dry run lists it and triggers nothing
    new_commit = "1" * 40
    fake_hub.models["Qwen/Qwen3-30B-A3B"] = dataclasses.replace(
        fake_hub.models["Qwen/Qwen3-30B-A3B"], sha=new_commit
    )
    new = HubModel(id="Qwen/Qwen3-30B-A3B", sha=new_commit)
    watch_file = tmp_path / "watch.yaml"
    watch_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    dry = run_cli("watch", str(watch_file), "--dry-run", home=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"would convert {new.label}" in dry.stdout
    assert f"skipped Qwen/Qwen3-235B-A22B@{'d' * 40}: too large" in dry.stdout
    assert tagged_runs(release_tag(new)) == []

    # 3. converted again at the new commit, once
    first = watch_flow(config)
    assert list(first.triggered) == [new.label]
    second = watch_flow(config)
    assert second.triggered == {} and second.skipped[new.label].startswith("in flight: flow run")
    runs = tagged_runs(release_tag(new))
    assert [str(run.id) for run in runs] == [first.triggered[new.label]]
    assert runs[0].parameters["recipe"]["source"]["revision"] == new_commit
