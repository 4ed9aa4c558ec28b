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

Log lines: `install_log_redaction` wraps the process's log-record factory, so every record of every
logger (Prefect's flow/task-run loggers, whose API handler ships run logs to the Prefect server, the
root logger, libraries) is redacted when it is created, before any handler, present or added later,
formats it: the final message and, when it holds a secret, the traceback text. Production installs it
through `install_environment_redaction`, which `Runtime.from_environment()` (every convert / sweep flow
and every stage task) and the teacher and watch flows call first, in the CLI's process and in a
worker's flow-run process alike.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from moe2dense_platform.artifact_manifest import StorageError, iter_chunks
from moe2dense_platform.settings import Settings

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
        cls,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        extra: Iterable[str] = (),
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


class RedactingRecordFactory:
    """A log-record factory: the wrapped factory's record with its message and traceback redacted.

    The message is folded (msg % args) and replaced only when it holds a secret; a traceback (or stack)
    holding one becomes plain redacted text in `exc_text` / `stack_info` (exc_info dropped), which every
    `logging.Formatter` prints as it is."""

    def __init__(self, base: Callable[..., logging.LogRecord], redactor: Redactor) -> None:
        self.base = base
        self.redactor = redactor

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.base(*args, **kwargs)
        redactor = self.redactor
        message = record.getMessage()
        if redactor.contains_secret(message):
            record.msg, record.args = redactor.redact(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if redactor.contains_secret(text):
                record.exc_info, record.exc_text = None, redactor.redact(text)
        if record.stack_info and redactor.contains_secret(record.stack_info):
            record.stack_info = redactor.redact(record.stack_info)
        return record


def install_log_redaction(redactor: Redactor) -> RedactingRecordFactory:
    """Redact every log record this process creates from now on (see module docstring).

    Installing again replaces the redactor (the secrets of the current environment) instead of stacking."""
    current = logging.getLogRecordFactory()
    base = current.base if isinstance(current, RedactingRecordFactory) else current
    factory = RedactingRecordFactory(base, redactor)
    logging.setLogRecordFactory(factory)
    return factory


def install_environment_redaction(settings: Settings | None = None) -> Redactor:
    """The redactor of the current environment (and `settings`, default: read from it), installed on
    every log record; called at the start of every flow run and stage task."""
    redactor = Redactor.from_environment(settings if settings is not None else Settings())
    install_log_redaction(redactor)
    return redactor
