"""A minimal model-hub client speaking the Hugging Face Hub HTTP API (configurable base URL).

Two calls, the same paths and JSON fields as `huggingface_hub.HfApi`:
- `GET {endpoint}/api/models?author=<org>&search=<text>&limit=<n>&sort=createdAt&direction=-1`
  → `[{"id": "org/name", ...}, ...]` (`modelId` accepted as the older spelling of `id`);
- `GET {endpoint}/api/models/<org>/<name>/revision/<revision>?blobs=true` (`HfApi.model_info(...,
  files_metadata=True)`) → `{"id", "sha", "config": {"model_type", "architectures"},
  "safetensors": {"total": <parameters>}, "siblings": [{"rfilename", "size"}, ...]}`: the revision (branch,
  tag or commit) resolved to its commit sha, the architecture, and the size — parameters = `safetensors.total`,
  checkpoint bytes = Σ size of the `*.safetensors` siblings (what a conversion downloads). A size the hub
  does not report is None.
Plain HTTP (httpx) rather than HfApi because HfApi obeys `HF_HUB_OFFLINE`, which the test suite sets
while it talks to a fake hub on 127.0.0.1. The token is a SecretStr and only ever sent as a header.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from moe2dense_core.errors import Moe2DenseError

DEFAULT_HUB_URL = "https://huggingface.co"


class HubError(Moe2DenseError):
    """The hub answered with an error or with JSON missing a field; the message names URL and field.

    transient: a connection failure, HTTP 429 or 5xx — worth retrying; anything else is not.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class HubModel(BaseModel):
    """One model at one commit: id, commit sha, `config.model_type` / `config.architectures` (None / empty
    when it has no config), parameter count and safetensors bytes (None when the hub reports none)."""

    model_config = ConfigDict(frozen=True)

    id: str
    sha: str
    model_type: str | None = None
    architectures: tuple[str, ...] = ()
    num_parameters: int | None = None
    checkpoint_bytes: int | None = None

    @property
    def label(self) -> str:
        """`<id>@<commit sha>`: how a release is named in reports, tags and logs."""
        return f"{self.id}@{self.sha}"


class HubClient:
    """List models by author / search text and read one model's info at a revision."""

    def __init__(
        self, endpoint: str = DEFAULT_HUB_URL, token: SecretStr | None = None, timeout_s: float = 30.0
    ):
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
        self.endpoint = endpoint.rstrip("/")
        self._http = httpx.Client(
            base_url=self.endpoint, headers=headers, timeout=timeout_s, follow_redirects=True
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list_model_ids(
        self, author: str | None = None, search: str | None = None, limit: int = 100
    ) -> list[str]:
        """Ids of the newest `limit` models of `author` whose name contains `search`."""
        params: dict[str, str | int] = {"limit": limit, "sort": "createdAt", "direction": -1}
        if author:
            params["author"] = author
        if search:
            params["search"] = search
        rows = self._get_json("/api/models", params)
        if not isinstance(rows, list):
            raise HubError(f"{self.endpoint}/api/models: expected a JSON list, got {type(rows).__name__}")
        ids = []
        for row in rows:
            model_id = row.get("id") or row.get("modelId") if isinstance(row, dict) else None
            if not model_id:
                raise HubError(f"{self.endpoint}/api/models: an entry has no 'id': {row!r}")
            ids.append(model_id)
        return ids

    def model_info(self, model_id: str, revision: str = "main") -> HubModel:
        """The model at `revision` resolved to its commit sha, with architecture and size."""
        path = f"/api/models/{model_id}/revision/{quote(revision, safe='')}"
        info = self._get_json(path, {"blobs": "true"})
        if not isinstance(info, dict) or not info.get("sha"):
            raise HubError(f"{self.endpoint}{path}: the answer has no 'sha'")
        config = info.get("config") or {}
        weight_sizes = [
            sibling.get("size")
            for sibling in info.get("siblings") or []
            if str(sibling.get("rfilename", "")).endswith(".safetensors")
        ]
        return HubModel(
            id=info.get("id") or model_id,
            sha=info["sha"],
            model_type=config.get("model_type"),
            architectures=tuple(config.get("architectures") or ()),
            num_parameters=(info.get("safetensors") or {}).get("total"),
            checkpoint_bytes=sum(weight_sizes) if weight_sizes and None not in weight_sizes else None,
        )

    def _get_json(self, path: str, params: dict[str, str | int] | None) -> object:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as error:
            raise HubError(
                f"{self.endpoint}{path}: {type(error).__name__}: {error}", transient=True
            ) from error
        if response.status_code != 200:
            transient = response.status_code == 429 or response.status_code >= 500
            message = f"{self.endpoint}{path}: HTTP {response.status_code}: {response.text[:200]}"
            raise HubError(message, transient=transient)
        try:
            return response.json()
        except ValueError as error:
            raise HubError(f"{self.endpoint}{path}: the answer is not JSON") from error
