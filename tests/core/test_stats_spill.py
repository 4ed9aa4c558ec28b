"""Layer-by-layer memory: the hidden states spill to a memory-mapped file beyond the bound with exactly the
in-RAM results, nothing is left on disk, no checkpoint map outlives its layer, and float32 expert outputs
agree with float64 for every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe2dense_core.plan import PlanConfig, build_plan
from moe2dense_core.stats.collect import collect_stats
from moe2dense_core.stats.hidden_store import HiddenStateStore
from moe2dense_core.stats.layer_stats import SUM_FIELDS, StatsError
from tests.fixtures.tiny_moe import FAMILIES, HIDDEN, calibration_batches


def mapped_paths() -> list[str]:
    """Files this process has memory-mapped (Linux /proc/self/maps), '(deleted)' marking unlinked ones."""
    with open("/proc/self/maps") as maps:
        return [line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6]


def test_the_store_is_file_backed_exactly_beyond_the_bound(tmp_path: Path) -> None:
    shapes = [(2, 3), (1, 5)]
    nbytes = (2 * 3 + 1 * 5) * HIDDEN * 4  # tokens · hidden · 4 bytes (float32)
    assert not HiddenStateStore(shapes, HIDDEN, torch.float32, max_ram_bytes=nbytes).file_backed
    with HiddenStateStore(
        shapes, HIDDEN, torch.float32, max_ram_bytes=nbytes - 1, spill_dir=tmp_path
    ) as store:
        assert store.file_backed and store.nbytes == nbytes
        values = [torch.randn(b, t, HIDDEN) for b, t in shapes]
        for batch, value in enumerate(values):
            store.put(batch, value)
        assert all(torch.equal(store.get(batch), value) for batch, value in enumerate(values))
        assert any(path.startswith(str(tmp_path)) and path.endswith("(deleted)") for path in mapped_paths())
        assert list(tmp_path.iterdir()) == []  # unlinked once mapped: nothing to clean up, even after a kill
        with pytest.raises(StatsError, match=r"batch 1: torch.float64 \(1, 5, 64\), expected torch.float32"):
            store.put(1, values[1].double())
    assert not any(path.startswith(str(tmp_path)) for path in mapped_paths())


@pytest.mark.parametrize("family", FAMILIES)
def test_spilled_hidden_states_give_exactly_the_in_ram_statistics(
    family: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    in_ram = collect_stats(checkpoints[family], calibration_batches(), mode="layer_by_layer")
    spilled_while_running = []
    weight_map = json.loads((checkpoints[family] / "model.safetensors.index.json").read_text())["weight_map"]
    resident = {shard for name, shard in weight_map.items() if not name.startswith("model.layers.")}

    def observe(done: int, total: int) -> None:
        mapped = mapped_paths()
        spilled_while_running.append(any(path.startswith(str(tmp_path)) for path in mapped))
        mapped_shards = {Path(path).name for path in mapped if path.startswith(str(checkpoints[family]))}
        assert mapped_shards <= resident, "a decoder layer's shard map outlived the layer"  # embeddings stay

    spilled = collect_stats(
        checkpoints[family],
        calibration_batches(),
        mode="layer_by_layer",
        max_hidden_bytes=(2 * 12 + 7) * HIDDEN * 4 - 1,
        spill_dir=tmp_path,
        on_progress=observe,
    )
    assert spilled_while_running and all(spilled_while_running)
    assert list(tmp_path.iterdir()) == []
    for index, layer in in_ram.layers.items():
        for name in SUM_FIELDS:
            assert torch.equal(getattr(spilled.layers[index], name), getattr(layer, name)), (index, name)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_expert_outputs_agree_with_float64(family: str, checkpoints: dict[str, Path]) -> None:
    exact = collect_stats(checkpoints[family], calibration_batches(), outputs_dtype=torch.float64)
    fast = collect_stats(checkpoints[family], calibration_batches(), outputs_dtype=torch.float32)
    for index, layer in exact.layers.items():
        for name in SUM_FIELDS:
            reference, value = getattr(layer, name), getattr(fast.layers[index], name)
            scale = float(reference.abs().max())
            assert float((value - reference).abs().max()) <= 1e-6 * scale, (index, name)
    for config in (
        PlanConfig(),
        PlanConfig(scoring="reap", grouping="output_cluster", num_selected=exact.top_k + 1),
    ):
        assert [(p.kept, p.groups) for p in build_plan(exact, config).layers] == [
            (p.kept, p.groups) for p in build_plan(fast, config).layers
        ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_layer_by_layer_on_a_gpu_equals_the_cpu(checkpoints: dict[str, Path]) -> None:
    for family in ("qwen3_moe", "deepseek_v3", "gpt_oss"):
        cpu = collect_stats(checkpoints[family], calibration_batches(), mode="layer_by_layer")
        cuda = collect_stats(checkpoints[family], calibration_batches(), mode="layer_by_layer", device="cuda")
        for index, layer in cpu.layers.items():
            for name in SUM_FIELDS:
                torch.testing.assert_close(
                    getattr(cuda.layers[index], name).cpu(),
                    getattr(layer, name),
                    rtol=1e-4,
                    atol=1e-6,
                    msg=f"{family} layer {index} {name}",
                )
