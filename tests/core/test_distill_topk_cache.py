"""Top-k logit cache: k = V reproduces the online loss and training; small k is close (gap reported);
the cache refuses data, temperature or routing it was not written for; shards round-trip by row; float16
log-probabilities round-trip through one rounding; the stored size is the bytes-per-token formula; ranks
of a data-parallel teacher pass write the very shards and manifest one process writes, and a merge of
their parts refuses a missing or repeated shard and ranks that disagree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import (
    DistillConfig,
    DistillError,
    TopKCache,
    distill,
    forward_kl_per_token,
    write_topk_cache,
)
from moe2dense_core.distill.targets import CachedTeacher, OnlineTeacher
from moe2dense_core.distill.topk_cache import (
    MANIFEST_NAME,
    TopKCacheManifest,
    bytes_per_token,
    cache_bytes,
    merge_manifest_parts,
    rank_shards,
    shard_spans,
    write_manifest,
    write_topk_shards,
)
from tests.core.distill_tiny_models import VOCAB, dense_student_from_teacher, peaked_teacher, random_rows

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    teacher = peaked_teacher()
    data = random_rows(8, 32, seed=5)
    root = tmp_path_factory.mktemp("caches")
    caches = {
        k: write_topk_cache(
            teacher, data, root / f"k{k}", k, precision="fp32", batch_size=2, rows_per_shard=3
        )
        for k in (VOCAB, 16)
    }
    write_topk_cache(
        teacher,
        data,
        root / "k16_routed4",
        16,
        teacher_top_k=4,
        teacher_digest="teacher-a",
        precision="fp32",
        batch_size=2,
        rows_per_shard=3,
    )
    return {"teacher": teacher, "data": data, "root": root, "manifests": caches}


def _mean_kl(source, student, data: torch.Tensor) -> float:
    with torch.no_grad():
        logits = student(input_ids=data).logits
        return float(
            forward_kl_per_token(*source.logprob_pair(torch.arange(len(data)), data, logits, 1.0)).mean()
        )


def test_cache_layout_and_rows_round_trip(setup: dict) -> None:
    manifest = setup["manifests"][16]
    assert [s.num_rows for s in manifest.shards] == [3, 3, 2]
    assert manifest.k == 16 and manifest.vocab_size == VOCAB and manifest.seq_len == 32
    cache = TopKCache.open(setup["root"] / "k16", verify=True)
    rows = torch.tensor([7, 0, 4, 3])
    got = cache.rows(rows)
    assert torch.equal(got.input_ids, setup["data"][rows])
    assert got.topk_ids.shape == (4, 32, 16) and got.tail_logprob.shape == (4, 32)
    total = torch.logsumexp(torch.cat([got.topk_logprobs, got.tail_logprob.unsqueeze(-1)], -1), -1)
    assert torch.allclose(total, torch.zeros_like(total), atol=1e-5)  # top-k mass + tail mass = 1
    assert bool((got.topk_logprobs[..., :-1] >= got.topk_logprobs[..., 1:]).all())


def test_full_vocabulary_cache_equals_online_loss_and_training(setup: dict) -> None:
    teacher, data = setup["teacher"], setup["data"]
    student = dense_student_from_teacher(teacher)
    online = OnlineTeacher(teacher, precision="fp32", device=CPU, top_k=None)
    cached = CachedTeacher(TopKCache.open(setup["root"] / f"k{VOCAB}"), CPU)
    assert _mean_kl(cached, student, data) == pytest.approx(
        _mean_kl(online, student, data), rel=1e-5, abs=1e-7
    )

    config = DistillConfig(max_steps=3, micro_batch_size=4, lr=1e-3, precision="fp32")
    a, b = dense_student_from_teacher(teacher), dense_student_from_teacher(teacher)
    run_a = distill(a, teacher, data, config)
    run_b = distill(b, setup["root"] / f"k{VOCAB}", data, config)
    for step_a, step_b in zip(run_a.history, run_b.history, strict=True):
        assert step_b["loss"] == pytest.approx(step_a["loss"], rel=1e-5, abs=1e-7)
    # AdamW divides by sqrt(v): a ~1e-8 gradient entry whose last bits differ (another summation order)
    # moves its weight by up to ~lr. 3 steps at lr 1e-3: allow 5% of one step.
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, rtol=0, atol=5e-5), name


def test_small_k_cache_is_close_and_reports_the_gap(setup: dict, record_property) -> None:
    teacher, data = setup["teacher"], setup["data"]
    student = dense_student_from_teacher(teacher)
    full = _mean_kl(OnlineTeacher(teacher, precision="fp32", device=CPU, top_k=None), student, data)
    top16 = _mean_kl(CachedTeacher(TopKCache.open(setup["root"] / "k16"), CPU), student, data)
    gap = (full - top16) / full
    record_property("top16_relative_kl_gap", gap)
    print(f"\nforward KL online {full:.6f}, top-16 cache {top16:.6f}, relative gap {gap:.4%}")
    assert 0.0 <= gap < 0.05  # a lower bound (chain rule), within 5% for a peaked teacher


def test_cache_refuses_other_data_temperature_and_routing(setup: dict) -> None:
    teacher, data = setup["teacher"], setup["data"]
    student = dense_student_from_teacher(teacher)
    cache_dir = setup["root"] / "k16"
    with pytest.raises(DistillError, match="other data"):
        distill(
            student, cache_dir, random_rows(8, 32, seed=6), DistillConfig(max_steps=1, micro_batch_size=4)
        )
    with pytest.raises(DistillError, match="temperature"):
        distill(student, cache_dir, data, DistillConfig(max_steps=1, micro_batch_size=4, temperature=2.0))
    with pytest.raises(DistillError, match="teacher_top_k"):
        distill(student, cache_dir, data, DistillConfig(max_steps=1, micro_batch_size=4, teacher_top_k=4))


def test_cache_routing_and_teacher_must_match_the_run(setup: dict) -> None:
    teacher, data = setup["teacher"], setup["data"]
    routed = setup["root"] / "k16_routed4"
    manifest = TopKCache.open(routed).manifest
    assert (manifest.teacher_top_k, manifest.teacher_digest, manifest.k) == (4, "teacher-a", 16)
    plain = DistillConfig(max_steps=1, micro_batch_size=4, precision="fp32")
    with pytest.raises(
        DistillError, match=r"k16_routed4 does not fit this run: teacher_top_k: cache 4, run None"
    ):
        distill(
            dense_student_from_teacher(teacher), routed, data, plain
        )  # the run asked for the teacher's own k
    with pytest.raises(DistillError, match="teacher_top_k: cache 4, run 8"):
        distill(
            dense_student_from_teacher(teacher), routed, data, plain.model_copy(update={"teacher_top_k": 8})
        )
    expanded = plain.model_copy(update={"teacher_top_k": 4})
    with pytest.raises(DistillError, match="teacher_digest: cache 'teacher-a', run 'teacher-b'"):
        distill(dense_student_from_teacher(teacher), routed, data, expanded, teacher_digest="teacher-b")
    assert (
        distill(dense_student_from_teacher(teacher), routed, data, expanded, teacher_digest="teacher-a").steps
        == 1
    )


def test_open_rejects_incomplete_or_tampered_caches(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(DistillError, match="manifest.json is missing"):
        TopKCache.open(tmp_path)
    manifest = json.loads((setup["root"] / "k16" / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for shard in manifest["shards"]:
        (tmp_path / shard["file"]).write_bytes((setup["root"] / "k16" / shard["file"]).read_bytes())
    TopKCache.open(tmp_path)  # structure is fine
    with pytest.raises(DistillError, match="does not match its sha256"):
        TopKCache.open(tmp_path, verify=True)
    with pytest.raises(DistillError, match="vocab_size"):
        write_topk_cache(setup["teacher"], setup["data"], tmp_path / "bad", VOCAB + 1)


def _payload_bytes(path: Path) -> int:
    """Bytes of a safetensors file's tensors: its size less the 8-byte length and the JSON header."""
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    return path.stat().st_size - 8 - header_len


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_stored_size_is_the_bytes_per_token_formula(setup: dict, tmp_path: Path, dtype: str) -> None:
    data = setup["data"]
    manifest = write_topk_cache(
        setup["teacher"],
        data,
        tmp_path,
        16,
        precision="fp32",
        batch_size=2,
        rows_per_shard=3,
        logprob_dtype=dtype,
    )
    payload = sum(_payload_bytes(tmp_path / shard.file) for shard in manifest.shards)
    assert payload == cache_bytes(16, dtype, data.numel()) == data.numel() * bytes_per_token(16, dtype)
    assert bytes_per_token(16, dtype) == 16 * (4 + (4 if dtype == "float32" else 2)) + 4 + 4


