"""Issue 9 item 3: a new stage is one file + one import. The toy stage (tests/flows/toy_stage.py) gets a
cache key, Prefect tags and retries, publishing (one stored copy, URI and content address on its MLflow
run, its declared lineage tag) and appears in the CLI's stage progress, with no other file touched.
A real flow on the session's Prefect server; embedded MLflow and artifact store in a temporary home."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from prefect import flow

import tests.flows.toy_stage as toy  # the one import that adds the stage
from flows.cli import stage_progress
from moe2dense_platform.recipe_io import load_recipe
from moe2dense_platform.result_storage import ensure_result_storage
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import parent_run
from tasks.stage import STAGE_RETRIES, STAGES

DEMO_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@flow(name="toy")
def toy_flow(text: str) -> toy.ToyResult:
    ensure_result_storage()
    runtime = Runtime.from_environment()
    with parent_run(
        runtime.client,
        load_recipe(DEMO_RECIPE),
        runtime.redactor,
        artifact_location=runtime.settings.resolved_mlflow_artifact_location,
    ) as parent:
        return toy.toy_task(text, parent.run_id)


@pytest.fixture
def embedded(prefect_server, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("MOE2DENSE_HOME", str(tmp_path / "home"))
    for name in ("MOE2DENSE_ARTIFACT_ROOT", "MOE2DENSE_MLFLOW_TRACKING_URI", "MOE2DENSE_SETTINGS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield Runtime.from_environment()


def test_the_toy_stage_is_declared_keyed_tagged_and_retried():
    declared = STAGES["toy"]
    assert declared.result is toy.ToyResult
    key = declared.key(None, {"text": "a"})
    assert key.startswith("moe2dense-toy-") and key == declared.key(None, {"text": "a"})
    assert key != declared.key(None, {"text": "b"})
    assert toy.toy_task.cache_key_fn is declared.key and toy.toy_task.retries == STAGE_RETRIES
    assert "stage:toy" in toy.toy_task.tags


def test_the_toy_stage_publishes_and_appears_in_progress(embedded, capsys):
    text = "a toy stage's output"
    with stage_progress("toying", 1):
        first = toy_flow(text)
    with stage_progress("toying", 1):
        again = toy_flow(text)  # served from the cache: still one finished stage in the progress
    lines = re.findall(r"toying: 1/1 stages done \(toy-\w+\)", capsys.readouterr().out)
    assert len(lines) == 2
    assert again == first
    store = embedded.store
    ref = store.ref_from_uri(first.text_uri)
    assert store.fetch(ref).read_text() == text and ref.sha256 == hashlib.sha256(text.encode()).hexdigest()
    tags = embedded.client.get_run(first.mlflow_run_id).data.tags
    assert tags["moe2dense.output.toy.uri"] == first.text_uri
    assert tags["moe2dense.output.toy.sha256"] == ref.sha256
    assert tags[toy.TAG_TOY_DIGEST] == first.text_digest
