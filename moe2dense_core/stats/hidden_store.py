"""HiddenStateStore: the hidden states of every calibration batch, in RAM or spilled to disk.

Layer-by-layer collection carries the hidden states h_b [B_b, T_b, H] of all calibration batches b from
one decoder layer to the next: N·H values for N calibration tokens, in the teacher's dtype. They live in
ONE flat buffer of N·H elements, batch b at offset H·Σ_{c<b} B_c·T_c, and a layer's output overwrites
its input in place, so there is one copy per token whatever the number of layers.

    N·H·itemsize ≤ max_ram_bytes   an ordinary tensor in RAM
    N·H·itemsize > max_ram_bytes   a memory-mapped file (torch.from_file, shared) in a fresh temporary
                                   folder under `spill_dir` (default: the system temp folder; note that
                                   a tmpfs /tmp is RAM, so point it at a disk for large calibrations)
max_ram_bytes is the calibration bound max_hidden_bytes (memory_bounds.py: ≥ 0; 0 always spills).

The file's space is reserved up front (posix_fallocate where the OS has it, so a full disk is an error
here, not a SIGBUS later), and it is unlinked as soon as it is mapped: nothing is left on disk after
`close()`, a crash or a kill. Its pages are file-backed, so the kernel writes them out and drops them
under memory pressure instead of swapping or killing the process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from moe2dense_core.errors import StatsError
from moe2dense_core.stats.memory_bounds import DEFAULT_MAX_HIDDEN_BYTES, check_memory_bounds


class HiddenStateStore:
    """Hidden states [B_b, T_b, H] of batches b = 0 … n−1 in one flat buffer (see module docstring)."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        hidden: int,
        dtype: torch.dtype,
        *,
        max_ram_bytes: int = DEFAULT_MAX_HIDDEN_BYTES,
        spill_dir: str | Path | None = None,
    ) -> None:
        check_memory_bounds(max_hidden_bytes=max_ram_bytes)
        self.shapes = [(int(b), int(t)) for b, t in shapes]
        self.hidden = hidden
        self.dtype = dtype
        sizes = [b * t * hidden for b, t in self.shapes]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        numel = self._offsets[-1]
        self.nbytes = numel * torch.empty((), dtype=dtype).element_size()
        self.file_backed = self.nbytes > max_ram_bytes
        self._buffer = (
            self._map_file(numel, spill_dir) if self.file_backed else torch.empty(numel, dtype=dtype)
        )

    def _map_file(self, numel: int, spill_dir: str | Path | None) -> torch.Tensor:
        folder = Path(tempfile.mkdtemp(prefix="moe2dense-hidden-", dir=spill_dir))
        path = folder / "hidden_states.bin"
        try:
            with open(path, "wb") as handle:
                try:
                    if hasattr(os, "posix_fallocate"):
                        os.posix_fallocate(handle.fileno(), 0, self.nbytes)
                    else:
                        handle.truncate(self.nbytes)
                except OSError as exc:
                    raise StatsError(
                        f"{path}: cannot reserve {self.nbytes} bytes for the calibration hidden states "
                        f"({exc.strerror}); free disk space, pass spill_dir on a larger disk or raise "
                        "max_hidden_bytes"
                    ) from None
            return torch.from_file(str(path), shared=True, size=numel, dtype=self.dtype)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # the mapping stays valid; nothing is left on disk

    def __len__(self) -> int:
        return len(self.shapes)

    def get(self, batch: int) -> torch.Tensor:
        """The hidden states of `batch`, [B, T, H]: a view of the store (no copy)."""
        b, t = self.shapes[batch]
        return self._buffer[self._offsets[batch] : self._offsets[batch + 1]].view(b, t, self.hidden)

    def put(self, batch: int, hidden_states: torch.Tensor) -> None:
        """Overwrite `batch`'s hidden states (copied in, from any device); shape and dtype must match."""
        b, t = self.shapes[batch]
        if tuple(hidden_states.shape) != (b, t, self.hidden) or hidden_states.dtype != self.dtype:
            raise StatsError(
                f"hidden states of batch {batch}: {hidden_states.dtype} {tuple(hidden_states.shape)}, "
                f"expected {self.dtype} {(b, t, self.hidden)}"
            )
        self.get(batch).copy_(hidden_states)

    def close(self) -> None:
        """Release the buffer (unmaps a spill file)."""
        self._buffer = torch.empty(0, dtype=self.dtype)

    def __enter__(self) -> HiddenStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
