"""Redaction: no credential ever reaches an MLflow param, tag, artifact or a log line.

A `Redactor` knows the secret VALUES to hide:
- every set `SecretStr` of the settings (AWS keys, session token, MLflow token/password, Prefect key);
- the value of every environment variable whose NAME looks like a credential (`SECRET_NAME_PATTERN`:
  a word KEY, SECRET, TOKEN, PASSWORD, CREDENTIALS… between `_`/`.`/`-` or the ends), at least `MIN_SECRET_CHARS` long, so short
  flags such as `true` are never treated as secrets;
- any extra values given.
and the KEYS whose values are hidden whatever they hold (a param named `aws_secret_access_key`).

`redact(text)` replaces every secret occurrence by `***` (longest first). Text artifacts are not edited:
`check_file` refuses a file that contains a secret (a silently changed artifact would be worse).
`RedactingFilter` rewrites log records on handlers, where every propagated record passes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from tasks.artifact_manifest import StorageError, iter_chunks
from tasks.settings import Settings

MASK = "***"
MASK_IN_NAMES = "redacted"  # metric/param/tag names allow only [A-Za-z0-9_\-. :/]
MIN_SECRET_CHARS = 8
SECRET_NAME_PATTERN = re.compile(
    r"(?:^|[_.-])(?:KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?|APIKEY)(?:$|[_.-])", re.IGNORECASE
)


class CredentialLeakError(StorageError):
    """Something about to be logged contains a credential; it was not logged."""


class Redactor:
    """Hides known secret values (see module docstring). Never print `secrets`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        self._secrets = sorted(unique, key=len, reverse=True)
        self._encoded = [s.encode() for s in self._secrets]

    @classmethod
    def from_environment(
        cls, settings: Settings | None = None, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()
    ) -> Redactor:
        environ = os.environ if environ is None else environ
        secrets = [value for name, value in environ.items() if SECRET_NAME_PATTERN.search(name)]
        if settings is not None:
            secrets += settings.secret_values()
        return cls([*secrets, *extra])

    @staticmethod
    def is_secret_key(key: str) -> bool:
        """A param/tag name that holds a credential by its name (its value is always masked)."""
        return bool(SECRET_NAME_PATTERN.search(key.rsplit(".", 1)[-1]))

    def redact(self, text: str, mask: str = MASK) -> str:
        for secret in self._secrets:
            text = text.replace(secret, mask)
        return text

    def redact_name(self, name: str) -> str:
        """A metric/param/tag/run name with secrets replaced by a mask MLflow accepts in names."""
        return self.redact(name, MASK_IN_NAMES)

    def redact_item(self, key: str, value: str) -> tuple[str, str]:
        """(key, value) safe to log: the key redacted, the value masked for credential-named keys."""
        return self.redact_name(key), MASK if self.is_secret_key(key) else self.redact(value)

    def contains_secret(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets)

    def check_file(self, path: Path) -> None:
        """Raise CredentialLeakError if any file at/under `path` contains a secret (streamed scan)."""
        if not self._encoded:
            return
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        overlap = max(len(s) for s in self._encoded) - 1
        for file in files:
            tail = b""
            with open(file, "rb") as stream:
                for chunk in iter_chunks(stream):
                    window = tail + chunk
                    if any(secret in window for secret in self._encoded):
                        raise CredentialLeakError(f"{file} contains a credential; refusing to log it")
                    tail = window[-overlap:] if overlap else b""

    def logging_filter(self) -> RedactingFilter:
        return RedactingFilter(self)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message with secrets masked (args folded into msg)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.redactor.contains_secret(message):
            record.msg, record.args = self.redactor.redact(message), ()
        return True


def install_log_redaction(redactor: Redactor) -> RedactingFilter:
    """Attach one RedactingFilter (replacing older ones) to every handler of every existing logger.

    Handlers added later are not covered: call this after logging is configured (e.g. at flow start)."""
    log_filter = redactor.logging_filter()
    loggers = [logging.getLogger(), *(obj for obj in logging.Logger.manager.loggerDict.values()
                                      if isinstance(obj, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
                handler.removeFilter(old)
            handler.addFilter(log_filter)
    return log_filter
