"""Errors the distillation package raises (subclasses of the core's Moe2DenseError)."""

from moe2dense_core.errors import Moe2DenseError


class DistillError(Moe2DenseError):
    """A distillation request is impossible: mismatched vocabularies, too little data, a cache that
    does not belong to the data, an unreachable teacher top-k, a checkpoint that does not fit."""


class DataError(Moe2DenseError):
    """A text data spec names no usable text: missing files, an unknown format or column, no tokens."""
