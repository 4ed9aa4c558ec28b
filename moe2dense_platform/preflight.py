"""Preflight: before a flow runs any task, check in seconds that what every stage needs is there.

1. the MLflow tracking server answers (one request, no retries, `timeout_s`: an unreachable server fails
   here in seconds, not after MLflow's own ~4 minutes of retries) and accepts the credentials;
2. the artifact store is writable with the credentials: a probe object `_preflight/<uuid>` is written and
   deleted (S3: one botocore attempt, `timeout_s` to connect; local: a probe file in the root).
A failure raises one `PreflightError` naming the endpoint (credentials masked) and what to check. An
embedded tracking store (SQLite / file) needs no server and is not probed.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request
from requests import RequestException

from moe2dense_core.errors import Moe2DenseError
from moe2dense_platform.redaction import Redactor
from moe2dense_platform.s3_store import make_s3_client, parse_s3_uri
from moe2dense_platform.settings import Settings

PREFLIGHT_TIMEOUT_S = 5.0
PROBE_FOLDER = "_preflight"


class PreflightError(Moe2DenseError):
    """The tracking server or the artifact store cannot be used; the message names the endpoint."""


def preflight(settings: Settings, redactor: Redactor, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Both checks of the module docstring; PreflightError on the first that fails."""
    check_tracking_server(settings, redactor, timeout_s)
    check_store_writable(settings, redactor, timeout_s)


def check_tracking_server(settings: Settings, redactor: Redactor, timeout_s: float) -> None:
    uri = settings.resolved_mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    shown = redactor.redact(uri)
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            timeout=timeout_s,
            raise_on_status=False,
            params={"max_results": 1},
        )
    except (MlflowException, RequestException) as error:
        raise PreflightError(
            f"MLflow tracking server {shown} is unreachable within {timeout_s:g} s "
            f"(MOE2DENSE_MLFLOW_TRACKING_URI / MLFLOW_TRACKING_URI): {redactor.redact(str(error))[:300]}"
        ) from None
    if response.status_code in (401, 403):
        raise PreflightError(
            f"MLflow tracking server {shown} refused the credentials (HTTP {response.status_code}): "
            "check MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD / MLFLOW_TRACKING_TOKEN"
        )
    if response.status_code != 200:
        raise PreflightError(
            f"MLflow tracking server {shown} answered HTTP {response.status_code}: "
            f"{redactor.redact(response.text)[:300]}"
        )


def check_store_writable(settings: Settings, redactor: Redactor, timeout_s: float) -> None:
    root = settings.resolved_artifact_root
    name = f"{PROBE_FOLDER}/{uuid.uuid4().hex}"
    if not settings.uses_s3:
        probe = Path(root).expanduser() / name
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise PreflightError(f"artifact store {root} is not writable: {error}") from None
        return
    bucket, prefix = parse_s3_uri(root)
    endpoint = settings.s3_endpoint_url or "AWS S3"
    quick = settings.model_copy(
        update={
            "s3_botocore_total_attempts": 1,
            "s3_connect_timeout_s": timeout_s,
            "s3_read_timeout_s": timeout_s,
        }
    )
    client, key = make_s3_client(quick), f"{prefix}/{name}" if prefix else name
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "?")
        raise PreflightError(
            f"artifact store {root} on {endpoint} refused a write ({code}): check the bucket exists and "
            "the credentials (MOE2DENSE_AWS_* / AWS_*) may write to it"
        ) from None
    except BotoCoreError as error:
        raise PreflightError(
            f"artifact store {root}: S3 endpoint {endpoint} is unreachable within {timeout_s:g} s "
            f"(MOE2DENSE_S3_ENDPOINT_URL): {redactor.redact(str(error))[:300]}"
        ) from None
