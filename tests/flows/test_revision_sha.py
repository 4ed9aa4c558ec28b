"""A hub teacher at `revision: main` is recorded by the commit `main` named when it was read, never as
`main`: in the source stage run's param and tag, the registered model version's tags and the report. After
a new commit to the repo, `main` resolves to the new commit and nothing of the conversion is served from
the cache; a further commit with the same files registers the same checkpoint again under the new commit,
so the release watcher sees it as converted. (A local folder has no commit: its recipe `revision`, normally none, is recorded as given.)

Real pieces: the tiny trained teacher served as `acme/tiny-moe` by the fake hub (tests/flows/fake_hub.py)
and downloaded by huggingface_hub, `moe2dense convert` in its own process on the session's Prefect server,
MLflow in a SQLite file, a local artifact store.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from safetensors.torch import load_file, save_file

from moe2dense_platform.local_stack import isolated_environment
from moe2dense_platform.recipe_io import recipe_to_yaml
from moe2dense_platform.tracking import TAG_OUTPUT, TAG_SOURCE_REVISION, TAG_STAGE, TAG_STAGE_RUN
from tests.flows.fake_hub import FakeHub, FakeRelease

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REPO = "acme/tiny-moe"
EXPERIMENT = "revision-sha"
MODEL_NAME = "tiny-dense"
FIRST, SECOND, THIRD = "1" * 40, "2" * 40, "3" * 40


def new_commit(teacher: Path, folder: Path) -> Path:
    """A copy of the teacher with one weight changed: the next commit of the repo, with other content."""
    shutil.copytree(teacher, folder)
    shard = sorted(folder.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.full_like(tensors[name], 1e-3)
    save_file(tensors, shard, metadata={"format": "pt"})
    return folder


def convert(recipe: Path, home: Path, hub: FakeHub, prefect_api_url: str) -> None:
    """`moe2dense convert RECIPE` against the fake hub (online, its own Hugging Face cache)."""
    env = isolated_environment(
        MOE2DENSE_HOME=str(home),
        MOE2DENSE_PREFECT_API_URL=prefect_api_url,
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        HF_HOME=str(home / "hf"),
    )
    command = [sys.executable, "-c", "from flows.cli import app; app()", "convert", str(recipe)]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


def latest_parent(client: MlflowClient):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent, *_) = client.search_runs(
        [experiment.experiment_id], f"tags.`{TAG_STAGE}` IS NULL", order_by=["attributes.start_time DESC"]
    )
    return parent


def linked_stage_run(client: MlflowClient, parent, label: str):
    return client.get_run(parent.data.tags[f"{TAG_STAGE_RUN}.{label}"])


def report_html(client: MlflowClient, parent) -> str:
    """The index.html of the parent run's report (its store URI is a tag of the report stage run)."""
    uri = linked_stage_run(client, parent, "report").data.tags[f"{TAG_OUTPUT}.report.uri"]
    return (Path(uri.removeprefix("file://")) / "index.html").read_text()


def test_main_is_recorded_as_its_commit_and_a_new_commit_is_converted_afresh(
    tiny_teacher, prefect_server, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        recipe_to_yaml(
            tiny_teacher.recipe(
                f"source.model={REPO}",
                "source.revision=main",
                "distillation.enabled=false",
                f"tracking.experiment={EXPERIMENT}",
                f"tracking.registered_model={MODEL_NAME}",
            )
        )
    )
    home = tmp_path / "home"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")

    with FakeHub({REPO: FakeRelease(FIRST, "qwen3_moe", folder=tiny_teacher.path)}) as hub:
        convert(recipe, home, hub, prefect_server)
        first = latest_parent(client)
        source = linked_stage_run(client, first, "source")
        assert source.data.tags[TAG_SOURCE_REVISION] == FIRST
        assert source.data.params["source.revision"] == FIRST
        assert FIRST in report_html(client, first)
        recorded = [
            value
            for stage in client.search_runs(
                [first.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{first.info.run_id}'"
            )
            for value in (*stage.data.params.values(), *stage.data.tags.values())
        ]
        assert "main" not in recorded  # the parent's params keep the recipe as written (what was asked)

        hub.models[REPO] = dataclasses.replace(
            hub.models[REPO], sha=SECOND, folder=new_commit(tiny_teacher.path, tmp_path / "second-commit")
        )
        convert(recipe, home, hub, prefect_server)
        second = latest_parent(client)
        hub.models[REPO] = dataclasses.replace(
            hub.models[REPO], sha=THIRD
        )  # same files (a README-only commit)
        convert(recipe, home, hub, prefect_server)

    assert second.info.run_id != first.info.run_id
    assert linked_stage_run(client, second, "source").data.tags[TAG_SOURCE_REVISION] == SECOND
    for label in ("calibrate", "plan", "assemble", "evaluate-teacher", "report", "register"):
        run = linked_stage_run(client, second, label)
        assert run.data.tags[MLFLOW_PARENT_RUN_ID] == second.info.run_id, f"{label} was served from the cache"
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    # every commit is registered, so the watcher sees each one as converted; the third is the second's model
    assert sorted(v.tags[TAG_SOURCE_REVISION] for v in versions) == [FIRST, SECOND, THIRD]
    by_commit = {v.tags[TAG_SOURCE_REVISION]: v for v in versions}
    assert by_commit[THIRD].source == by_commit[SECOND].source
