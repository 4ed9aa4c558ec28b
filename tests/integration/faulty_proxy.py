"""A real flaky endpoint: an HTTP proxy on 127.0.0.1 that forwards to an upstream server and injects
faults into chosen requests, so retries and atomicity are tested against real network failures.

`FaultyProxy(upstream_url, fault)`: `fault(n, method, path)` is asked for each request (n = 1, 2, …)
and returns one of
- PASS: forward the request and relay the response unchanged;
- DROP: close the connection without any response (the client sees the connection closed);
- TRUNCATE: forward, then send the response headers (full Content-Length) and only half of the
  body before closing (the client sees a body cut off mid-stream).
`requests` records (method, path, action) of every request seen.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

PASS, DROP, TRUNCATE = "pass", "drop", "truncate"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "upgrade"}
Fault = Callable[[int, str, str], str]


def drop_first(count: int) -> Fault:
    """DROP requests 1…count, PASS the rest."""
    return lambda n, method, path: DROP if n <= count else PASS


class FaultyProxy:
    def __init__(self, upstream_url: str, fault: Fault) -> None:
        upstream = urlparse(upstream_url)
        self.upstream = (upstream.hostname, upstream.port)
        self.fault = fault
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def count(self, action: str) -> int:
        return sum(1 for _, _, a in self.requests if a == action)

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            action = self.fault(len(self.requests) + 1, method, path)
            self.requests.append((method, path, action))
            return action

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return None

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._decide(self.command, self.path)
                if action == DROP:
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                upstream.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and (
                        key.lower() != "content-length" or self.command == "HEAD"
                    ):
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if action == TRUNCATE:
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler
