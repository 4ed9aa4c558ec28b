"""Errors raised by the core. Every message names the field, file or tensor at fault."""


class Moe2DenseError(Exception):
    """Base class: anything the core refuses, with a message a user can act on."""


class UnsupportedArchitectureError(Moe2DenseError):
    """`config.model_type` has no MoEArchSpec; the message lists the supported ones."""


class CheckpointError(Moe2DenseError):
    """A checkpoint is unreadable, truncated, corrupt, pickled, or disagrees with its config."""


class PlanError(Moe2DenseError):
    """A plan request is impossible (e.g. K < k or K > E) or a plan does not fit the model."""


class StatsError(Moe2DenseError, ValueError):
    """Calibration input or statistics that do not fit (shapes, layers, expert counts, token ids)."""


class OutputDirError(Moe2DenseError):
    """The output folder cannot be used (exists and is not empty, is a file, or is the teacher's folder)."""


class BudgetMismatchError(Moe2DenseError):
    """Compared students differ in parameter count or token budget; the message names them with their numbers."""


class DistillError(Moe2DenseError):
    """A distillation request is impossible: mismatched vocabularies, too little data, a cache that
    does not belong to the data, an unreachable teacher top-k, a checkpoint that does not fit."""


class DataError(Moe2DenseError):
    """A text data spec names no usable text: missing files, an unknown format or column, no tokens."""


class TeacherError(Moe2DenseError, ValueError):
    """A from-scratch teacher cannot be trained as asked: empty documents, a token stream shorter than
    one training window."""
