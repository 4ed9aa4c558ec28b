"""open_teacher: the ONE entry that opens a teacher checkpoint — resolve, read, spec, validate — once.

    teacher = open_teacher("Qwen/Qwen3-30B-A3B", revision="main")        # or a local folder
    stats = collect_stats(teacher, batches)
    plan = build_plan(stats, PlanConfig(...), expert_weights=teacher.expert_weights)
    assemble(teacher, plan, out_dir)

Steps, the first failure raising before anything expensive (no weight is read):
  1. io.resolve_model: a local folder as is, or a Hub snapshot (an offline or unreachable Hub is named);
  2. io.CheckpointReader: config.json, the index, every shard header (truncation, index ↔ shards);
  3. arch.get_spec(config.model_type) (UnsupportedArchitectureError lists the supported families);
  4. checkpoint.validate_checkpoint: every tensor the architecture needs, with its shape, nothing unknown;
  5. the tokenizer, when the folder has one: it loads and len(tokenizer) ≤ vocab_size
     (`require_tokenizer=True` also refuses a folder without one);
  6. `expected_digests` {file name: sha256}, when given (e.g. recorded by the pipeline's source stage):
     every snapshot file hashes to its recorded digest, so a flipped byte is refused.

Re-opening a snapshot already validated in this process [defined here]: when `expected_digests` is given,
the folder's files have the same (name, size, mtime_ns) as when this process hashed them, and the digests
it computed then equal `expected_digests`, the files are byte-for-byte the validated snapshot (the snapshot
digest proves it), so steps 4-6 are skipped: the pipeline's stages each re-open the teacher across Prefect
task boundaries but validate and hash it once per process.

Snapshot files: every top-level file resolve_model would fetch (config, index, shards, tokenizer files:
io.resolve.DEFAULT_ALLOW_PATTERNS) plus the reader's weight files (pickles, when allowed);
snapshot digest = sha256 of the canonical JSON {file name: sha256} (io.digests.snapshot_sha256).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from moe2dense_core.arch import get_spec
from moe2dense_core.arch.expert_weights import ExpertWeights
from moe2dense_core.arch.spec import MoEArchSpec, MoEDims
from moe2dense_core.checkpoint.tokenizer import (
    check_tokenizer_vocabulary,
    config_vocab_size,
    require_tokenizer_files,
)
from moe2dense_core.checkpoint.validate import validate_checkpoint
from moe2dense_core.errors import CheckpointError, Moe2DenseError
from moe2dense_core.io.digests import files_sha256, snapshot_sha256
from moe2dense_core.io.reader import CheckpointReader
from moe2dense_core.io.resolve import DEFAULT_ALLOW_PATTERNS, resolve_model

_SNAPSHOT_REVISION = re.compile(r"^[0-9a-f]{40}$")
Fingerprint = tuple[tuple[str, int, int], ...]
"""(file name, size, mtime_ns) of every snapshot file, sorted by name."""


@dataclass(eq=False)
class Teacher:
    """An opened, validated teacher checkpoint (see module docstring). Close it (or use `with`) to drop
    the shard memory maps; the reader reopens them on the next read.

    source: the model as given — a local folder as its absolute path, or a Hub id; revision: the commit of
    a Hub cache snapshot folder (…/snapshots/<40 hex>: a branch or tag name resolved), else the requested
    revision (None for a plain local folder);
    path: the local folder; dims: E, k, widths, layers (validated).
    """

    source: str
    revision: str | None
    path: Path
    reader: CheckpointReader
    spec: MoEArchSpec
    dims: MoEDims
    _file_digests: dict[str, str] | None = field(default=None, repr=False)

    @property
    def config(self) -> dict:
        return self.reader.config

    @property
    def model_type(self) -> str:
        return self.reader.model_type

    def expert_weights(self, layer: int) -> ExpertWeights:
        """All E routed experts of MoE layer `layer`, canonical float32 (what build_plan's weight-based
        groupers read)."""
        return self.spec.read_experts(self.reader, layer, list(range(self.dims.num_experts)))

    def file_digests(self) -> dict[str, str]:
        """{file name: sha256} of every snapshot file (streamed, concurrently: io.digests.files_sha256;
        computed once): the shards' from reader.shard_digests(), the other files hashed here. Registers the
        snapshot as validated in this process under the fingerprint its files had before hashing."""
        if self._file_digests is None:
            fingerprint = _fingerprint(self.path, _snapshot_files(self.path, self.reader))
            shards = self.reader.shard_digests()
            others = files_sha256(self.path / name for name, *_ in fingerprint if name not in shards)
            digests = {name: shards.get(name) or others[self.path / name] for name, *_ in fingerprint}
            self._file_digests = digests
            _VALIDATED.remember(self.path, fingerprint, snapshot_sha256(digests), self.dims)
        return dict(self._file_digests)

    def snapshot_digest(self) -> str:
        """sha256 of the canonical JSON of `file_digests()`."""
        return snapshot_sha256(self.file_digests())

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_teacher(
    source: str | Path,
    revision: str | None = None,
    allow_pickle: bool = False,
    *,
    expected_digests: dict[str, str] | None = None,
    require_tokenizer: bool = False,
) -> Teacher:
    """Resolve, read and validate the teacher `source` (local folder or Hub id at `revision`) once.

    allow_pickle: accept *.bin / *.pt weights (loaded with torch.load(weights_only=True)); refused by default.
    expected_digests: recorded {file name: sha256} the snapshot must match (CheckpointError naming the file).
    require_tokenizer: refuse a folder without tokenizer files (the pipeline tokenizes calibration text).
    Raises CheckpointError / UnsupportedArchitectureError naming the file, field or tensor at fault.
    """
    path = resolve_model(source, revision=revision)
    reader = CheckpointReader(path, allow_pickle=allow_pickle)
    try:
        spec = get_spec(reader.model_type)
        if require_tokenizer:
            require_tokenizer_files(path)
        opened = (_source_name(source), _revision(revision, path), path, reader, spec)
        if expected_digests is not None:
            known = _VALIDATED.lookup(path, _snapshot_files(path, reader), expected_digests)
            if known is not None:
                return Teacher(*opened, known, dict(expected_digests))
        dims = validate_checkpoint(reader, spec)
        check_tokenizer_vocabulary(path, config_vocab_size(reader.config, str(path / "config.json")))
        teacher = Teacher(*opened, dims)
        if expected_digests is not None:
            _check_digests(path, teacher.file_digests(), expected_digests)
        return teacher
    except BaseException:
        reader.close()
        raise


@contextmanager
def using_teacher(
    source: str | Path | Teacher, revision: str | None = None, allow_pickle: bool = False
) -> Iterator[Teacher]:
    """For the public entries that take "a path, a Hub id or an opened Teacher": `source` itself when it
    is a Teacher (left open; `revision` / `allow_pickle` then have nothing to apply to and must be unset),
    else open_teacher(source, revision, allow_pickle), closed on exit."""
    if isinstance(source, Teacher):
        if revision is not None or allow_pickle:
            raise Moe2DenseError(
                f"revision / allow_pickle apply when opening a path or Hub id; {source.source} is already open"
            )
        yield source
        return
    with open_teacher(source, revision, allow_pickle) as teacher:
        yield teacher


def _check_digests(path: Path, actual: dict[str, str], expected: dict[str, str]) -> None:
    """CheckpointError naming the first file whose sha256 differs from the recorded one (or that appeared
    or disappeared since)."""
    for name in sorted(set(actual) | set(expected)):
        if name not in actual:
            raise CheckpointError(
                f"{path / name}: recorded in the snapshot digests but no longer in the folder"
            )
        if name not in expected:
            raise CheckpointError(f"{path / name}: in the folder but not in the recorded snapshot digests")
        if actual[name] != expected[name]:
            raise CheckpointError(
                f"{path / name}: sha256 {actual[name]} does not match the recorded {expected[name]} "
                "(the file changed or is corrupt since its digest was recorded)"
            )


def _snapshot_files(path: Path, reader: CheckpointReader) -> list[str]:
    names = {p.name for pattern in DEFAULT_ALLOW_PATTERNS for p in path.glob(pattern) if p.is_file()}
    return sorted(names | set(reader.shard_files()))


def _fingerprint(path: Path, files: list[str]) -> Fingerprint:
    stats = ((name, (path / name).stat()) for name in files)
    return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)


def _source_name(source: str | Path) -> str:
    """A local folder as its absolute path; a Hub id as given."""
    path = Path(source).expanduser()
    return str(path.absolute()) if path.is_dir() else str(source)


def _revision(revision: str | None, path: Path) -> str | None:
    """The commit of a huggingface_hub cache snapshot folder (`…/snapshots/<40 hex>`: what a requested
    branch or tag resolved to, so a moving name is never recorded), else the requested revision."""
    resolved = path.resolve()
    is_snapshot = resolved.parent.name == "snapshots" and _SNAPSHOT_REVISION.match(resolved.name)
    return resolved.name if is_snapshot else revision


class _ValidatedSnapshots:
    """Process-local record: (resolved folder, fingerprint) → (snapshot digest, dims) of every snapshot
    this process validated and hashed. Thread-safe (Prefect runs submitted tasks in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[Path, Fingerprint], tuple[str, MoEDims]] = {}

    def remember(self, path: Path, fingerprint: Fingerprint, digest: str, dims: MoEDims) -> None:
        with self._lock:
            self._known[(path.resolve(), fingerprint)] = (digest, dims)

    def lookup(self, path: Path, files: list[str], expected_digests: dict[str, str]) -> MoEDims | None:
        """The validated dims when the folder is unchanged since this process hashed it and its digest then
        equals the snapshot digest of `expected_digests`; None otherwise."""
        with self._lock:
            known = self._known.get((path.resolve(), _fingerprint(path, files)))
        if known is None or known[0] != snapshot_sha256(expected_digests):
            return None
        return known[1]


_VALIDATED = _ValidatedSnapshots()
