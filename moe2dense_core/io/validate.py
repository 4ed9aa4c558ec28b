"""validate_checkpoint: prove a checkpoint and its config agree, from headers only, before any compute.

Checks, in order (the first failure raises, naming the field / file / tensor):
1. `config.model_type` has a spec (else UnsupportedArchitectureError listing the supported types);
2. the config's MoE fields parse (spec.dims: E, k ≤ E, widths, layer placement);
3. `model.embed_tokens.weight` is [vocab_size, hidden_size] (when the config names vocab_size);
4. every router / routed-expert / shared / dense-MLP tensor the config implies exists with the expected
   shape (spec.expected_shapes, per layer);
5. no routed expert exists on disk beyond the configured count (`…experts.{e ≥ E}.…`).
No tensor data is read.
"""

from __future__ import annotations

import re

from moe2dense_core.arch.spec import MoEArchSpec, MoEDims, get_spec
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.reader import CheckpointReader

_EXPERT_INDEX = re.compile(r"^model\.layers\.(\d+)\.[\w.]*?experts\.(\d+)\.")
EMBEDDING = "model.embed_tokens.weight"


def validate_checkpoint(reader: CheckpointReader, spec: MoEArchSpec | None = None) -> MoEDims:
    """Run every check of the module docstring; return the validated MoEDims."""
    spec = spec or get_spec(reader.model_type)
    if spec.model_type != reader.model_type:
        raise CheckpointError(
            f"{reader.model_dir}/config.json: model_type {reader.model_type!r} does not match spec {spec.model_type!r}"
        )
    dims = spec.dims(reader.config)
    where = reader.index_file or reader.model_dir

    vocab = reader.config.get("vocab_size")
    if EMBEDDING in reader and isinstance(vocab, int):
        _check_shape(reader, EMBEDDING, (vocab, dims.hidden), "vocab_size / hidden_size")

    for layer in range(dims.num_layers):
        for name, shape in spec.expected_shapes(reader.config, layer).items():
            if name not in reader:
                raise CheckpointError(
                    f"{where}: tensor {name!r} (layer {layer}) that config.json implies is missing from the checkpoint"
                )
            _check_shape(reader, name, shape, "the MoE fields")

    for name in reader.names():
        match = _EXPERT_INDEX.match(name)
        if match and int(match.group(2)) >= dims.num_experts:
            raise CheckpointError(
                f"{where}: tensor {name!r} is routed expert {match.group(2)} but config.json declares "
                f"{dims.num_experts} experts"
            )
    return dims


def _check_shape(reader: CheckpointReader, name: str, expected: tuple[int, ...], fields: str) -> None:
    actual = reader.shape(name)
    if tuple(actual) != tuple(expected):
        raise CheckpointError(
            f"{reader.model_dir}: tensor {name!r} in {reader.shard_of(name)} has shape {list(actual)}, but "
            f"config.json ({fields}) implies {list(expected)}"
        )