def test_paper_scale_arithmetic() -> None:
    """README "Offline teacher": k = 64 in float16 for the paper's ~4B distillation tokens."""
    assert bytes_per_token(64, "float16") == 392 and bytes_per_token(64, "float32") == 520
    assert cache_bytes(64, "float16", 4_000_000_000) == 1_568_000_000_000  # 1.57 TB
    with pytest.raises(DistillError, match="logprob_dtype 'bfloat16'"):
        bytes_per_token(64, "bfloat16")  # type: ignore[arg-type]


def test_float16_logprobs_round_trip(setup: dict, tmp_path: Path) -> None:
    teacher, data = setup["teacher"], setup["data"]
    half = write_topk_cache(
        teacher, data, tmp_path, 16, precision="fp32", batch_size=2, rows_per_shard=3, logprob_dtype="float16"
    )
    assert half.logprob_dtype == "float16" and setup["manifests"][16].logprob_dtype == "float32"
    rows = torch.tensor([6, 1, 3])
    full, got = (
        TopKCache.open(setup["root"] / "k16").rows(rows),
        TopKCache.open(tmp_path, verify=True).rows(rows),
    )
    assert got.topk_logprobs.dtype == torch.float32  # upcast on read
    assert torch.equal(got.topk_logprobs, full.topk_logprobs.half().float())  # exactly one float16 rounding
    assert torch.equal(got.topk_ids, full.topk_ids) and torch.equal(got.tail_logprob, full.tail_logprob)
    assert TopKCache.open(tmp_path).label == "topk_cache(k=16, float16)"
    with pytest.raises(
        DistillError, match="k: cache 16, run 8; logprob_dtype: cache 'float16', run 'float32'"
    ):
        TopKCache.open(tmp_path).check_fits(
            data_digest=half.data_digest,
            temperature=1.0,
            teacher_top_k=None,
            teacher_digest=None,
            k=8,
            logprob_dtype="float32",
        )


