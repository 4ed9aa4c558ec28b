"""validate_checkpoint: prove a teacher checkpoint and its config agree, from headers only, before any compute.

Checks, in order (the first failure raises CheckpointError naming the field / file / tensor):
1. `config.model_type` has a spec (else UnsupportedArchitectureError listing the supported types);
2. the config's MoE fields parse (spec.dims: E, k ≤ E, widths, layer placement);
3. every tensor the architecture needs exists with the shape config.json implies — embeddings and other
   tensors outside the decoder layers first, then layer by layer attention / norms (the model class built
   on the meta device) and the FFN block (router, routed, shared, dense-MLP tensors: spec.expected_shapes);
   see expected.py. Tied copies (lm_head with tie_word_embeddings) may be absent;
4. no routed expert exists on disk beyond the configured count (`…experts.{e ≥ E}.…`);
5. no tensor the dense student would inherit is unknown to the architecture: every tensor that
   `spec.rename_for_dense` keeps and that lies outside layers ≥ num_hidden_layers (DeepSeek-V3's
   multi-token-prediction layer, dropped by assembly) must be one of 3.
No tensor data is read. Shard ↔ index consistency (truncation, tensors the index leaves out) is the
reader's job (io/reader.py) and already holds for any `CheckpointReader`.
"""

from __future__ import annotations

import re

from moe2dense_core.arch import get_spec
from moe2dense_core.arch.spec import MoEArchSpec, MoEDims
from moe2dense_core.checkpoint.expected import LAYER_PREFIX, ExpectedTensors, teacher_tensor_shapes
from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.reader import CheckpointReader

_EXPERT_INDEX = re.compile(r"^model\.layers\.(\d+)\.[\w.]*?experts\.(\d+)\.")


def validate_checkpoint(reader: CheckpointReader, spec: MoEArchSpec | None = None) -> MoEDims:
    """Run every check of the module docstring; return the validated MoEDims."""
    spec = spec or get_spec(reader.model_type)
    config_file = reader.model_dir / "config.json"
    if spec.model_type != reader.model_type:
        raise CheckpointError(
            f"{config_file}: model_type {reader.model_type!r} does not match spec {spec.model_type!r}"
        )
    dims = spec.dims(reader.config)
    expected = teacher_tensor_shapes(reader.config, spec, dims, str(config_file))
    where = reader.index_file or reader.model_dir

    for name in expected.required:
        if name not in reader:
            layer = LAYER_PREFIX.match(name)
            at = f" (layer {layer.group(1)})" if layer else ""
            raise CheckpointError(
                f"{where}: tensor {name!r}{at} that config.json implies ({expected.implied_by(name)}) is "
                "missing from the checkpoint"
            )
        check_shape(reader, name, expected)
    for name in expected.optional:
        if name in reader:
            check_shape(reader, name, expected)

    for name in reader.names():
        match = _EXPERT_INDEX.match(name)
        if match and int(match.group(2)) >= dims.num_experts:
            raise CheckpointError(
                f"{where}: tensor {name!r} is routed expert {match.group(2)} but config.json declares "
                f"{dims.num_experts} experts"
            )
        if expected.shape(name) is None and inherited_by_student(name, spec, dims):
            raise CheckpointError(
                f"{reader.model_dir / reader.shard_of(name)}: tensor {name!r} is not a parameter of "
                f"{expected.model_class} built from config.json; the dense student would carry it. "
                "Remove it from the checkpoint or fix config.json"
            )
    return dims


def check_shape(reader: CheckpointReader, name: str, expected: ExpectedTensors) -> None:
    """CheckpointError naming the tensor and its shard when its stored shape differs from the expected one."""
    actual, shape = tuple(reader.shape(name)), expected.shape(name)
    if actual != shape:
        raise CheckpointError(
            f"{reader.model_dir}: tensor {name!r} in {reader.shard_of(name)} has shape {list(actual)}, but "
            f"config.json implies {list(shape or ())} ({expected.implied_by(name)})"
        )


def inherited_by_student(name: str, spec: MoEArchSpec, dims: MoEDims) -> bool:
    """Whether assembly copies teacher tensor `name` into the dense checkpoint: `spec.rename_for_dense`
    keeps it (FFN blocks and FP8 scales are dropped) and it is not in a decoder layer ≥ num_hidden_layers
    ([defined here] DeepSeek-V3's multi-token-prediction module `model.layers.61.*`, which the causal-LM
    forward never runs)."""
    layer = LAYER_PREFIX.match(name)
    return spec.rename_for_dense(name) is not None and not (layer and int(layer.group(1)) >= dims.num_layers)
