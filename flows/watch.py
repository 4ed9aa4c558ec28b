"""Flow `watch`: find new MoE releases on the model hub and start a `convert` run for each one.

Nothing is watched until configured (flows/watch_config.py; example: configs/watch.example.yaml).
Read top to bottom:
1. templates: every entry's recipe (an absolute path, or a stored artifact URI fetched from the store) is
   validated with the entry's overrides — a bad entry fails here, before any hub call;
2. releases: per entry, the newest `limit` models of its organisation whose id matches `name_pattern`,
   read at `revision` resolved to its commit sha (moe2dense_platform/hub.py); everything below is keyed `<id>@<sha>`;
3. screen: skipped with the reason when `config.model_type` is not in the entry's architecture filter,
   or the size (parameters / safetensors bytes) is over the entry's limit or not reported by the hub;
4. converted: skipped when the MLflow Model Registry holds a version tagged with this id and commit sha
   (`moe2dense_platform.tracking.converted_versions`) — so a new commit of a converted model is converted again;
5. in flight: skipped when a `convert` flow run tagged `moe2dense.source=<id>@<sha>` is scheduled,
   pending, running or completed, so running watch twice starts nothing twice;
6. trigger: the entry's recipe with `source.model`, `source.revision=<sha>` and `name` filled in (all
   validated before the first trigger) goes to `run_deployment(<deployment>, {"recipe": …}, timeout=0)`;
   a dry run lists what would be converted and what is skipped, and triggers nothing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from pydantic import BaseModel, SecretStr

from flows.watch_config import WatchConfig, WatchConfigError, WatchEntry
from moe2dense_platform.hub import HubClient, HubModel
from moe2dense_platform.recipe import Recipe, RecipeError
from moe2dense_platform.recipe_io import load_recipe
from moe2dense_platform.redaction import install_environment_redaction
from moe2dense_platform.runtime import transient_failure
from moe2dense_platform.settings import Settings
from moe2dense_platform.storage import StorageError, open_artifact_store
from moe2dense_platform.tracking import converted_versions, tracking_client

FINISHED_UNSUCCESSFULLY = [StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
NOTHING_WATCHED = "no watch entries configured: nothing is watched (example: configs/watch.example.yaml)"


class WatchReport(BaseModel):
    """What one watch run decided, releases named `<model id>@<commit sha>`.

    to_convert: every release that passed all checks (triggered unless dry_run); triggered: release →
    flow-run id; skipped: release → reason.
    """

    dry_run: bool
    to_convert: list[str] = []
    triggered: dict[str, str] = {}
    skipped: dict[str, str] = {}


def release_tag(release: HubModel) -> str:
    return f"moe2dense.source={release.label}"


def recipe_template(entry: WatchEntry) -> Path:
    """The entry's recipe as a local file, checked by pinning it to a placeholder release.

    Raises WatchConfigError naming the entry when the stored recipe is missing or the recipe is invalid."""
    try:
        if entry.is_stored_recipe:
            store = open_artifact_store(Settings())
            template = store.fetch(store.ref_from_uri(entry.recipe))
        else:
            template = Path(entry.recipe)
        conversion_recipe(HubModel(id=f"{entry.organisation}/template-check", sha="0" * 40), entry, template)
    except (RecipeError, StorageError) as error:
        raise WatchConfigError(f"watch entry {entry.label}: {error}") from None
    return template


def conversion_recipe(release: HubModel, entry: WatchEntry, template: Path) -> Recipe:
    """The template recipe pointed at this release's commit (validated: a bad template fails here).
    Values are JSON-quoted so YAML keeps an all-digit sha a string."""
    name = re.sub(r"[^\w.-]", "_", release.id)
    pinned = {"source.model": release.id, "source.revision": release.sha, "name": name}
    return load_recipe(
        template, [*entry.recipe_overrides, *(f"{k}={json.dumps(v)}" for k, v in pinned.items())]
    )


def skip_reason(entry: WatchEntry, release: HubModel) -> str | None:
    """Why the entry's filters refuse this release (architecture, then size); None when it passes."""
    wanted = entry.wanted_model_types
    if release.model_type not in wanted:
        return (
            f"unsupported architecture: model_type {release.model_type!r} "
            f"(architectures {list(release.architectures)}) is not one of {list(wanted)}"
        )
    limits = (
        ("parameters", entry.max_parameters, release.num_parameters),
        ("checkpoint bytes", entry.max_checkpoint_bytes, release.checkpoint_bytes),
    )
    for measure, limit, size in limits:
        if limit is not None and size is None:
            return f"size unknown: the hub reports no {measure} (limit {limit:,})"
        if limit is not None and size > limit:
            return f"too large: {size:,} {measure} > limit {limit:,}"
    return None


