"""Flow `watch`: find new MoE releases on the model hub and start a `convert` run for each one.

Read top to bottom:
1. releases: for each organisation, the newest models whose id matches `name_pattern`, read at
   `revision` (commit sha + `config.model_type`), keeping supported MoE architectures only;
2. converted: a release counts as converted when the MLflow Model Registry holds a version tagged
   with its id and that commit sha (`tasks.tracking.converted_versions`);
3. in flight: a release whose `convert` flow run (tag `moe2dense.source=<id>@<sha>`) is scheduled,
   pending, running or completed is not started again, so running watch twice starts nothing twice;
4. trigger: the recipe template with `source.model`, `source.revision` and `name` filled in is
   validated, then `run_deployment(<deployment>, {"recipe": …}, timeout=0)` schedules the conversion.
"""

from __future__ import annotations

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
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from moe2dense_core.arch import supported_model_types
from tasks.hub import DEFAULT_HUB_URL, HubClient, HubModel
from tasks.recipe import Recipe
from tasks.recipe_io import load_recipe
from tasks.runtime import transient_failure
from tasks.settings import Settings
from tasks.tracking import converted_versions, tracking_client

FINISHED_UNSUCCESSFULLY = [StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]


class WatchConfig(BaseModel):
    """Which releases to look for and which deployment converts them.

    model_types: architectures to convert; None = every family moe2dense supports.
    recipe: YAML recipe used as the template of each conversion (plus `recipe_overrides`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hub_url: str = DEFAULT_HUB_URL
    organisations: tuple[str, ...] = Field(
        default=("Qwen", "deepseek-ai", "openai", "mistralai", "allenai"), min_length=1
    )
    name_pattern: str = ".*"
    model_types: tuple[str, ...] | None = None
    revision: str = "main"
    limit: int = Field(default=50, ge=1)
    recipe: Path = Path("configs/demo.yaml")
    recipe_overrides: tuple[str, ...] = ()
    deployment: str = "convert/default"
    dry_run: bool = False

    @field_validator("name_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return pattern

    @field_validator("model_types")
    @classmethod
    def _supported(cls, model_types: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = sorted(set(model_types or ()) - set(supported_model_types()))
        if unknown:
            raise ValueError(f"{unknown} are not supported; supported: {supported_model_types()}")
        return model_types


class WatchReport(BaseModel):
    """What one watch run saw and did (ids as `<model id>@<sha>`; triggered maps to flow-run ids)."""

    releases: list[str]
    converted: list[str]
    in_flight: list[str]
    triggered: dict[str, str]


def release_tag(release: HubModel) -> str:
    return f"moe2dense.source={release.id}@{release.sha}"


@task(
    name="find-releases",
    cache_policy=NONE,
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=transient_failure,
)
def find_releases(config: WatchConfig) -> list[HubModel]:
    """Supported MoE models of the organisations whose id matches the pattern, at `config.revision`."""
    wanted_types = set(config.model_types or supported_model_types())
    pattern = re.compile(config.name_pattern)
    token = os.environ.get("HF_TOKEN")
    releases = []
    with HubClient(config.hub_url, SecretStr(token) if token else None) as hub:
        for organisation in config.organisations:
            for model_id in hub.list_model_ids(author=organisation, limit=config.limit):
                if not pattern.search(model_id):
                    continue
                release = hub.model_info(model_id, config.revision)
                if release.model_type in wanted_types:
                    releases.append(release)
    return releases


@task(name="is-converted", cache_policy=NONE)
def is_converted(release: HubModel) -> bool:
    """True when the Model Registry has a dense model from this id at this commit sha."""
    return bool(converted_versions(tracking_client(Settings()), release.id, release.sha))


def conversion_recipe(release: HubModel, config: WatchConfig) -> Recipe:
    """The template recipe pointed at this release (validated: a bad template fails here)."""
    name = re.sub(r"[^\w.-]", "_", release.id)
    pinned = [f"source.model={release.id}", f"source.revision={release.sha}", f"name={name}"]
    return load_recipe(config.recipe, [*config.recipe_overrides, *pinned])


@task(name="is-in-flight", cache_policy=NONE)
def is_in_flight(release: HubModel) -> bool:
    """True when a flow run tagged with this release exists and did not fail, crash or get cancelled."""
    state_filter = FlowRunFilterState(type=FlowRunFilterStateType(not_any_=FINISHED_UNSUCCESSFULLY))
    flow_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[release_tag(release)]), state=state_filter)
    with get_client(sync_client=True) as client:
        return bool(client.read_flow_runs(flow_run_filter=flow_filter, limit=1))


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
def watch_flow(config: WatchConfig = DEFAULT_WATCH_CONFIG) -> WatchReport:
    releases = find_releases(config)
    label = {release: f"{release.id}@{release.sha}" for release in releases}
    converted = [release for release in releases if is_converted(release)]
    candidates = [release for release in releases if release not in converted]
    in_flight = [release for release in candidates if is_in_flight(release)]
    new = [release for release in candidates if release not in in_flight]
    recipes = {
        release: conversion_recipe(release, config) for release in new
    }  # all validated before any trigger
    triggered = {}
    for release in new:
        if config.dry_run:
            print(f"would convert {label[release]}")
            continue
        triggered[label[release]] = trigger_conversion(release, recipes[release], config.deployment)
        print(f"scheduled conversion of {label[release]}: flow run {triggered[label[release]]}")
    return WatchReport(
        releases=[label[r] for r in releases],
        converted=[label[r] for r in converted],
        in_flight=[label[r] for r in in_flight],
        triggered=triggered,
    )
