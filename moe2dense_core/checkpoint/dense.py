"""check_dense_checkpoint: a written dense checkpoint holds exactly its model's parameters.

Stock transformers fills a parameter missing from a checkpoint with random weights (with only a log
warning) and ignores an unexpected one, so a wrong name is a silently broken model. After assembly the
written folder (config.json + index + shards) is read back from its headers and compared with the model
class built from that config.json on the meta device (expected.py):
    missing     required state-dict names not on disk (tied copies such as lm_head may be absent)
    unexpected  names on disk the model does not have
    mismatched  names whose stored shape differs from the model's
Any of the three raises one CheckpointError listing them, each with its shard file.
"""

from __future__ import annotations

from pathlib import Path

from moe2dense_core.checkpoint.expected import model_tensor_shapes
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.reader import CheckpointReader

_LISTED = 5
"""How many names of each kind the error spells out (then a count)."""


def check_dense_checkpoint(model_dir: str | Path) -> None:
    """Raise CheckpointError unless the tensors in `model_dir` are exactly its config's model parameters."""
    with CheckpointReader(model_dir) as reader:
        expected = model_tensor_shapes(reader.config, str(reader.model_dir / "config.json"))
        on_disk = set(reader.names())
        missing = [name for name in expected.required if name not in on_disk]
        unexpected = [
            f"{name} ({reader.shard_of(name)})" for name in reader.names() if expected.shape(name) is None
        ]
        mismatched = [
            f"{name} ({reader.shard_of(name)}: {list(reader.shape(name))}, expected {list(shape)})"
            for name in reader.names()
            if (shape := expected.shape(name)) is not None and tuple(reader.shape(name)) != shape
        ]
    found = (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
    problems = [_listing(kind, names) for kind, names in found if names]
    if problems:
        raise CheckpointError(
            f"{Path(model_dir)}: the written tensors are not the parameters of {expected.model_class} "
            f"built from its config.json — {'; '.join(problems)}"
        )


def _listing(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{kind}: {shown}{more}"
