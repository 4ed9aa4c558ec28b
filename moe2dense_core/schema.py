"""One rule for every versioned file moe2dense reads back (plans, calibration statistics, artifact
manifests): a reader accepts exactly the `schema_version` it was written for and refuses anything else,
naming the file, before using any other field. A newer or unknown layout is never half-understood."""

from __future__ import annotations

from moe2dense_core.errors import Moe2DenseError


def check_schema_version(
    found: object, supported: int, where: str, error: type[Exception] = Moe2DenseError
) -> int:
    """Return `found` when it equals `supported`; otherwise raise `error` naming `where` and both versions."""
    if type(found) is not int or found != supported:
        raise error(
            f"{where}: schema_version {found!r} is not supported (this moe2dense reads schema_version {supported})"
        )
    return found
