"""End KILLED the MLflow runs that a dead process left RUNNING (SIGKILL, the OOM killer, an evicted pod:
`tracking._terminating` never ran), so the MLflow UI shows no conversion alive that is not. Done each time
a parent run starts (`tracking.parent_run`, over its experiment) and by `moe2dense reconcile-runs`.

    ended = end_orphaned_runs(client, [experiment_id])     # {run id: why it was ended}

Among the RUNNING runs of this project in those experiments (runs tagged `moe2dense.recipe_digest`,
which parent and stage runs carry; the newest ORPHAN_SEARCH_MAX_RESULTS of them), a run is orphaned when
- its owner process (tags: moe2dense_platform/run_owner.py) is checkable here and gone (the rule:
  moe2dense_core/process_owner.py); or
- its owner is not checkable here (another machine or container, or a run from before owners were tagged)
  and its `prefect.flow_run_id` names a flow run the Prefect API of this process reports in a terminal
  state (COMPLETED, FAILED, CANCELLED, CRASHED): one query for all such runs. When Prefect cannot be
  reached, those runs are left as they are and a warning says why.
Every other run is left alone: a run whose owner is alive, or not provably gone, is never ended. Each
ended run gets status KILLED and the tag `moe2dense.orphaned` saying why.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence

from mlflow import MlflowClient
from mlflow.entities import Run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import TERMINAL_STATES

from moe2dense_core.process_owner import current_owner
from moe2dense_platform.run_owner import owner_from_tags
from moe2dense_platform.tracking import TAG_PREFECT_FLOW_RUN, TAG_RECIPE_DIGEST

LOGGER = logging.getLogger(__name__)

ORPHAN_SEARCH_MAX_RESULTS = 500
"""The most RUNNING runs one reconciliation looks at (the newest first)."""

RUNNING_RUNS_OF_THIS_PROJECT = f"attributes.status = 'RUNNING' AND tags.`{TAG_RECIPE_DIGEST}` IS NOT NULL"
TAG_ORPHANED = "moe2dense.orphaned"


def end_orphaned_runs(
    client: MlflowClient, experiment_ids: Sequence[str], max_results: int = ORPHAN_SEARCH_MAX_RESULTS
) -> dict[str, str]:
    """End KILLED the orphaned runs of `experiment_ids` (module docstring); returns {run id: reason}.
    MLflow errors are raised; a Prefect API that cannot be reached only leaves its runs alone."""
    if not experiment_ids:
        return {}
    runs = client.search_runs(list(experiment_ids), RUNNING_RUNS_OF_THIS_PROJECT, max_results=max_results)
    here = current_owner()
    reasons: dict[str, str] = {}
    by_flow_run: dict[str, list[Run]] = {}
    for run in runs:
        owner = owner_from_tags(run.data.tags)
        if owner is not None and owner.checkable(here):
            if owner.gone(here):
                reasons[run.info.run_id] = f"its process {owner.pid} on {owner.host} is gone"
        elif flow_run_id := run.data.tags.get(TAG_PREFECT_FLOW_RUN):
            by_flow_run.setdefault(flow_run_id, []).append(run)
    for flow_run_id, state in terminal_flow_runs(by_flow_run).items():
        for run in by_flow_run[flow_run_id]:
            reasons[run.info.run_id] = f"its Prefect flow run {flow_run_id} is {state}"
    for run_id, reason in reasons.items():
        client.set_tag(run_id, TAG_ORPHANED, reason)
        client.set_terminated(run_id, status="KILLED")
        LOGGER.info("MLflow run %s ended KILLED: %s", run_id, reason)
    return reasons


def terminal_flow_runs(flow_run_ids: Collection[str]) -> dict[str, str]:
    """{flow run id: state type} of those of `flow_run_ids` that the Prefect API of this process
    (`get_client`) reports in a terminal state; ids that are not UUIDs or not on that API are absent.
    Empty, with a warning, when the API cannot be reached."""
    ids = {uuid.UUID(value): value for value in flow_run_ids if _is_uuid(value)}
    if not ids:
        return {}
    terminal = FlowRunFilter(
        id=FlowRunFilterId(any_=list(ids)),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(TERMINAL_STATES))),
    )
    try:
        with get_client(sync_client=True) as prefect:
            flow_runs = prefect.read_flow_runs(flow_run_filter=terminal, limit=len(ids))
    except Exception as error:  # unreachable, refused, timed out: never fail a run because of this check
        LOGGER.warning(
            "the Prefect API did not answer (%s: %s): the RUNNING MLflow runs of %d Prefect flow "
            "run(s) owned elsewhere are left as they are",
            type(error).__name__,
            error,
            len(ids),
        )
        return {}
    return {ids[flow_run.id]: flow_run.state_type.value for flow_run in flow_runs}


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