def test_shards_are_located_when_first_read(setup: dict) -> None:
    directory = setup["root"] / "k16"
    cache = TopKCache.open(directory)
    located: list[str] = []

    def locate(shard):
        located.append(shard.file)
        return directory / shard.file

    lazy = TopKCache(cache.manifest, locate, "lazy-cache")
    assert located == []
    got = lazy.rows(torch.tensor([7, 6]))  # rows 6, 7: the third shard (rows 6-7)
    lazy.rows(torch.tensor([6]))
    assert located == ["shard_00002.safetensors"]  # once
    assert torch.equal(got.topk_ids, cache.rows(torch.tensor([7, 6])).topk_ids)


def test_a_manifest_of_another_schema_version_is_refused(setup: dict, tmp_path: Path) -> None:
    manifest = json.loads((setup["root"] / "k16" / "manifest.json").read_text())
    manifest["schema_version"] = 1
    del manifest["logprob_dtype"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DistillError, match="schema_version 1 is not supported"):
        TopKCache.open(tmp_path)


def test_every_shard_belongs_to_exactly_one_rank() -> None:
    for num_shards in (0, 1, 5, 8):
        for processes in (1, 2, 3):
            ranks = [list(rank_shards(num_shards, rank, processes)) for rank in range(processes)]
            assert sorted(i for shards in ranks for i in shards) == list(range(num_shards))
    assert shard_spans(8, 3) == [(0, 3), (3, 3), (6, 2)]
    with pytest.raises(DistillError, match="rank 2 outside the 2 processes"):
        rank_shards(5, 2, 2)


