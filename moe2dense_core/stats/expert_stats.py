"""ExpertStats: the calibration statistics of a whole model, one LayerStats per MoE layer.

On disk (`save(dir)` / `load(dir)`), a stats artifact is a folder of two files:
  stats.safetensors   every tensor of every layer, keyed `layers.<i>.<field>` (float64; ids int64)
  stats.json          {schema_version, model_type, num_experts, top_k, layers, config, collected
                       ({expert_outputs, gram}: the StatsRequest), tensors_sha256 (of stats.safetensors),
                       digest (of the content)}
Both are written atomically (temp file + os.replace), the tensors first, so a reader never sees a
JSON that points at a half-written tensor file; `load` verifies the tensor file's sha256.
Schema 1 (written before statistics requests existed, when every statistic was always collected) is
read as collected=EVERYTHING; any other version than 1 and 2 is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from moe2dense_core.errors import StatsError
from moe2dense_core.io.atomic import atomic_path, atomic_write_text
from moe2dense_core.io.digests import file_sha256
from moe2dense_core.schema import check_schema_version
from moe2dense_core.stats.layer_stats import LayerStats
from moe2dense_core.stats.request import EVERYTHING, StatsRequest

STATS_SCHEMA_VERSION = 2
_SCHEMA_EVERYTHING_COLLECTED = 1
TENSORS_FILE = "stats.safetensors"
METADATA_FILE = "stats.json"


@dataclass
class ExpertStats:
    """Per-layer float64 accumulators of one teacher.

    config: the teacher's config.json (dict); model_type: its `config.model_type`;
    layers: MoE layer index → LayerStats, each collected with `collected` (request.py).
    """

    config: dict
    model_type: str
    num_experts: int
    top_k: int
    layers: dict[int, LayerStats] = field(default_factory=dict)
    collected: StatsRequest = EVERYTHING

    def new_layer(self, layer: int) -> LayerStats:
        """The LayerStats of MoE layer `layer`, created empty (with this request) if absent."""
        stats = self.layers.setdefault(
            layer, LayerStats(layer, self.num_experts, self.top_k, collected=self.collected)
        )
        if stats.collected != self.collected:
            raise StatsError(f"layer {layer}: collected {stats.collected}, the statistics {self.collected}")
        return stats

    # ---- combination --------------------------------------------------------------------------------
    def merge(self, other: ExpertStats) -> ExpertStats:
        """A new ExpertStats over both token sets (e.g. two data shards or two GPUs); inputs untouched.

        Both must describe the same model (model_type, E, k), hold the same MoE layers and have been
        collected with the same request. The config of `self` is kept.
        """
        mine = (self.model_type, self.num_experts, self.top_k, sorted(self.layers), self.collected)
        theirs = (other.model_type, other.num_experts, other.top_k, sorted(other.layers), other.collected)
        if mine != theirs:
            raise StatsError(
                "ExpertStats.merge: (model_type, num_experts, top_k, layers, collected) differ: "
                f"{mine} vs {theirs}"
            )
        layers = {i: self.layers[i].merge(other.layers[i]) for i in sorted(self.layers)}
        return ExpertStats(
            dict(self.config), self.model_type, self.num_experts, self.top_k, layers, self.collected
        )

    # ---- serialisation ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat `layers.<i>.<field>` → tensor for every layer (see LayerStats.state_dict)."""
        return {
            f"layers.{i}.{name}": tensor
            for i in sorted(self.layers)
            for name, tensor in self.layers[i].state_dict().items()
        }

    def metadata(self) -> dict:
        """The JSON-serialisable description (everything except the tensors)."""
        return {
            "schema_version": STATS_SCHEMA_VERSION,
            "model_type": self.model_type,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "layers": sorted(self.layers),
            "config": self.config,
            "collected": self.collected.to_json(),
        }

    def digest(self) -> str:
        """sha256 of the content: canonical metadata JSON, then every tensor (name, dtype, shape, bytes)
        in sorted name order. Independent of file format, device and insertion order."""
        h = hashlib.sha256(_canonical_json(self.metadata()).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"\n{name}|{t.dtype}|{list(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def save(self, directory: str | Path) -> str:
        """Write `stats.safetensors` + `stats.json` into `directory` (created if needed); returns digest()."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        digest = self.digest()
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self.state_dict().items()}
        tensors_path = directory / TENSORS_FILE
        with atomic_path(tensors_path) as tmp:
            save_file(tensors, str(tmp))
        metadata = {**self.metadata(), "tensors_sha256": file_sha256(tensors_path), "digest": digest}
        atomic_write_text(directory / METADATA_FILE, json.dumps(metadata, indent=1, sort_keys=True))
        return digest

    @classmethod
    def load(cls, directory: str | Path) -> ExpertStats:
        """Read a folder written by `save`; checks schema version, file sha256, layer set and shapes."""
        directory = Path(directory)
        meta_path, tensors_path = directory / METADATA_FILE, directory / TENSORS_FILE
        for path in (meta_path, tensors_path):
            if not path.is_file():
                raise StatsError(f"{path}: missing (not an ExpertStats folder written by ExpertStats.save)")
        try:
            meta = json.loads(meta_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StatsError(f"{meta_path}: does not parse: {exc}") from None
        version = meta.get("schema_version") if isinstance(meta, dict) else None
        everything_collected = type(version) is int and version == _SCHEMA_EVERYTHING_COLLECTED
        if not everything_collected:
            check_schema_version(version, STATS_SCHEMA_VERSION, str(meta_path), StatsError)
        keys = ("model_type", "num_experts", "top_k", "layers", "config", "tensors_sha256")
        keys += () if everything_collected else ("collected",)
        missing = [k for k in keys if k not in meta]
        if missing:
            raise StatsError(f"{meta_path}: missing fields {missing}")
        if file_sha256(tensors_path) != meta["tensors_sha256"]:
            raise StatsError(
                f"{tensors_path}: sha256 does not match tensors_sha256 in {meta_path} (corrupt or replaced)"
            )
        collected = (
            EVERYTHING if everything_collected else StatsRequest.from_json(meta["collected"], str(meta_path))
        )
        flat = load_file(str(tensors_path))
        layers = {}
        for i in meta["layers"]:
            prefix = f"layers.{i}."
            layer = LayerStats.from_state_dict(
                {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}, collected
            )
            if (layer.layer, layer.num_experts, layer.top_k) != (i, meta["num_experts"], meta["top_k"]):
                raise StatsError(
                    f"{tensors_path}: layer {i} holds (layer, E, k) = {(layer.layer, layer.num_experts, layer.top_k)}, "
                    f"metadata says ({i}, {meta['num_experts']}, {meta['top_k']})"
                )
            layers[i] = layer
        unexpected = sorted({k.split(".")[1] for k in flat} - {str(i) for i in meta["layers"]})
        if unexpected:
            raise StatsError(f"{tensors_path}: tensors of layers {unexpected} not listed in {meta_path}")
        return cls(meta["config"], meta["model_type"], meta["num_experts"], meta["top_k"], layers, collected)


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
