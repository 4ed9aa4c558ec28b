"""Opening and validating checkpoints, above `arch/` (family specs) and `io/` (reading, writing) in the
layering: `open_teacher` (teacher.py) resolves, reads and validates a teacher once — every tensor against
its config and architecture (validate.py, expected.py), the tokenizer against the model (tokenizer.py),
recorded digests —, and `check_dense_checkpoint` (dense.py) checks a written dense checkpoint against
its model class."""

from moe2dense_core.checkpoint.dense import check_dense_checkpoint
from moe2dense_core.checkpoint.teacher import Teacher, open_teacher
from moe2dense_core.checkpoint.validate import validate_checkpoint

__all__ = ["Teacher", "check_dense_checkpoint", "open_teacher", "validate_checkpoint"]
