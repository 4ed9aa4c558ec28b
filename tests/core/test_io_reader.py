"""CheckpointReader: lazy reads through the index, digests, and refusal of broken or pickled checkpoints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe2dense_core.errors import CheckpointError
from moe2dense_core.io import CheckpointReader, file_sha256
from tests.fixtures.tiny_moe import build_tiny_moe, edit_shard, edit_weight_map

EXPERT = "model.layers.0.mlp.experts.3.down_proj.weight"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_moe("qwen3_moe", tmp_path_factory.mktemp("qwen3_moe"))


@pytest.fixture
def copy_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


def _index(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.safetensors.index.json").read_text())


def test_reads_every_tensor_lazily_and_exactly(tiny_dir: Path) -> None:
    reader = CheckpointReader(tiny_dir)
    weight_map = _index(tiny_dir)["weight_map"]
    assert len(reader.shard_files()) > 1
    assert reader.names() == sorted(weight_map)
    for shard in reader.shard_files():
        stored = load_file(tiny_dir / shard)
        for name, tensor in stored.items():
            assert reader.shard_of(name) == shard
            assert reader.shape(name) == tuple(tensor.shape)
            assert reader.dtype(name) == tensor.dtype
            assert torch.equal(reader.get(name), tensor)
    assert reader.config["model_type"] == "qwen3_moe"


def test_single_file_checkpoint(copy_dir: Path) -> None:
    merged: dict[str, torch.Tensor] = {}
    for shard in set(_index(copy_dir)["weight_map"].values()):
        merged.update(load_file(copy_dir / shard))
        (copy_dir / shard).unlink()
    (copy_dir / "model.safetensors.index.json").unlink()
    save_file(merged, str(copy_dir / "model.safetensors"))
    reader = CheckpointReader(copy_dir)
    assert reader.shard_files() == ["model.safetensors"]
    assert torch.equal(reader.get(EXPERT), merged[EXPERT])


def test_shard_digests_are_sha256_of_each_shard(tiny_dir: Path) -> None:
    reader = CheckpointReader(tiny_dir)
    digests = reader.shard_digests()
    assert digests == {s: file_sha256(tiny_dir / s) for s in reader.shard_files()}


def test_missing_tensor_names_the_tensor_and_the_index(tiny_dir: Path) -> None:
    reader = CheckpointReader(tiny_dir)
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.9\.mlp\.gate\.weight'.*model\.safetensors\.index\.json"
    ):
        reader.get("model.layers.9.mlp.gate.weight")


def test_truncated_shard_is_refused_naming_the_file(copy_dir: Path) -> None:
    shard = copy_dir / _index(copy_dir)["weight_map"][EXPERT]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated"):
        CheckpointReader(copy_dir)


def test_corrupt_header_is_refused_naming_the_file(copy_dir: Path) -> None:
    shard = copy_dir / _index(copy_dir)["weight_map"][EXPERT]
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe{["
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt safetensors header"):
        CheckpointReader(copy_dir)


def test_header_length_beyond_file_is_refused(copy_dir: Path) -> None:
    shard = copy_dir / _index(copy_dir)["weight_map"][EXPERT]
    data = bytearray(shard.read_bytes())
    data[0:8] = (10**9).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt or truncated"):
        CheckpointReader(copy_dir)


def test_missing_shard_file_is_refused(copy_dir: Path) -> None:
    shard = _index(copy_dir)["weight_map"][EXPERT]
    (copy_dir / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"shard '{shard}' named in the index does not exist"):
        CheckpointReader(copy_dir)


def test_index_entry_absent_from_its_shard_is_refused(copy_dir: Path) -> None:
    stray = "model.layers.0.mlp.experts.99.up_proj.weight"
    edit_weight_map(copy_dir, lambda weight_map: weight_map.update({stray: weight_map[EXPERT]}))
    with pytest.raises(CheckpointError, match=r"experts\.99\.up_proj\.weight' is assigned to"):
        CheckpointReader(copy_dir)


def test_shard_tensor_the_index_leaves_out_is_refused(copy_dir: Path) -> None:
    """A tensor stored in a shard but absent from the index is invisible to every loader that goes through
    the index (transformers would initialise it randomly): refused, naming the tensor and the shard."""
    shard = edit_shard(
        copy_dir, EXPERT, lambda tensors: tensors.update(extra=torch.zeros(3)), update_index=False
    )
    with pytest.raises(
        CheckpointError, match=rf"{shard}: holds tensor 'extra', but the index .* does not list it"
    ):
        CheckpointReader(copy_dir)


def test_shard_tensor_the_index_assigns_elsewhere_is_refused(copy_dir: Path) -> None:
    weight_map = _index(copy_dir)["weight_map"]
    other = next(name for name, shard in weight_map.items() if shard != weight_map[EXPERT])
    shard = edit_shard(
        copy_dir, EXPERT, lambda tensors: tensors.update({other: torch.zeros(1)}), update_index=False
    )
    with pytest.raises(
        CheckpointError, match=rf"{shard}: holds tensor '{re.escape(other)}', but the index .* assigns it to"
    ):
        CheckpointReader(copy_dir)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "config.json is missing"), ("{not json", "does not parse"), ('{"hidden_size": 4}', "model_type")],
)
def test_bad_config_is_refused(copy_dir: Path, content: str | None, message: str) -> None:
    if content is None:
        (copy_dir / "config.json").unlink()
    else:
        (copy_dir / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        CheckpointReader(copy_dir)


def test_no_weights_lists_the_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "qwen3_moe"}')
    with pytest.raises(CheckpointError, match="no weights found.*config.json"):
        CheckpointReader(tmp_path)


def _to_pickle(model_dir: Path) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for shard in set(_index(model_dir)["weight_map"].values()):
        merged.update(load_file(model_dir / shard))
        (model_dir / shard).unlink()
    (model_dir / "model.safetensors.index.json").unlink()
    torch.save(merged, model_dir / "pytorch_model.bin")
    return merged


def test_pickle_checkpoint_is_refused_unless_allowed(copy_dir: Path) -> None:
    merged = _to_pickle(copy_dir)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*allow_pickle=True"):
        CheckpointReader(copy_dir)
    reader = CheckpointReader(copy_dir, allow_pickle=True)
    assert reader.format == "pickle"
    assert reader.names() == sorted(merged)
    assert torch.equal(reader.get(EXPERT), merged[EXPERT])
    assert reader.shape(EXPERT) == tuple(merged[EXPERT].shape)


def test_allowed_pickle_still_refuses_arbitrary_objects(copy_dir: Path) -> None:
    _to_pickle(copy_dir)
    torch.save({"weights": torch.zeros(2), "payload": shutil.rmtree}, copy_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only pickle"):
        CheckpointReader(copy_dir, allow_pickle=True)


FUSED = "model.layers.1.block_sparse_moe.input_linear.weight"


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Granite stores every layer's experts fused, [E, 2I, H]."""
    return build_tiny_moe("granitemoe", tmp_path_factory.mktemp("granitemoe"))