def test_two_ranks_write_the_bytes_one_process_writes(setup: dict, tmp_path: Path) -> None:
    """Ranks 1 and 0 of 2 (in that order) write the k = 16 cache of `setup`: shards and manifest identical."""
    one_process = setup["root"] / "k16"
    parts = [
        write_topk_shards(
            setup["teacher"],
            setup["data"],
            tmp_path,
            16,
            precision="fp32",
            batch_size=2,
            rows_per_shard=3,
            rank=rank,
            processes=2,
        )
        for rank in (1, 0)
    ]
    assert [[s.file for s in part.shards] for part in parts] == [
        ["shard_00001.safetensors"],
        ["shard_00000.safetensors", "shard_00002.safetensors"],
    ]
    assert not (tmp_path / MANIFEST_NAME).exists()  # a rank writes shards only
    merged = merge_manifest_parts(parts)
    assert merged == setup["manifests"][16]
    write_manifest(tmp_path, merged)
    for name in [MANIFEST_NAME, *(s.file for s in merged.shards)]:
        assert (tmp_path / name).read_bytes() == (one_process / name).read_bytes(), name


def test_merging_refuses_a_missing_or_repeated_shard_and_disagreeing_ranks(
    setup: dict, tmp_path: Path
) -> None:
    def part(rank: int, **settings) -> TopKCacheManifest:
        return write_topk_shards(
            setup["teacher"],
            setup["data"],
            tmp_path / f"{rank}",
            16,
            precision="fp32",
            batch_size=2,
            rows_per_shard=3,
            rank=rank,
            processes=2,
            **settings,
        )

    rank0, rank1 = part(0), part(1)
    with pytest.raises(DistillError, match="shard shard_00002.safetensors .* is not shard shard_00001"):
        merge_manifest_parts([rank0])
    with pytest.raises(DistillError, match="shard shard_00001.safetensors .* is not shard shard_00002"):
        merge_manifest_parts([rank0, rank1, rank1])
    with pytest.raises(DistillError, match="ranks disagree: temperature: part 0 1.0, part 1 2.0"):
        merge_manifest_parts([rank0, part(1, temperature=2.0)])
    with pytest.raises(DistillError, match="no manifest parts"):
        merge_manifest_parts([])


def test_a_pass_that_dies_in_a_finished_cache_folder_leaves_no_manifest_over_mixed_shards(
    setup: dict, tmp_path: Path
) -> None:
    """Rewriting a cache folder for other data, interrupted after its first shard: the old manifest is
    gone (the folder is no cache), so the old manifest can never describe the new shard."""
    out = tmp_path / "cache"
    settings = {"precision": "fp32", "batch_size": 2, "rows_per_shard": 3}
    write_topk_cache(setup["teacher"], setup["data"], out, 16, **settings)

    def die_after_the_first_shard(path: Path, shard) -> None:
        raise RuntimeError(f"killed after {shard.file}")

    with pytest.raises(RuntimeError, match="killed after shard_00000"):
        write_topk_shards(
            setup["teacher"],
            random_rows(8, 32, seed=6),
            out,
            16,
            on_shard=die_after_the_first_shard,
            **settings,
        )
    assert not (out / MANIFEST_NAME).exists()
    with pytest.raises(DistillError, match="not a finished top-k cache"):
        TopKCache.open(out)
    rerun = write_topk_cache(setup["teacher"], setup["data"], out, 16, **settings)
    assert rerun == setup["manifests"][16]
    TopKCache.open(out, verify=True)
