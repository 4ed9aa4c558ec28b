"""The ecosystem's own variables as a settings source: what Prefect, MLflow and boto3 users already set.

    field                       read from, first found wins
    prefect_api_url             PREFECT_API_URL, then the active Prefect profile (`prefect config set …`)
    prefect_api_key             PREFECT_API_KEY, then the active Prefect profile
    mlflow_tracking_uri         MLFLOW_TRACKING_URI
    mlflow_tracking_token       MLFLOW_TRACKING_TOKEN
    mlflow_tracking_password    MLFLOW_TRACKING_PASSWORD
    mlflow_http_max_retries     MLFLOW_HTTP_REQUEST_MAX_RETRIES
    mlflow_http_backoff_factor  MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR
    mlflow_http_backoff_jitter  MLFLOW_HTTP_REQUEST_BACKOFF_JITTER
    mlflow_http_timeout_s       MLFLOW_HTTP_REQUEST_TIMEOUT
    s3_endpoint_url             AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL  (botocore's service-specific rule)
    s3_region                   AWS_DEFAULT_REGION, AWS_REGION
    aws_access_key_id           AWS_ACCESS_KEY_ID       ┐ a set: taken only when no MOE2DENSE_* source
    aws_secret_access_key       AWS_SECRET_ACCESS_KEY   │ (keyword, environment, settings file) gives
    aws_session_token           AWS_SESSION_TOKEN       ┘ any credential, so two accounts never mix

This source has the lowest priority of all (below `MOE2DENSE_*` and the settings file), so every
`MOE2DENSE_*` setting overrides the ecosystem's variable. An empty value counts as unset. The Prefect
profile file is PREFECT_PROFILES_PATH, else `$PREFECT_HOME/profiles.toml` (default
`~/.prefect/profiles.toml`); its active profile is PREFECT_PROFILE, else the file's `active` key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

ECOSYSTEM_VARIABLES: dict[str, tuple[str, ...]] = {
    "prefect_api_url": ("PREFECT_API_URL",),
    "prefect_api_key": ("PREFECT_API_KEY",),
    "mlflow_tracking_uri": ("MLFLOW_TRACKING_URI",),
    "mlflow_tracking_token": ("MLFLOW_TRACKING_TOKEN",),
    "mlflow_tracking_password": ("MLFLOW_TRACKING_PASSWORD",),
    "mlflow_http_max_retries": ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",),
    "mlflow_http_backoff_factor": ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",),
    "mlflow_http_backoff_jitter": ("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",),
    "mlflow_http_timeout_s": ("MLFLOW_HTTP_REQUEST_TIMEOUT",),
    "s3_endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "s3_region": ("AWS_DEFAULT_REGION", "AWS_REGION"),
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
}
FROM_PREFECT_PROFILE = {"prefect_api_url": "PREFECT_API_URL", "prefect_api_key": "PREFECT_API_KEY"}
AWS_CREDENTIALS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def active_prefect_profile(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of the active Prefect profile ({} when there is no profiles file or no active one)."""
    prefect_home = Path(environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml").expanduser()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Prefect profiles file {path} is not valid TOML: {error}") from None
    name = environ.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(name, {}) if name else {}
    return {key: str(value) for key, value in profile.items()}


def ecosystem_values(environ: Mapping[str, str], skip_credentials: bool) -> dict[str, str]:
    """{settings field: value} from the ecosystem's variables in `environ` (and the Prefect profile)."""
    profile = active_prefect_profile(environ)
    values = {}
    for field, names in ECOSYSTEM_VARIABLES.items():
        if skip_credentials and field in AWS_CREDENTIALS:
            continue
        found = [environ[name] for name in names if environ.get(name)]
        if not found and field in FROM_PREFECT_PROFILE:
            found = [profile[FROM_PREFECT_PROFILE[field]]] if profile.get(FROM_PREFECT_PROFILE[field]) else []
        if found:
            values[field] = found[0]
    return values


class EcosystemSettingsSource(PydanticBaseSettingsSource):
    """pydantic-settings source of `ecosystem_values(os.environ)`; place it last (lowest priority)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        given = any(self.current_state.get(field) is not None for field in AWS_CREDENTIALS)
        return ecosystem_values(os.environ, skip_credentials=given)


__all__ = ["ECOSYSTEM_VARIABLES", "EcosystemSettingsSource", "active_prefect_profile", "ecosystem_values"]
