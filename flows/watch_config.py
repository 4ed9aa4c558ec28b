"""What the `watch` flow looks for: nothing until the user names it (example: configs/watch.example.yaml).

    hub_url: https://huggingface.co
    deployment: convert/default
    entries:
      - organisation: Qwen
        name_pattern: "A3B$"
        recipe: /srv/moe2dense/recipes/qwen3_30b_a3b.yaml     # absolute path, or s3://… / file://… in the store
        max_parameters: 40_000_000_000                        # and/or max_checkpoint_bytes
        model_types: [qwen3_moe]                              # default: every family moe2dense supports

Each entry is checked when the config is loaded (flow parameter, deployment parameter on the worker, or
`load_watch_config`): a relative or missing recipe path, a URI outside the artifact store's schemes, or an
entry with no size limit is an error naming the entry, raised before any hub call.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moe2dense_core.arch import supported_model_types
from moe2dense_core.errors import Moe2DenseError
from moe2dense_platform.hub import DEFAULT_HUB_URL
from moe2dense_platform.recipe import format_validation_error

STORE_URI_SCHEMES = ("s3://", "file://")
"""A recipe named by URI lives in the artifact store (moe2dense_platform/storage.py writes these schemes)."""


class WatchConfigError(Moe2DenseError):
    """A watch config file is missing, not YAML, or has an invalid field (named by its dotted path)."""


class WatchEntry(BaseModel):
    """One organisation to watch, with the recipe, size limit and architecture filter of its conversions.

    model_types: `config.model_type` values to convert; None = every family in moe2dense_core.arch's registry.
    max_parameters / max_checkpoint_bytes: a release larger than either (hub metadata: `safetensors.total`,
    Σ size of its `*.safetensors` files), or whose size the hub does not report, is skipped.
    revision: the branch, tag or commit read; it is resolved to a commit sha before anything is keyed.
    limit: how many of the organisation's newest models are read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    organisation: str = Field(..., min_length=1)
    recipe: str = Field(..., min_length=1)
    recipe_overrides: tuple[str, ...] = ()
    name_pattern: str = ".*"
    model_types: tuple[str, ...] | None = None
    max_parameters: int | None = Field(None, gt=0)
    max_checkpoint_bytes: int | None = Field(None, gt=0)
    revision: str = "main"
    limit: int = Field(50, ge=1)

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

    @model_validator(mode="after")
    def _recipe_and_limit(self) -> WatchEntry:
        if self.max_parameters is None and self.max_checkpoint_bytes is None:
            raise ValueError(f"watch entry {self.label}: set max_parameters and/or max_checkpoint_bytes")
        if self.is_stored_recipe:
            return self
        if "://" in self.recipe:
            raise ValueError(
                f"watch entry {self.label}: recipe {self.recipe!r} is a URI of none of {STORE_URI_SCHEMES}"
            )
        path = Path(self.recipe)
        if not path.is_absolute():
            raise ValueError(
                f"watch entry {self.label}: recipe {self.recipe!r} is a relative path; give an absolute "
                "path (workers run in other folders) or a stored artifact URI"
            )
        if not path.is_file():
            raise ValueError(f"watch entry {self.label}: recipe file {self.recipe} does not exist")
        return self

    @property
    def label(self) -> str:
        """`<organisation>/<name_pattern>`: how errors and logs name this entry."""
        return f"{self.organisation}/{self.name_pattern}"

    @property
    def is_stored_recipe(self) -> bool:
        return self.recipe.startswith(STORE_URI_SCHEMES)

    @property
    def wanted_model_types(self) -> tuple[str, ...]:
        return self.model_types or tuple(supported_model_types())


class WatchConfig(BaseModel):
    """The hub, the deployment that converts, and the entries to watch (none by default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hub_url: str = DEFAULT_HUB_URL
    deployment: str = "convert/default"
    entries: tuple[WatchEntry, ...] = ()


def load_watch_config(path: Path | str) -> WatchConfig:
    """Read and validate a YAML watch config; raises WatchConfigError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise WatchConfigError(f"watch config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise WatchConfigError(f"watch config {path}: not valid YAML ({error})") from None
    try:
        return WatchConfig.model_validate(data or {})
    except ValidationError as error:
        raise WatchConfigError(
            format_validation_error(error, str(path), kind="watch config", model=WatchConfig)
        ) from None