@task(
    name="find-releases",
    cache_policy=NONE,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=transient_failure,
)
def find_releases(entry: WatchEntry, hub_url: str) -> list[HubModel]:
    """The entry organisation's newest models whose id matches the pattern, each resolved at
    `entry.revision` to its commit sha with architecture and size."""
    pattern = re.compile(entry.name_pattern)
    token = os.environ.get("HF_TOKEN")
    with HubClient(hub_url, SecretStr(token) if token else None) as hub:
        model_ids = hub.list_model_ids(author=entry.organisation, limit=entry.limit)
        return [hub.model_info(i, entry.revision) for i in model_ids if pattern.search(i)]


@task(name="converted-as", cache_policy=NONE)
def converted_as(release: HubModel) -> str | None:
    """`already converted …` when the Model Registry has a dense model from this id at this commit sha."""
    versions = converted_versions(tracking_client(Settings()), release.id, release.sha)
    registered = ", ".join(f"{v.name}/{v.version}" for v in versions)
    return f"already converted at {release.sha}: {registered}" if versions else None


@task(name="in-flight-as", cache_policy=NONE)
def in_flight_as(release: HubModel) -> str | None:
    """`in flight …` when a flow run tagged with this release exists and did not fail, crash or get cancelled."""
    state_filter = FlowRunFilterState(type=FlowRunFilterStateType(not_any_=FINISHED_UNSUCCESSFULLY))
    flow_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[release_tag(release)]), state=state_filter)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=flow_filter, limit=1)
    return f"in flight: flow run {runs[0].id} ({runs[0].state_name})" if runs else None


@task(name="trigger-conversion", cache_policy=NONE)
def trigger_conversion(release: HubModel, recipe: Recipe, deployment: str) -> str:
    """Schedule the convert deployment for this release; returns the new flow-run id."""
    flow_run = run_deployment(
        deployment,
        parameters={"recipe": recipe.model_dump(mode="json")},
        timeout=0,
        as_subflow=False,
        tags=[release_tag(release)],
        flow_run_name=f"convert-{recipe.name}",
    )
    return str(flow_run.id)


DEFAULT_WATCH_CONFIG = WatchConfig()


@flow(name="watch", log_prints=True)
def watch_flow(config: WatchConfig = DEFAULT_WATCH_CONFIG, dry_run: bool = False) -> WatchReport:
    install_environment_redaction()
    report = WatchReport(dry_run=dry_run)
    if not config.entries:
        print(NOTHING_WATCHED)
        return report
    templates = [recipe_template(entry) for entry in config.entries]
    recipes: dict[HubModel, Recipe] = {}
    for entry, template in zip(config.entries, templates, strict=True):
        for release in find_releases(entry, config.hub_url):
            if release.label in report.skipped or release in recipes:
                continue  # an earlier entry decided
            reason = skip_reason(entry, release) or converted_as(release) or in_flight_as(release)
            if reason:
                report.skipped[release.label] = reason
                print(f"skip {release.label}: {reason}")
            else:
                recipes[release] = conversion_recipe(release, entry, template)
    report.to_convert = [release.label for release in recipes]
    for release, recipe in recipes.items():
        if dry_run:
            print(f"would convert {release.label}")
            continue
        report.triggered[release.label] = trigger_conversion(release, recipe, config.deployment)
        print(f"scheduled conversion of {release.label}: flow run {report.triggered[release.label]}")
    return report
