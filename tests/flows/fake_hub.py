"""A small fake model hub on 127.0.0.1 speaking the two Hub API calls `moe2dense_platform.hub.HubClient` makes,
and, for a release with files, the three `huggingface_hub.snapshot_download` makes.

    GET /api/models?author=<org>[&search=<text>][&limit=n]   → [{"id": ...}, ...] (newest first)
    GET /api/models/<org>/<name>/revision/<rev>[?blobs=true] → {"id", "sha", "config": {"model_type",
        "architectures"}, "safetensors": {"parameters", "total"}, "siblings": [{"rfilename"[, "size"]}]}
    GET /api/models/<org>/<name>/tree/<rev>                  → [{"type": "file", "path", "size", "oid"}]
    HEAD|GET /<org>/<name>/resolve/<rev>/<file>              → the file (X-Repo-Commit, ETag headers)

As on the real hub, `<rev>` is a branch (`main`) or the commit sha itself, `safetensors` is absent when the
model has no parameter count, and sibling sizes are listed only with `blobs=true`. `models` maps
id → FakeRelease (replace one to publish a new commit); `fail_next` makes the next N requests
answer HTTP 503; `requests` records every path served.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

SHARDS = 2


@dataclass(frozen=True)
class FakeRelease:
    """One model's head commit: sha, config.model_type (None: no config), parameter count and bytes of its
    safetensors shards (None: the hub reports none), and `folder`: the files the repo holds at this commit,
    served for download (None: metadata only, with made-up file names and sizes)."""

    sha: str
    model_type: str | None
    num_parameters: int | None = None
    checkpoint_bytes: int | None = None
    architectures: tuple[str, ...] = ()
    folder: Path | None = None

    def files(self) -> dict[str, Path]:
        """{name: path} of the files served at this commit."""
        return {p.name: p for p in sorted(self.folder.iterdir()) if p.is_file()} if self.folder else {}

    def info(self, model_id: str, with_sizes: bool) -> dict[str, object]:
        config = {"model_type": self.model_type, "architectures": list(self.architectures)}
        files = [("config.json", 1000)]
        if self.checkpoint_bytes is not None:
            shard = self.checkpoint_bytes // SHARDS
            files += [(f"model-{i:05d}-of-{SHARDS:05d}.safetensors", shard) for i in range(1, SHARDS + 1)]
        if self.folder is not None:
            files = [(name, path.stat().st_size) for name, path in self.files().items()]
        siblings = [{"rfilename": name, **({"size": size} if with_sizes else {})} for name, size in files]
        info = {"id": model_id, "sha": self.sha, "config": config if self.model_type else None}
        if self.num_parameters is not None:
            info["safetensors"] = {"parameters": {"BF16": self.num_parameters}, "total": self.num_parameters}
        return {**info, "siblings": siblings}


class FakeHub:
    def __init__(self, models: dict[str, FakeRelease]):
        self.models = dict(models)
        self.fail_next = 0
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:  # noqa: N802
                hub.requests.append(self.path)
                if hub.fail_next:
                    hub.fail_next -= 1
                    return self._send(503, {"error": "try again"})
                url = urlparse(self.path)
                query = parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if parts == ["api", "models"]:
                    return self._send(200, hub.listing(query))
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
                    release = hub.release(parts[2], parts[3], parts[5])
                    if release is not None:
                        with_sizes = query.get("blobs") == ["true"]
                        return self._send(200, release.info(f"{parts[2]}/{parts[3]}", with_sizes))
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
                    release = hub.release(parts[2], parts[3], parts[5])
                    if release is not None:
                        return self._send(
                            200,
                            [
                                {
                                    "type": "file",
                                    "path": name,
                                    "size": path.stat().st_size,
                                    "oid": blob_id(path),
                                }
                                for name, path in release.files().items()
                            ],
                        )
                if len(parts) == 5 and parts[2] == "resolve":
                    release = hub.release(parts[0], parts[1], parts[3])
                    path = release and release.files().get(parts[4])
                    if path:
                        return self._send_file(release.sha, path, body)
                return self._send(404, {"error": f"{url.path} not found"})

            def _send_file(self, sha: str, path: Path, body: bool) -> None:
                payload = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{blob_id(path)}"')
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def _send(self, status: int, body: object) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def release(self, org: str, name: str, revision: str) -> FakeRelease | None:
        """The release of `org/name` when `revision` is `main` or its commit sha."""
        release = self.models.get(f"{org}/{name}")
        return release if release is not None and revision in ("main", release.sha) else None

    def listing(self, query: dict[str, list[str]]) -> list[dict[str, str]]:
        author, search = query.get("author", [None])[0], query.get("search", [None])[0]
        limit = int(query.get("limit", ["1000"])[0])
        ids = [i for i in reversed(list(self.models)) if author is None or i.split("/")[0] == author]
        ids = [i for i in ids if search is None or search.lower() in i.lower()]
        return [{"id": i} for i in ids[:limit]]

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def blob_id(path: Path) -> str:
    """The file's id on the fake hub (its etag): sha256 of its bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


RELEASES = {
    "Qwen/Qwen3-30B-A3B": FakeRelease(
        "a" * 40, "qwen3_moe", 30_532_122_624, 61_064_245_248, ("Qwen3MoeForCausalLM",)
    ),
    "Qwen/Qwen3-8B": FakeRelease("b" * 40, "qwen3", 8_190_735_360, 16_381_470_720),  # dense: not an MoE
    "Qwen/Qwen3-MoE-Custom": FakeRelease("c" * 40, "unknown_moe", 1_000_000_000, 2_000_000_000),
    "Qwen/Qwen3-235B-A22B": FakeRelease("d" * 40, "qwen3_moe", 235_093_634_560, 470_187_269_120),
    "deepseek-ai/DeepSeek-V2-Lite": FakeRelease("e" * 40, "deepseek_v2", 15_706_484_224, 31_412_968_448),
    "allenai/OLMoE-1B-7B-0924": FakeRelease("9" * 40, "olmoe"),  # no size metadata on the hub
    "someone/Mixtral-8x7B-copy": FakeRelease("f" * 40, "mixtral", 46_702_792_704, 93_405_585_408),
}
"""The fake hub's catalogue (newest last); `someone` is an organisation nobody watches."""
