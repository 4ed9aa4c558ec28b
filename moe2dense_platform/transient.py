"""Bounded retries with exponential backoff, for transient storage errors only.

botocore already retries each single request (standard mode). This wrapper retries WHOLE operations,
which botocore cannot: a download whose body stream breaks half-way, a multipart upload whose part
failed after botocore's attempts, a connection refused while an endpoint restarts.

Transient [defined here]: connection-level failures (refused, reset, closed, timed out, truncated
body) and S3 error codes that mean "try again" (`TRANSIENT_S3_CODES`), found anywhere in the
exception's cause chain. Everything else (missing key, access denied, integrity errors) is raised at
once: retrying it would only hide the fault.

Delay before retry i (i = 1, 2, …): min(backoff_max_s, backoff_s · 2^(i-1)).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ResponseStreamingError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import ProtocolError

from moe2dense_platform.artifact_manifest import StorageError

_log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_S3_CODES = frozenset(
    {
        "RequestTimeout",
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "500",
        "502",
        "503",
        "504",
    }
)
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    BotoConnectionError,  # endpoint unreachable, connect timeout
    HTTPClientError,  # connection closed / reset, read timeout, proxy errors
    ResponseStreamingError,  # body cut off while streaming
    IncompleteReadError,
    ProtocolError,  # urllib3, when a body read fails below botocore
    ConnectionError,  # builtin: reset, refused, broken pipe
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    """True when `error` or any exception in its cause/context chain is a transient failure."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return False
        if isinstance(current, TRANSIENT_EXCEPTIONS):
            return True
        if (
            isinstance(current, ClientError)
            and current.response.get("Error", {}).get("Code") in TRANSIENT_S3_CODES
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """max_attempts ≥ 1 tries in all; backoff_s · 2^(i-1) seconds (capped) before retry i."""

    max_attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 20.0

    def delay(self, retry: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** (retry - 1))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")

    def run(self, operation: Callable[[], T], description: str) -> T:
        """Run `operation`, retrying transient failures; raise StorageError naming `description` at the end."""
        attempt = 1
        while True:
            try:
                return operation()
            except Exception as error:
                if not is_transient(error):
                    raise
                if attempt >= self.max_attempts:
                    raise StorageError(
                        f"{description}: still failing after {attempt} attempts: {type(error).__name__}: {error}"
                    ) from error
                delay = self.delay(attempt)
                _log.warning(
                    "%s: transient %s (attempt %d/%d), retrying in %.2fs",
                    description,
                    type(error).__name__,
                    attempt,
                    self.max_attempts,
                    delay,
                )
                time.sleep(delay)
                attempt += 1
