"""Tracking building blocks without a server: params flattening, lineage tags, redaction.

Runs, artifacts, inputs and the registry against a real `mlflow server` with S3 artifacts:
tests/integration/test_tracking_mlflow.py.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from moe2dense_platform.artifact_manifest import HASH_CHUNK_BYTES
from moe2dense_platform.redaction import MASK, CredentialLeakError, Redactor, install_log_redaction
from moe2dense_platform.settings import Settings
from moe2dense_platform.tracking import (
    TAG_SHARD_DIGESTS,
    TAG_SHARDS_DIGEST,
    TAG_SOURCE_MODEL,
    TAG_TRUST_REMOTE_CODE,
    Lineage,
    flatten_params,
    run_url,
)


def test_flatten_params_uses_dotted_paths_and_json_values() -> None:
    params = {
        "plan": {"scoring": "do_acp", "num_selected": None, "router_mass": False},
        "distillation": {"train": {"lr": 1e-4, "adam_betas": [0.9, 0.95]}},
        "evaluation": {"downstream": {"tasks": [{"name": "arc_easy", "num_fewshot": 25}]}},
    }
    assert flatten_params(params) == {
        "plan.scoring": "do_acp",
        "plan.num_selected": "null",
        "plan.router_mass": "false",
        "distillation.train.lr": "0.0001",
        "distillation.train.adam_betas": "[0.9, 0.95]",
        "evaluation.downstream.tasks.0.name": "arc_easy",
        "evaluation.downstream.tasks.0.num_fewshot": "25",
    }


def test_lineage_tags_summarise_shards_and_drop_unknowns() -> None:
    lineage = Lineage(source_model="org/moe", source_revision="abc", shard_digests={"b": "2", "a": "1"})
    tags = lineage.as_tags()
    assert tags[TAG_SOURCE_MODEL] == "org/moe"
    assert tags[TAG_SHARD_DIGESTS] == '{"a":"1","b":"2"}'
    assert tags[TAG_SHARDS_DIGEST] == Lineage("x", None, {"a": "1", "b": "2"}).shards_digest()
    assert "moe2dense.plan_digest" not in tags
    assert tags[TAG_TRUST_REMOTE_CODE] == "false"  # remote code is never trusted, and lineage says so
    many = Lineage("org/moe", "abc", {f"model-{i:05d}.safetensors": "f" * 64 for i in range(200)}).as_tags()
    assert TAG_SHARD_DIGESTS not in many and TAG_SHARDS_DIGEST in many  # too long for one tag


def test_redactor_collects_settings_secrets_and_credential_named_environment() -> None:
    settings = Settings(aws_secret_access_key="settings-secret-1", prefect_api_key="prefect-key-22")
    environ = {
        "HF_TOKEN": "hf_abcdefgh",
        "GITHUB_TOKEN": "ghp_12345678",
        "MAX_TOKENS": "not-a-secret",
        "PREFECT_API_KEY_FLAG": "true",
        "HOME": "/root/home-dir",
    }
    redactor = Redactor.from_environment(settings, environ)
    text = "a settings-secret-1 b prefect-key-22 c hf_abcdefgh d ghp_12345678 e not-a-secret f /root/home-dir g true"
    assert (
        redactor.redact(text) == f"a {MASK} b {MASK} c {MASK} d {MASK} e not-a-secret f /root/home-dir g true"
    )


def test_credential_named_keys_are_masked_whatever_their_value() -> None:
    redactor = Redactor()
    assert redactor.redact_item("storage.aws_secret_access_key", "anything") == (
        "storage.aws_secret_access_key",
        MASK,
    )
    assert redactor.redact_item("api-key", "x") == ("api-key", MASK)
    assert redactor.redact_item("calibration.num_tokens", "32768") == ("calibration.num_tokens", "32768")
    assert redactor.redact_item("tokenizer", "gpt2") == ("tokenizer", "gpt2")


def test_names_get_a_mask_mlflow_accepts() -> None:
    redactor = Redactor(["planted-secret-9"])
    assert redactor.redact_name("loss_planted-secret-9") == "loss_redacted"


def test_check_file_finds_a_secret_across_a_chunk_boundary(tmp_path: Path) -> None:
    secret = "planted-secret-across"
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (HASH_CHUNK_BYTES - 7) + secret.encode() + b"y" * 10)
    with pytest.raises(CredentialLeakError, match="big.bin"):
        Redactor([secret]).check_file(path)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "clean.txt").write_text("nothing here")
    Redactor([secret]).check_file(folder)


@pytest.fixture
def record_factory():
    """Restores the process's log-record factory after a test that installs redaction."""
    factory = logging.getLogRecordFactory()
    yield factory
    logging.setLogRecordFactory(factory)


def captured(logger_name: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger with its own handler, added AFTER redaction was installed (message + traceback)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_every_log_record_is_redacted_when_created(record_factory) -> None:
    install_log_redaction(Redactor(["planted-log-secret"]))
    logger, stream = captured("moe2dense.test.redaction")
    logger.info("key=%s done", "planted-log-secret")
    try:
        raise RuntimeError("connect failed for planted-log-secret")
    except RuntimeError:
        logger.exception("upload failed")
    install_log_redaction(Redactor(["second-log-secret"]))  # replaces the redactor, does not stack
    logger.info("key=%s, old planted-log-secret", "second-log-secret")
    text = stream.getvalue()
    assert "planted-log-secret" not in text.split("old")[0] and "second-log-secret" not in text
    assert text.startswith(f"key={MASK} done\nupload failed\nTraceback")
    assert f"RuntimeError: connect failed for {MASK}" in text
    assert text.endswith(f"key={MASK}, old planted-log-secret\n")  # only the current secrets are hidden
    original = getattr(
        record_factory, "base", record_factory
    )  # an earlier run in this process may have installed one
    assert logging.getLogRecordFactory().base is original  # one wrapper around the original


def test_every_runtime_installs_the_environments_redaction(record_factory, tmp_path, monkeypatch) -> None:
    """What every flow run and stage task does first (Runtime.from_environment): a credential of the
    environment is masked on Prefect's run loggers and on any stdlib logger."""
    from moe2dense_platform.runtime import Runtime

    monkeypatch.setenv("MOE2DENSE_HOME", str(tmp_path))
    monkeypatch.setenv("MOE2DENSE_AWS_SECRET_ACCESS_KEY", "FAKESECRET-runtime-123")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "FAKESECRET-token-456")
    Runtime.from_environment()
    for name in ("prefect.flow_runs", "prefect.task_runs", "botocore.endpoint"):
        logger, stream = captured(name)
        logger.warning("using %s and %s", "FAKESECRET-runtime-123", "FAKESECRET-token-456")
        assert stream.getvalue() == f"using {MASK} and {MASK}\n", name


def test_run_url_points_at_the_mlflow_ui_page() -> None:
    assert run_url("http://mlflow:5000/", "3", "abc") == "http://mlflow:5000/#/experiments/3/runs/abc"


def test_an_unreachable_tracking_server_fails_fast_with_its_address_and_the_stage_is_not_retried(
    tmp_path: Path,
) -> None:
    from prefect.states import Failed

    from moe2dense_platform.processes import free_port
    from moe2dense_platform.runtime import transient_failure
    from moe2dense_platform.tracking import TrackingUnavailableError, stage_run, tracking_client

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(home=tmp_path, mlflow_tracking_uri=uri, mlflow_http_max_retries=1)
    client = tracking_client(settings)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # MLflow reads its retries from there
    named = f"MLflow tracking server {uri} is unreachable"
    with (
        pytest.raises(TrackingUnavailableError, match=named) as failure,
        stage_run(client, "0" * 32, "x", Redactor()),
    ):
        pass
    assert transient_failure(None, None, Failed(data=failure.value)) is False
