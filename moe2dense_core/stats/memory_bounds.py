"""The memory bounds of calibration (bytes): their defaults and the ONE rule for their values, in a module
that imports only moe2dense_core.errors (itself import-free), so that settings and recipe schemas can name
them without loading the statistics machinery (transformers, torch).

DEFAULT_MAX_CHUNK_BYTES   all-expert outputs [E, T_chunk, H] and one block's intermediates computed at once
                          (hooks.py)
DEFAULT_MAX_HIDDEN_BYTES  calibration hidden states held in RAM by layer-by-layer collection; beyond it they
                          spill to a memory-mapped temporary file (hidden_store.py)
DEFAULT_MAX_BLOCK_BYTES   float32 bytes of one block of routed experts read from disk at a time
                          (streamed_experts.py)
The peak memory of layer-by-layer calibration as a function of them: collect.py's module docstring.

The rule: a bound is a whole number of bytes (not a bool) of at least MINIMUM_BYTES[name]. max_chunk_bytes
and max_block_bytes ≥ 1 (a bound below one token's outputs or one expert's weights still works: one token
per chunk, one expert per block); max_hidden_bytes ≥ 0, where 0 keeps no hidden state in RAM: always spill
to disk, for a worker with tiny memory. collect_stats (at entry, before any batch is read), convert() and
the recipe's `statistics` section check it here, and so do the parts that use one bound (hooks.py,
streamed_experts.py, hidden_store.py).
"""

from moe2dense_core.errors import StatsError

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
DEFAULT_MAX_HIDDEN_BYTES = 2 * 2**30
DEFAULT_MAX_BLOCK_BYTES = 64 * 2**20

MINIMUM_BYTES = {"max_chunk_bytes": 1, "max_hidden_bytes": 0, "max_block_bytes": 1}
"""The least value of each bound (module docstring)."""


def memory_bound_problem(name: str, value: object) -> str | None:
    """None when `value` is a valid bound `name`, else what it must be ("a positive number of bytes",
    "a number of bytes ≥ 0 (0: always spill to disk)")."""
    minimum = MINIMUM_BYTES[name]
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return None
    return "a positive number of bytes" if minimum else "a number of bytes ≥ 0 (0: always spill to disk)"


def check_memory_bounds(prefix: str = "", **bounds: object) -> None:
    """Refuse the first of `bounds` ({name: value}, names among MINIMUM_BYTES) that breaks the rule, with
    StatsError `<prefix><name> must be <what it must be>, got <value>`; prefix: how the caller spells the
    names (convert(): "calibration_")."""
    for name, value in bounds.items():
        problem = memory_bound_problem(name, value)
        if problem is not None:
            raise StatsError(f"{prefix}{name} must be {problem}, got {value!r}")
