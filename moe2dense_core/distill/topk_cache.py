"""Offline teacher: the teacher's top-k log-probabilities per token in sharded safetensors files.

`write_topk_cache(teacher, data, out_dir, k)` runs the teacher once over the packed rows `data`
[N, L] and writes, per row-shard `shard_00000.safetensors`:
  input_ids      int32   [n, L]      the tokens (row i of the shard is row first_row + i of data)
  topk_ids       int32   [n, L, k]   the k most probable next-token ids, most probable first
  topk_logprobs  float32 [n, L, k]   log p_v = log softmax(z / T)_v at those ids (float16 on request)
  tail_logprob   float32 [n, L]      log r, r = Σ_{v ∉ top-k} p_v, from the full logits (−inf if k = V)
and `manifest.json` (k, V, L, N, T, teacher_top_k — the routing k' the teacher ran with, None for its own
k —, the teacher precision, the log-probability dtype, the caller's teacher digest, sha256 of the data
and of each shard).
Shards [defined here]: shard i holds rows [i·R, min((i+1)·R, N)), R = rows_per_shard (`shard_spans`), and
its bytes depend on those rows only (batches start at the shard's first row). So P processes can write
one cache: rank r of P writes the shards i ≡ r (mod P) (`rank_shards`; `write_topk_shards(..., rank=r,
processes=P)` returns that rank's part of the manifest) and `merge_manifest_parts` joins the parts in
shard order, the very manifest one process writes — shard files and manifest byte-identical for any P.
Size [defined here]: `bytes_per_token(k, dtype)` = k·(4 + b) + 4 + 4 — k ids of 4 bytes and k
log-probabilities of b bytes (4 for float32, 2 for float16), the tail (4) and the input id (4) — plus a
few hundred bytes of safetensors header per shard; `cache_bytes(k, dtype, tokens)` for a token budget.
`TopKCache.open(out_dir)` reads rows back by index, so distillation never holds the teacher in memory;
`TopKCache(manifest, locate, location)` reads shards that `locate` brings on first use (e.g. one at a
time from an artifact store); `TopKCache.check_fits` refuses a run whose data, temperature, routing,
teacher, k or dtype differ from the cache's.
How the tail mass enters the loss: `moe2dense_core.distill.losses.topk_bucket_logprobs` [defined here].
A killed pass: `manifest.json` is written last, so a folder without it is no cache (`TopKCache.open`
refuses it). A pass into a folder that already holds a cache first deletes that manifest, so a pass
killed midway can never leave the old manifest over a mix of old and new shards. A rerun recomputes
every shard and replaces each file whole (rename); nothing of the killed pass is reused. Left behind,
until the folder itself is deleted: shards of the killed pass not rewritten (another rows_per_shard) and
at most one `.shard_*.safetensors.*.tmp` per killed process (the shard being written, up to one
shard's size).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from moe2dense_core.data import tokens_digest
from moe2dense_core.distill.expanded_routing import expanded_teacher_routing
from moe2dense_core.distill.precision import autocast, resolve_precision
from moe2dense_core.errors import DistillError
from moe2dense_core.io.atomic import atomic_path, atomic_write_text
from moe2dense_core.io.digests import file_sha256, files_sha256
from moe2dense_core.schema import check_schema_version

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
LogprobDtype = Literal["float32", "float16"]
LOGPROB_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
ID_BYTES = 4  # int32 token ids (top-k ids and input ids)
TAIL_BYTES = 4  # float32 tail log-mass


class CacheShard(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    first_row: int
    num_rows: int
    sha256: str


class TopKCacheManifest(BaseModel):
    """What a cache holds and how it was made; `data_digest` ties it to one packed token tensor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    k: int
    vocab_size: int
    seq_len: int
    num_sequences: int
    temperature: float
    teacher_top_k: int | None
    precision: str
    logprob_dtype: LogprobDtype
    data_digest: str
    teacher_digest: str | None = None
    shards: tuple[CacheShard, ...]


ShardLocator = Callable[[CacheShard], Path]


def bytes_per_token(k: int, logprob_dtype: LogprobDtype) -> int:
    """Stored bytes per token: k·(4 + b) + 4 (tail) + 4 (input id), b = bytes of one log-probability."""
    if logprob_dtype not in LOGPROB_DTYPES:
        raise DistillError(f"logprob_dtype {logprob_dtype!r}: choose one of {sorted(LOGPROB_DTYPES)}")
    if k < 1:
        raise DistillError(f"top-k cache k={k} must be at least 1")
    return k * (ID_BYTES + LOGPROB_DTYPES[logprob_dtype].itemsize) + TAIL_BYTES + ID_BYTES


def cache_bytes(k: int, logprob_dtype: LogprobDtype, num_tokens: int) -> int:
    """Stored bytes of a cache over `num_tokens` tokens: num_tokens · bytes_per_token (headers aside)."""
    return num_tokens * bytes_per_token(k, logprob_dtype)


