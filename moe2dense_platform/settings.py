"""Settings: where artifacts, runs and flow state live. The embedded default or the team stack, by configuration.

Sources, highest priority first: keyword arguments, environment variables `MOE2DENSE_<FIELD>`, an
optional YAML settings file (`settings_file=` or `MOE2DENSE_SETTINGS_FILE`), the ecosystem's own
variables (`PREFECT_API_URL` or the active Prefect profile, `MLFLOW_TRACKING_URI`, the standard AWS
variables: moe2dense_platform/ecosystem_env.py), then the defaults below. So a Prefect, MLflow or boto3 user's usual
setup works as is, and any `MOE2DENSE_*` setting overrides it; `MOE2DENSE_PREFECT_API_URL=""` (empty)
chooses the temporary in-process API even when `PREFECT_API_URL` is set.

Embedded default (one machine, no servers) [defined here]:
- artifacts in the local folder `<home>/artifacts`;
- MLflow tracking in the SQLite file `<home>/mlflow.db`, run artifacts in `<home>/mlartifacts`;
- Prefect with a temporary in-process API (`PREFECT_API_URL` unset), `PREFECT_HOME=<home>/prefect`,
  flow results persisted under `<home>/prefect/results`. Stage task results (the task cache) live in
  the artifact store, local or S3, so every process sharing the store shares them (moe2dense_platform/result_storage.py).

Team stack: `artifact_root: s3://bucket/prefix` plus `s3_endpoint_url` (MinIO or any S3 API),
`mlflow_tracking_uri: http://mlflow:5000`, `prefect_api_url: http://prefect:4200/api`.

Credentials are `SecretStr`: they print as `**********`, and `secret_values()` lists them for the redaction
in `moe2dense_platform/tracking.py`. They reach boto3 and MLflow only through `s3_client_kwargs()` and `environment()`.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from moe2dense_platform.ecosystem_env import EcosystemSettingsSource

ENV_PREFIX = "MOE2DENSE_"
SETTINGS_FILE_ENV = f"{ENV_PREFIX}SETTINGS_FILE"
MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every deployment-dependent choice; nothing here changes what a conversion computes."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    settings_file: Path | None = Field(None, description="YAML file with any of these fields.")
    home: Path = Field(Path(".moe2dense"), description="Folder for all local state of the embedded default.")

    # ---- artifact store --------------------------------------------------------------------------
    artifact_root: str | None = Field(
        None, description="Local folder or s3://bucket/prefix; None = <home>/artifacts."
    )
    cache_dir: Path | None = Field(None, description="Local copies of remote artifacts; None = <home>/cache.")
    s3_endpoint_url: str | None = Field(None, description="Any S3-compatible endpoint; None = AWS.")
    s3_region: str = "us-east-1"
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    s3_multipart_threshold_mb: int = Field(64, ge=5, description="Files at least this large go multipart.")
    s3_multipart_chunksize_mb: int = Field(64, ge=5, description="Part size of multipart transfers.")
    s3_max_concurrency: int = Field(4, ge=1)
    s3_botocore_total_attempts: int = Field(
        5, ge=1, description="Tries per request by botocore itself (standard mode), first try included."
    )
    storage_max_attempts: int = Field(4, ge=1, description="Whole-operation retries on transient errors.")
    storage_backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each attempt.")
    storage_backoff_max_s: float = Field(20.0, ge=0)
    s3_connect_timeout_s: float = Field(10.0, gt=0)
    s3_read_timeout_s: float = Field(60.0, gt=0)

    # ---- MLflow ----------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(None, description="None = sqlite:///<home>/mlflow.db.")
    mlflow_artifact_location: str | None = Field(
        None,
        description="Artifact location of new experiments; None = <home>/mlartifacts when tracking is the "
        "local SQLite file, else the server's default (its --artifacts-destination).",
    )
    mlflow_tracking_token: SecretStr | None = None
    mlflow_tracking_password: SecretStr | None = None
    mlflow_http_max_retries: int = Field(
        4,
        ge=0,
        description="Retries of each MLflow request after its first try (MLflow's own default, 7, "
        "keeps a flow waiting ~4 minutes per request on a stopped server).",
    )
    mlflow_http_backoff_factor: int = Field(
        1,
        ge=0,
        description="Delay before retry i ≥ 2 of a request: factor · 2^(i-1) s + jitter; the "
        "first retry is immediate.",
    )
    mlflow_http_backoff_jitter: float = Field(1.0, ge=0, description="Up to this many seconds more a retry.")
    mlflow_http_timeout_s: int = Field(20, ge=1, description="Seconds an MLflow request waits for an answer.")

    # ---- Prefect ---------------------------------------------------------------------------------
    prefect_api_url: str | None = Field(None, description="None = temporary in-process API.")
    prefect_api_key: SecretStr | None = None
    prefect_ephemeral_startup_timeout_s: int = Field(90, ge=1)

    @field_validator(
        "artifact_root",
        "s3_endpoint_url",
        "mlflow_tracking_uri",
        "mlflow_artifact_location",
        "prefect_api_url",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("artifact_root", "s3_endpoint_url", "mlflow_tracking_uri", "prefect_api_url")
    @classmethod
    def _no_credentials_in_urls(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).password:
            raise ValueError("must not embed a password; use the SecretStr credential fields instead")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(init_settings, InitSettingsSource)
        ecosystem = EcosystemSettingsSource(settings_cls)
        settings_file = init_settings.init_kwargs.get("settings_file") or os.environ.get(SETTINGS_FILE_ENV)
        if settings_file is None:
            return init_settings, env_settings, ecosystem
        if not Path(settings_file).is_file():
            raise FileNotFoundError(f"settings file {settings_file} ({SETTINGS_FILE_ENV}) does not exist")
        yaml_file = YamlConfigSettingsSource(settings_cls, yaml_file=settings_file)
        return init_settings, env_settings, yaml_file, ecosystem

    # ---- derived values --------------------------------------------------------------------------
    @property
    def uses_s3(self) -> bool:
        return self.resolved_artifact_root.startswith("s3://")

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root if self.artifact_root is not None else str(self.home / "artifacts")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.home / "cache"

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri is not None:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def resolved_mlflow_artifact_location(self) -> str | None:
        if self.mlflow_artifact_location is not None:
            return self.mlflow_artifact_location
        if self.resolved_mlflow_tracking_uri.startswith("sqlite:"):
            return (self.home / "mlartifacts").resolve().as_uri()
        return None

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    def secret_values(self) -> list[str]:
        """The plain values of every set SecretStr field (for redaction; never log this list)."""
        values = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
        return values

    def s3_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `boto3.client("s3", ...)` (endpoint, region, credentials when set)."""
        kwargs: dict[str, Any] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            secret = getattr(self, name)
            if secret is not None:
                kwargs[name] = secret.get_secret_value()
        return kwargs

    def environment(self) -> dict[str, str]:
        """Environment variables that point Prefect, MLflow and boto3 (inside MLflow) at these stores, plus
        this process's local folders as absolute `MOE2DENSE_*` values, so that a child process started in
        another folder (a worker's flow run) uses the same home and artifact folder.

        Prefect reads its settings when imported: apply them (`apply_environment`) before that.
        """
        prefect_home = self.prefect_home.resolve()
        env = {
            "MOE2DENSE_HOME": str(self.home.resolve()),
            "DO_NOT_TRACK": "true",
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_LOCAL_STORAGE_PATH": str(prefect_home / "results"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(self.prefect_ephemeral_startup_timeout_s),
            "MLFLOW_TRACKING_URI": self.resolved_mlflow_tracking_uri,
            **self.mlflow_http_environment(),
            "AWS_DEFAULT_REGION": self.s3_region,
        }
        if not self.uses_s3:
            env["MOE2DENSE_ARTIFACT_ROOT"] = str(Path(self.resolved_artifact_root).resolve())
        if self.cache_dir is not None:
            env["MOE2DENSE_CACHE_DIR"] = str(self.cache_dir.resolve())
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        secrets = {
            "PREFECT_API_KEY": self.prefect_api_key,
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret_access_key,
            "AWS_SESSION_TOKEN": self.aws_session_token,
            "MLFLOW_TRACKING_TOKEN": self.mlflow_tracking_token,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_tracking_password,
        }
        env.update({key: value.get_secret_value() for key, value in secrets.items() if value is not None})
        return env

    def mlflow_http_environment(self) -> dict[str, str]:
        """MLflow's HTTP client settings, which MLflow reads from these variables at every request. With the
        defaults a request to a stopped server is tried 5 times, waiting 0 s, then 2, 4 and 8 s (each + up
        to 1 s jitter) between tries: it fails after ~15 s, not after MLflow's ~4 minutes, and a server
        back within that time (a restart) is never noticed."""
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_http_max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.mlflow_http_backoff_factor),
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(self.mlflow_http_backoff_jitter),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.mlflow_http_timeout_s),
        }

    def apply_environment(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Write `environment()` into `environ` (default `os.environ`); `PREFECT_API_URL` is removed when
        the embedded default is chosen explicitly (`MOE2DENSE_PREFECT_API_URL=""`)."""
        target = os.environ if environ is None else environ
        if self.prefect_api_url is None:
            target.pop("PREFECT_API_URL", None)
        target.update(self.environment())

    def describe(self) -> dict[str, str]:
        """Where things go, for printing: no secret values."""
        return {
            "artifacts": self.resolved_artifact_root,
            "s3_endpoint": self.s3_endpoint_url or ("AWS default" if self.uses_s3 else "-"),
            "mlflow_tracking_uri": self.resolved_mlflow_tracking_uri,
            "prefect_api": self.prefect_api_url or f"ephemeral (PREFECT_HOME={self.prefect_home})",
        }


def load_settings(settings_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from keyword overrides, the environment, and the settings file (argument or env)."""
    if settings_file is not None:
        overrides["settings_file"] = Path(settings_file)
    return Settings(**overrides)


__all__ = ["ENV_PREFIX", "MIB", "SETTINGS_FILE_ENV", "Settings", "load_settings"]
