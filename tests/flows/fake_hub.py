"""A small fake model hub on 127.0.0.1 speaking the two Hub API calls `tasks.hub.HubClient` makes.

    GET /api/models?author=<org>[&search=<text>][&limit=n]   → [{"id": ...}, ...] (newest first)
    GET /api/models/<org>/<name>/revision/<rev>              → {"id", "sha", "config": {"model_type"}}

`models` maps id → (sha, model_type); `fail_next` makes the next N requests answer HTTP 503;
`requests` records every path served.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeHub:
    def __init__(self, models: dict[str, tuple[str, str | None]]):
        self.models = dict(models)
        self.fail_next = 0
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                hub.requests.append(self.path)
                if hub.fail_next:
                    hub.fail_next -= 1
                    return self._send(503, {"error": "try again"})
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if parts == ["api", "models"]:
                    return self._send(200, hub.listing(parse_qs(url.query)))
                if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
                    model_id = f"{parts[2]}/{parts[3]}"
                    if model_id in hub.models:
                        sha, model_type = hub.models[model_id]
                        config = {"model_type": model_type} if model_type else None
                        return self._send(200, {"id": model_id, "sha": sha, "config": config})
                return self._send(404, {"error": f"{url.path} not found"})

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
