"""CheckpointReader: lazy, one-tensor-at-a-time access to a Hugging Face checkpoint folder.

Supported layouts, in the order they are looked for:
  model.safetensors.index.json (+ the shards it names)   sharded safetensors (the released format)
  model.safetensors                                       single safetensors file
  pytorch_model.bin.index.json / *.bin / *.pt / *.pth     pickle: refused unless allow_pickle=True,
                                                          then torch.load(weights_only=True, mmap=True)

Everything that can be checked without reading tensor data is checked in the constructor, so a bad
checkpoint fails before anything expensive: config.json present and a JSON object with model_type;
the index parses; every shard it names exists; every safetensors header parses, its byte length
matches the file (truncation / trailing bytes), it holds every tensor the index assigns to it and
no tensor the index leaves out (or assigns to another shard).
Tensors are then read lazily with `safetensors.safe_open`, one per `get` call, or only some sub-tensors
of one along its first axis with `index_select` (the kept experts of a fused [E, …] expert tensor).

Memory: safetensors maps each opened shard file; the pages a read touches stay resident (counted in
the process's RSS) until the map is dropped. `release_mapped()` drops every map (they reopen lazily on the
next read); callers that stream a checkpoint call it after each decoder layer, so resident mapped pages
stay bounded by one layer instead of growing with the checkpoint. A map lives on while a tensor read from
it is referenced. `bytes_read` counts, per tensor name, the bytes of tensor data handed out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moe2dense_core.errors import CheckpointError
from moe2dense_core.io.digests import files_sha256
from moe2dense_core.io.safetensors_header import TensorInfo, read_header

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


class CheckpointReader:
    """Read-only view of a checkpoint folder (see module docstring).

    Attributes: model_dir (Path), config (dict: config.json), index_file (Path | None),
    format ("safetensors" | "pickle"), bytes_read (Counter: tensor name → bytes handed out).
    """

    def __init__(self, model_dir: str | Path, *, allow_pickle: bool = False) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise CheckpointError(f"{self.model_dir}: checkpoint folder does not exist")
        self.config = _read_config(self.model_dir / "config.json")
        self._handles: dict[str, Any] = {}
        self._pickle_shards: dict[str, dict[str, torch.Tensor]] = {}
        self._digests: dict[str, str] | None = None
        self.index_file: Path | None = None
        self.bytes_read: Counter[str] = Counter()

        if (self.model_dir / SAFETENSORS_INDEX).is_file():
            self.format = "safetensors"
            self.index_file = self.model_dir / SAFETENSORS_INDEX
            self._weight_map = _read_index(self.index_file)
        elif (self.model_dir / SAFETENSORS_SINGLE).is_file():
            self.format = "safetensors"
            self._weight_map = None
        else:
            self._open_pickle(allow_pickle)
            return
        self._infos = self._read_safetensors_headers()

    # ---- tensors ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every tensor name in the checkpoint, sorted."""
        return sorted(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._info(name).dtype

    def shard_of(self, name: str) -> str:
        """File name (relative to model_dir) of the shard holding `name`."""
        self._info(name)
        return self._shard_by_name[name]

    def get(self, name: str) -> torch.Tensor:
        """Read ONE tensor from its shard, in its stored dtype."""
        shard = self.shard_of(name)
        if self.format == "pickle":
            tensor = self._load_pickle_shard(shard)[name]
        else:
            tensor = self._handle(shard).get_tensor(name)
        self.bytes_read[name] += self._info(name).nbytes
        return tensor

    def index_select(self, name: str, indices: Sequence[int]) -> torch.Tensor:
        """`get(name)[indices]` along the first axis, in the given order, reading only those sub-tensors.

        tensor [N, …] → [len(indices), …]; runs of consecutive ascending indices are read as one slice
        (safetensors `get_slice`), so the bytes read are len(indices)/N of the tensor's.
        """
        shape = self.shape(name)
        if not shape or any(not 0 <= i < shape[0] for i in indices):
            raise CheckpointError(
                f"tensor {name!r} {list(shape)}: indices {list(indices)} are not along a first axis of that size"
            )
        if not indices:
            return torch.empty((0, *shape[1:]), dtype=self.dtype(name))
        runs = _consecutive_runs(indices)
        if self.format == "pickle":
            stored = self._load_pickle_shard(self.shard_of(name))[name]
            parts = [stored[start:stop] for start, stop in runs]
        else:
            sliced = self._handle(self.shard_of(name)).get_slice(name)
            parts = [sliced[start:stop] for start, stop in runs]
        self.bytes_read[name] += self._info(name).nbytes // shape[0] * len(indices)
        return parts[0].clone() if len(parts) == 1 else torch.cat(parts)

    def iter_tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for `names` (default: all), read one at a time."""
        for name in self.names() if names is None else names:
            yield name, self.get(name)

    # ---- files and digests ----------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    def shard_files(self) -> list[str]:
        """Shard file names (relative to model_dir), sorted."""
        return sorted(set(self._shard_by_name.values()))

    def shard_digests(self) -> dict[str, str]:
        """sha256 of every shard file (streamed, the shards concurrently: io.digests.files_sha256; computed
        once and cached)."""
        if self._digests is None:
            shards = self.shard_files()
            digests = files_sha256(self.model_dir / shard for shard in shards)
            self._digests = {shard: digests[self.model_dir / shard] for shard in shards}
        return dict(self._digests)

    def release_mapped(self) -> None:
        """Drop every open shard memory map (safetensors handles, memory-mapped pickles); each reopens
        lazily on the next read. See the module docstring (memory)."""
        self._handles.clear()
        self._pickle_shards.clear()

    def close(self) -> None:
        """`release_mapped()`: the reader holds nothing else, and stays usable."""
        self.release_mapped()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------------
    def _handle(self, shard: str) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(self.model_dir / shard), framework="pt", device="cpu")
            self._handles[shard] = handle
        return handle

    def _info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            where = self.index_file or ", ".join(str(self.model_dir / s) for s in self.shard_files())
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint ({where})") from None

    def _read_safetensors_headers(self) -> dict[str, TensorInfo]:
        if self._weight_map is None:
            infos = read_header(self.model_dir / SAFETENSORS_SINGLE)
            self._shard_by_name = dict.fromkeys(infos, SAFETENSORS_SINGLE)
            return infos
        self._shard_by_name = dict(self._weight_map)
        infos: dict[str, TensorInfo] = {}
        for shard in sorted(set(self._weight_map.values())):
            path = self.model_dir / shard
            if not path.is_file():
                raise CheckpointError(f"{self.index_file}: shard {shard!r} named in the index does not exist")
            header = read_header(path)
            self._check_index_lists(shard, header)
            for name in (n for n, s in self._weight_map.items() if s == shard):
                if name not in header:
                    raise CheckpointError(
                        f"{self.index_file}: tensor {name!r} is assigned to {shard!r}, which does not contain it"
                    )
                infos[name] = header[name]
        return infos

    def _check_index_lists(self, shard: str, stored: dict[str, object]) -> None:
        """Every tensor stored in `shard` must be assigned to it by the index: a tensor the index leaves
        out is invisible to every loader that goes through the index (a silently lost weight)."""
        for name in stored:
            listed = self._shard_by_name.get(name)
            if listed != shard:
                where = "does not list it" if listed is None else f"assigns it to {listed!r}"
                raise CheckpointError(
                    f"{self.model_dir / shard}: holds tensor {name!r}, but the index {self.index_file.name} {where}"
                )

    def _open_pickle(self, allow_pickle: bool) -> None:
        self.format = "pickle"
        pickles = sorted(p.name for p in self.model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            present = ", ".join(sorted(p.name for p in self.model_dir.iterdir())) or "nothing"
            raise CheckpointError(
                f"{self.model_dir}: no weights found (looked for {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, "
                f"or pickle files); the folder holds: {present}"
            )
        if not allow_pickle:
            raise CheckpointError(
                f"{self.model_dir}: only pickle weights found ({', '.join(pickles)}); pickle files can run "
                "arbitrary code, so they are refused. Convert to safetensors, or pass allow_pickle=True "
                "(loaded with torch.load(weights_only=True))"
            )
        if (self.model_dir / PICKLE_INDEX).is_file():
            self.index_file = self.model_dir / PICKLE_INDEX
            self._shard_by_name = _read_index(self.index_file)
            for shard in sorted(set(self._shard_by_name.values())):
                if not (self.model_dir / shard).is_file():
                    raise CheckpointError(
                        f"{self.index_file}: shard {shard!r} named in the index does not exist"
                    )
        else:
            self._shard_by_name = {}
            for shard in pickles:
                for name in self._load_pickle_shard(shard):
                    self._shard_by_name[name] = shard
        if self.index_file is not None:
            for shard in sorted(set(self._shard_by_name.values())):
                self._check_index_lists(shard, self._load_pickle_shard(shard))
        self._infos = {}
        for name, shard in self._shard_by_name.items():
            tensor = self._load_pickle_shard(shard).get(name)
            if tensor is None:
                raise CheckpointError(
                    f"{self.index_file}: tensor {name!r} is assigned to {shard!r}, which does not contain it"
                )
            self._infos[name] = TensorInfo(
                tensor.dtype, tuple(tensor.shape), tensor.numel() * tensor.element_size()
            )

    def _load_pickle_shard(self, shard: str) -> dict[str, torch.Tensor]:
        if shard not in self._pickle_shards:
            path = self.model_dir / shard
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for corrupt / unsafe pickles
                raise CheckpointError(f"{path}: cannot load as a weights-only pickle: {exc}") from None
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{path}: not a state dict of tensors")
            self._pickle_shards[shard] = state
        return self._pickle_shards[shard]


def _consecutive_runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) runs covering `indices` in order: [4, 5, 6, 1, 2] → [(4, 7), (1, 3)]."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: config.json is missing")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: config.json does not parse: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{path}: config.json must be a JSON object with a string 'model_type'")
    return config


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: index does not parse or has no 'weight_map' ({exc})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: 'weight_map' must map tensor names to shard file names")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard:
            raise CheckpointError(f"{path}: shard name {shard!r} must be a plain file name inside the folder")
    return weight_map
