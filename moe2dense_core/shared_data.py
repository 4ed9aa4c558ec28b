"""Where the third-party data folder lives: one setting, `MOE2DENSE_SHARED_DATA`.

Defaults to `../shared/data` beside the project checkout. Tests and benchmarks that need it skip
with a clear reason when it is absent; nothing else depends on it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MOE2DENSE_SHARED_DATA"


def shared_data_dir() -> Path:
    """The data folder (it may not exist; callers check)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get(ENV_VAR, default))