@dataclass(frozen=True)
class TeacherTopK:
    """Cached teacher targets for a batch of rows: input_ids [B, L] int64, topk_ids [B, L, k] int32,
    topk_logprobs [B, L, k] float32 (upcast when stored as float16), tail_logprob [B, L] float32."""

    input_ids: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    tail_logprob: torch.Tensor

    def to(self, device: torch.device) -> TeacherTopK:
        return TeacherTopK(
            *(
                t.to(device, non_blocking=True)
                for t in (self.input_ids, self.topk_ids, self.topk_logprobs, self.tail_logprob)
            )
        )


def teacher_topk(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, ...]:
    """[B, L, V] logits → (topk_ids int32 [B, L, k], topk_logprobs f32 [B, L, k], tail_logprob f32 [B, L])."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = logprobs.topk(k, dim=-1)
    if k == logprobs.shape[-1]:
        tail = torch.full(logprobs.shape[:-1], float("-inf"), device=logprobs.device)
    else:
        tail = torch.logsumexp(logprobs.scatter(-1, ids, float("-inf")), dim=-1)
    return ids.to(torch.int32), values, tail


def shard_spans(num_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    """(first_row, num_rows) of every shard of N = `num_rows` rows: shard i holds rows [i·R, min((i+1)·R, N))."""
    if rows_per_shard < 1:
        raise DistillError(f"rows_per_shard={rows_per_shard} must be at least 1")
    return [(first, min(rows_per_shard, num_rows - first)) for first in range(0, num_rows, rows_per_shard)]


def shard_name(index: int) -> str:
    """File name of shard `index`: shard_00000.safetensors, shard_00001.safetensors, …"""
    return f"shard_{index:05d}.safetensors"


def rank_shards(num_shards: int, rank: int, processes: int) -> range:
    """The shards rank `rank` of `processes` writes: i ≡ rank (mod processes), i < num_shards — every shard
    by exactly one rank, consecutive shards by different ranks (similar work per rank)."""
    if not 0 <= rank < processes:
        raise DistillError(f"rank {rank} outside the {processes} processes of the teacher pass")
    return range(rank, num_shards, processes)


@torch.no_grad()
def write_topk_shards(
    teacher: nn.Module,
    data: torch.Tensor,
    out_dir: str | Path,
    k: int,
    *,
    temperature: float = 1.0,
    teacher_top_k: int | None = None,
    teacher_digest: str | None = None,
    batch_size: int = 8,
    rows_per_shard: int = 1024,
    precision: str = "auto",
    logprob_dtype: LogprobDtype = "float32",
    rank: int = 0,
    processes: int = 1,
    on_shard: Callable[[Path, CacheShard], None] | None = None,
) -> TopKCacheManifest:
    """Run `teacher` over the rows of `data` [N, L] (int) in rank `rank`'s shards (`rank_shards`) and write
    those shard files into `out_dir`; return this rank's part of the manifest (all fields, its shards only:
    join the parts with `merge_manifest_parts`). Writes no manifest file.

    k: kept ids per token (1 ≤ k ≤ V); temperature: T of p = softmax(z / T) (distillation must use
    the same T); teacher_top_k: expanded routing k' (paper Eq. 6; a run must ask for the same k', or
    None for both); teacher_digest: the caller's id of the teacher weights (e.g. its snapshot sha256),
    recorded so `distill(teacher_digest=...)` can check it; logprob_dtype: how the k log-probabilities
    are stored (float16 rounds them to 11 significant bits; the tail stays float32). The teacher runs on
    its own device. Each shard file appears complete (written to a temporary name, then renamed), then
    on_shard(path, shard) is called (e.g. to upload it; it may delete the file).
    """
    if data.ndim != 2 or data.dtype not in (torch.int32, torch.int64):
        raise DistillError(f"data must be an int tensor [N, L], got {tuple(data.shape)} {data.dtype}")
    vocab_size = int(teacher.config.vocab_size)
    if not 1 <= k <= vocab_size:
        raise DistillError(f"top-k cache k={k} must lie in [1, vocab_size={vocab_size}]")
    bytes_per_token(k, logprob_dtype)  # refuses an unknown dtype before the teacher runs
    if batch_size < 1 or rows_per_shard < batch_size:
        raise DistillError(f"need 1 ≤ batch_size ({batch_size}) ≤ rows_per_shard ({rows_per_shard})")
    spans = shard_spans(data.shape[0], rows_per_shard)
    mine = rank_shards(len(spans), rank, processes)
    stored = LOGPROB_DTYPES[logprob_dtype]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # the folder is no finished cache from here on
    device = next(teacher.parameters()).device
    resolved = resolve_precision(precision, device)
    was_training = teacher.training
    teacher.eval()
    shards: list[CacheShard] = []
    try:
        with expanded_teacher_routing(teacher, teacher_top_k):
            for index in mine:
                first, count = spans[index]
                rows = data[first : first + count]
                parts: list[tuple[torch.Tensor, ...]] = []
                for b in range(0, rows.shape[0], batch_size):
                    batch = rows[b : b + batch_size].to(device)
                    with autocast(resolved, device):
                        logits = teacher(input_ids=batch, use_cache=False).logits
                    if logits.shape[-1] != vocab_size:
                        raise DistillError(
                            f"teacher logits width {logits.shape[-1]} != vocab_size {vocab_size}"
                        )
                    parts.append(tuple(t.cpu() for t in teacher_topk(logits, k, temperature)))
                tensors = {
                    "input_ids": rows.to(torch.int32).contiguous(),
                    "topk_ids": torch.cat([p[0] for p in parts]).contiguous(),
                    "topk_logprobs": torch.cat([p[1] for p in parts]).to(stored).contiguous(),
                    "tail_logprob": torch.cat([p[2] for p in parts]).contiguous(),
                }
                name = shard_name(index)
                with atomic_path(out / name) as tmp:
                    save_file(tensors, tmp, metadata={"first_row": str(first)})
                shard = CacheShard(file=name, first_row=first, num_rows=count, sha256=file_sha256(out / name))
                shards.append(shard)
                if on_shard is not None:
                    on_shard(out / name, shard)
    finally:
        teacher.train(was_training)
    return TopKCacheManifest(
        k=k,
        vocab_size=vocab_size,
        seq_len=data.shape[1],
        num_sequences=data.shape[0],
        temperature=temperature,
        teacher_top_k=teacher_top_k,
        precision=resolved,
        logprob_dtype=logprob_dtype,
        data_digest=tokens_digest(data),
        teacher_digest=teacher_digest,
        shards=tuple(shards),
    )


def merge_manifest_parts(parts: Sequence[TopKCacheManifest]) -> TopKCacheManifest:
    """The cache's manifest from the ranks' parts (`write_topk_shards`): every field but `shards` equal in
    all parts, the shards in row order, covering rows [0, N) once — shard j named `shard_name(j)`,
    first_row = the rows of shards 0..j-1. DistillError naming the field or the shard otherwise."""
    if not parts:
        raise DistillError("no manifest parts to merge: the teacher pass wrote nothing")
    settings = [part.model_dump(exclude={"shards"}) for part in parts]
    for rank, fields in enumerate(settings[1:], start=1):
        differ = [
            f"{name}: part 0 {settings[0][name]!r}, part {rank} {value!r}"
            for name, value in fields.items()
            if settings[0][name] != value
        ]
        if differ:
            raise DistillError("the teacher pass's ranks disagree: " + "; ".join(differ))
    shards = sorted((shard for part in parts for shard in part.shards), key=lambda shard: shard.first_row)
    next_row = 0
    for index, shard in enumerate(shards):
        if (shard.file, shard.first_row) != (shard_name(index), next_row) or shard.num_rows < 1:
            raise DistillError(
                f"manifest parts: shard {shard.file} (rows {shard.first_row}..{shard.first_row + shard.num_rows - 1}) "
                f"is not shard {shard_name(index)} starting at row {next_row}: a shard is missing or repeated"
            )
        next_row += shard.num_rows
    if next_row != parts[0].num_sequences:
        raise DistillError(f"manifest parts cover {next_row} of the {parts[0].num_sequences} rows")
    return parts[0].model_copy(update={"shards": tuple(shards)})


def write_manifest(out_dir: str | Path, manifest: TopKCacheManifest) -> Path:
    """Write `manifest` as `out_dir/manifest.json` (atomically) and return its path."""
    path = Path(out_dir) / MANIFEST_NAME
    atomic_write_text(path, manifest.model_dump_json(indent=2))
    return path


def write_topk_cache(
    teacher: nn.Module,
    data: torch.Tensor,
    out_dir: str | Path,
    k: int,
    **settings: Any,
) -> TopKCacheManifest:
    """The whole cache in this process: every shard (`write_topk_shards` with `settings`, rank 0 of 1),
    then the manifest, written last (atomically) as `out_dir/manifest.json` and returned."""
    manifest = merge_manifest_parts([write_topk_shards(teacher, data, out_dir, k, **settings)])
    write_manifest(out_dir, manifest)
    return manifest


def read_manifest(path: Path) -> TopKCacheManifest:
    """The manifest at `path`, its schema_version checked first; DistillError naming the file otherwise."""
    if not path.is_file():
        raise DistillError(f"{path} is missing: not a finished top-k cache")
    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise DistillError(f"{path} is not a valid top-k cache manifest: {err}") from err
    found = raw.get("schema_version") if isinstance(raw, dict) else None
    check_schema_version(found, SCHEMA_VERSION, str(path), DistillError)
    try:
        return TopKCacheManifest.model_validate(raw)
    except ValueError as err:
        raise DistillError(f"{path} is not a valid top-k cache manifest: {err}") from err


class TopKCache:
    """Read access to a cache written by `write_topk_cache`: rows by index, memory-mapped.

    `locate(shard)` gives the local path of a shard; it is asked once per shard, when a row of it is
    first read (`open` locates in a folder; a store-backed locator fetches the shard then). `location`
    names the cache in messages (its folder or URI).
    """

    def __init__(self, manifest: TopKCacheManifest, locate: ShardLocator, location: str) -> None:
        self.manifest = manifest
        self.location = location
        self._locate = locate
        self._paths: dict[int, Path] = {}
        self._starts = torch.tensor([s.first_row for s in manifest.shards])

    @classmethod
    def open(cls, directory: str | Path, *, verify: bool = False) -> TopKCache:
        """Open `directory`; verify=True also checks every shard's sha256 (reads all bytes; the shards
        concurrently: io.digests.files_sha256)."""
        directory = Path(directory)
        manifest = read_manifest(directory / MANIFEST_NAME)
        paths = [directory / shard.file for shard in manifest.shards]
        for path in paths:
            if not path.is_file():
                raise DistillError(f"top-k cache shard {path} is missing")
        if verify:
            digests = files_sha256(paths)
            for shard, path in zip(manifest.shards, paths, strict=True):
                if digests[path] != shard.sha256:
                    raise DistillError(f"top-k cache shard {path} does not match its sha256 in the manifest")
        return cls(manifest, lambda shard: directory / shard.file, str(directory))

    @property
    def label(self) -> str:
        """What the targets are, for a run's identity: `topk_cache(k=64)`, `topk_cache(k=64, float16)`."""
        dtype = "" if self.manifest.logprob_dtype == "float32" else f", {self.manifest.logprob_dtype}"
        return f"topk_cache(k={self.manifest.k}{dtype})"

    def shard_path(self, index: int) -> Path:
        """Local path of shard `index`, located on first use."""
        if index not in self._paths:
            self._paths[index] = self._locate(self.manifest.shards[index])
        return self._paths[index]

    def check_fits(
        self,
        *,
        data_digest: str,
        temperature: float,
        teacher_top_k: int | None,
        teacher_digest: str | None,
        k: int | None = None,
        logprob_dtype: LogprobDtype | None = None,
    ) -> None:
        """Raise DistillError naming every field where this cache differs from what a run asks for.

        Data, temperature and routing k' (None = the teacher's own k) must be equal; the teacher digest,
        k and the log-probability dtype are checked when the run gives them.
        """
        m = self.manifest
        asked = {"data_digest": data_digest, "temperature": temperature, "teacher_top_k": teacher_top_k}
        optional = {"teacher_digest": teacher_digest, "k": k, "logprob_dtype": logprob_dtype}
        asked.update({name: value for name, value in optional.items() if value is not None})
        differ = [
            f"{name}: cache {getattr(m, name)!r}, run {value!r}"
            for name, value in asked.items()
            if getattr(m, name) != value
        ]
        if differ:
            written_for = " (written for other data)" if m.data_digest != data_digest else ""
            raise DistillError(
                f"top-k cache {self.location} does not fit this run{written_for}: " + "; ".join(differ)
            )

    def rows(self, indices: torch.Tensor) -> TeacherTopK:
        """Cached targets of rows `indices` [B] (positions in the packed data), in that order."""
        fields = ("input_ids", "topk_ids", "topk_logprobs", "tail_logprob")
        bad = indices[(indices < 0) | (indices >= self.manifest.num_sequences)]
        if bad.numel():
            raise DistillError(
                f"row {int(bad[0])} outside the cache's {self.manifest.num_sequences} sequences"
            )
        shard_of = torch.searchsorted(self._starts, indices, right=True) - 1
        picked: dict[int, dict[str, torch.Tensor]] = {}
        for shard_idx in shard_of.unique().tolist():
            shard = self.manifest.shards[shard_idx]
            with safe_open(self.shard_path(shard_idx), framework="pt") as f:
                for row in indices[shard_of == shard_idx].tolist():
                    local = row - shard.first_row
                    picked[row] = {name: f.get_slice(name)[local : local + 1] for name in fields}
        rows = indices.tolist()
        return TeacherTopK(
            input_ids=torch.cat([picked[r]["input_ids"] for r in rows]).long(),
            topk_ids=torch.cat([picked[r]["topk_ids"] for r in rows]),
            topk_logprobs=torch.cat([picked[r]["topk_logprobs"] for r in rows]).float(),
            tail_logprob=torch.cat([picked[r]["tail_logprob"] for r in rows]),
        )
