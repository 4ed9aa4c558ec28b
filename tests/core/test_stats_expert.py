"""ExpertStats: merge, state dict, atomic save / load with digests and corruption checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe2dense_core.stats.expert_stats import METADATA_FILE, TENSORS_FILE, ExpertStats
from moe2dense_core.stats.layer_stats import SUM_FIELDS, LayerStats, StatsError
from moe2dense_core.stats.request import EVERYTHING, ROUTER_ONLY

CONFIG = {"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2, "hidden_size": 8}


def filled_stats(seed: int, layers: tuple[int, ...] = (0, 2)) -> ExpertStats:
    g = torch.Generator().manual_seed(seed)
    stats = ExpertStats(dict(CONFIG), "qwen3_moe", num_experts=4, top_k=2)
    for layer in layers:
        probs = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
        weights, indices = probs.topk(2, dim=-1)
        s = LayerStats(layer, 4, 2)
        s.update(probs, weights, indices, torch.randn(4, 6, 8, generator=g, dtype=torch.float64))
        stats.layers[layer] = s
    return stats


def assert_same(a: ExpertStats, b: ExpertStats) -> None:
    assert (a.model_type, a.num_experts, a.top_k, a.config) == (
        b.model_type,
        b.num_experts,
        b.top_k,
        b.config,
    )
    assert sorted(a.layers) == sorted(b.layers)
    for i in a.layers:
        for name in SUM_FIELDS:
            assert torch.equal(getattr(a.layers[i], name), getattr(b.layers[i], name)), (i, name)


def test_merge_sums_every_layer_and_refuses_other_models() -> None:
    a, b = filled_stats(1), filled_stats(2)
    merged = a.merge(b)
    for i in (0, 2):
        torch.testing.assert_close(merged.layers[i].gram, a.layers[i].gram + b.layers[i].gram)
        assert float(merged.layers[i].num_tokens) == 12.0
    with pytest.raises(StatsError, match="differ"):
        a.merge(filled_stats(3, layers=(0,)))


def test_save_load_round_trip_and_digest(tmp_path: Path) -> None:
    stats = filled_stats(1)
    digest = stats.save(tmp_path / "stats")
    assert digest == stats.digest() and len(digest) == 64
    loaded = ExpertStats.load(tmp_path / "stats")
    assert_same(stats, loaded)
    assert loaded.digest() == digest
    meta = json.loads((tmp_path / "stats" / METADATA_FILE).read_text())
    assert meta["schema_version"] == 2 and meta["digest"] == digest and meta["layers"] == [0, 2]
    assert meta["collected"] == {"expert_outputs": True, "gram": True}
    assert sorted(p.name for p in (tmp_path / "stats").iterdir()) == sorted([TENSORS_FILE, METADATA_FILE])


def test_what_was_collected_round_trips_and_schema_1_reads_as_everything(tmp_path: Path) -> None:
    router_only = ExpertStats(dict(CONFIG), "qwen3_moe", 4, 2, collected=ROUTER_ONLY)
    router_only.new_layer(0)
    router_only.save(tmp_path / "router")
    loaded = ExpertStats.load(tmp_path / "router")
    assert loaded.collected == ROUTER_ONLY and loaded.layers[0].collected == ROUTER_ONLY
    filled_stats(1).save(tmp_path / "old")
    meta_path = tmp_path / "old" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    del meta["collected"]
    meta_path.write_text(json.dumps({**meta, "schema_version": 1}))  # as written before requests existed
    assert ExpertStats.load(tmp_path / "old").collected == EVERYTHING
    meta_path.write_text(json.dumps({**meta, "schema_version": 2}))
    with pytest.raises(StatsError, match=r"missing fields \['collected'\]"):
        ExpertStats.load(tmp_path / "old")


def test_digest_depends_on_content_only() -> None:
    a, b = filled_stats(1), filled_stats(1)
    assert a.digest() == b.digest()
    b.layers[0].counts[0] += 1
    assert a.digest() != b.digest()
    reordered = ExpertStats(dict(CONFIG), "qwen3_moe", 4, 2, {2: a.layers[2], 0: a.layers[0]})
    assert reordered.digest() == a.digest()


def test_load_detects_corrupt_tensor_file(tmp_path: Path) -> None:
    filled_stats(1).save(tmp_path)
    path = tmp_path / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StatsError, match="sha256 does not match"):
        ExpertStats.load(tmp_path)


def test_load_refuses_unknown_schema_and_missing_files(tmp_path: Path) -> None:
    filled_stats(1).save(tmp_path)
    meta_path = tmp_path / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StatsError, match="schema_version 99"):
        ExpertStats.load(tmp_path)
    with pytest.raises(StatsError, match="missing"):
        ExpertStats.load(tmp_path / "nowhere")


def test_save_overwrites_atomically_leaving_no_temp_files(tmp_path: Path) -> None:
    filled_stats(1).save(tmp_path)
    second = filled_stats(2)
    second.save(tmp_path)
    assert_same(second, ExpertStats.load(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TENSORS_FILE, METADATA_FILE])