def test_index_select_reads_only_the_selected_rows_in_their_order(fused_dir: Path) -> None:
    reader = CheckpointReader(fused_dir)
    whole = reader.get(FUSED)
    reader.bytes_read.clear()
    for indices in ([5, 6, 7, 2, 3, 0], [4], list(range(whole.shape[0])), []):
        selected = reader.index_select(FUSED, indices)
        assert torch.equal(selected, whole[indices]), indices
        assert selected.untyped_storage().nbytes() == selected.numel() * selected.element_size()
    assert reader.bytes_read[FUSED] == (6 + 1 + 8 + 0) * whole[0].numel() * whole.element_size()


def test_index_select_refuses_indices_outside_the_first_axis(fused_dir: Path) -> None:
    reader = CheckpointReader(fused_dir)
    with pytest.raises(CheckpointError, match=rf"{re.escape(FUSED)}' \[8, 64, 64\]: indices \[1, 8\]"):
        reader.index_select(FUSED, [1, 8])


def test_index_select_on_an_allowed_pickle(copy_dir: Path) -> None:
    merged = _to_pickle(copy_dir)
    reader = CheckpointReader(copy_dir, allow_pickle=True)
    assert torch.equal(reader.index_select(EXPERT, [3, 1]), merged[EXPERT][[3, 1]])
    assert reader.bytes_read[EXPERT] == 2 * merged[EXPERT][0].numel() * 4


def _mapped_shards(model_dir: Path) -> set[str]:
    """Shard files of `model_dir` this process has memory-mapped (Linux /proc/self/maps)."""
    lines = Path("/proc/self/maps").read_text().splitlines()
    return {
        Path(line.split()[-1]).name
        for line in lines
        if line.endswith(".safetensors") and str(model_dir) in line
    }


def test_release_mapped_unmaps_every_shard_and_reads_go_on(tiny_dir: Path) -> None:
    reader = CheckpointReader(tiny_dir)
    names = reader.names()
    values = {name: reader.get(name).clone() for name in names}  # clones: nothing pins a map
    assert _mapped_shards(tiny_dir) == set(reader.shard_files())
    reader.release_mapped()
    assert _mapped_shards(tiny_dir) == set()
    assert torch.equal(reader.get(EXPERT), values[EXPERT])  # reopened lazily
    assert _mapped_shards(tiny_dir) == {reader.shard_of(EXPERT)}
