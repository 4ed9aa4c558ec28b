"""A teacher cache in an S3 store (moto server) is read shard by shard: opening it fetches only the
manifest, each shard is downloaded (verified) when a row of it is first read, and the rows equal the
cache on local disk. A store URI of another kind is refused naming both kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import TopKCache, write_topk_cache
from moe2dense_core.errors import DistillError
from moe2dense_platform.s3_store import S3ArtifactStore
from moe2dense_platform.stored_topk_cache import MANIFEST_KIND, SHARD_KIND, open_stored_topk_cache, shard_ref
from tests.core.distill_tiny_models import peaked_teacher, random_rows
from tests.integration.servers import S3Server


def downloaded_shards(cache_dir: Path) -> list[str]:
    return (
        sorted(p.name for p in (cache_dir / SHARD_KIND).rglob("*.safetensors")) if cache_dir.exists() else []
    )


def test_a_stored_cache_streams_from_s3_shard_by_shard(s3_server: S3Server, tmp_path: Path) -> None:
    local = tmp_path / "cache"
    manifest = write_topk_cache(
        peaked_teacher(),
        random_rows(8, 16, seed=2),
        local,
        8,
        precision="fp32",
        batch_size=2,
        rows_per_shard=3,
        logprob_dtype="float16",
    )
    writer = S3ArtifactStore(s3_server.bucket, "teacher-logits-it", s3_server.client(), tmp_path / "writer")
    for shard in manifest.shards:
        assert writer.put_file(local / shard.file, kind=SHARD_KIND) == shard_ref(shard)
    uri = writer.uri_for(writer.put_file(local / "manifest.json", kind=MANIFEST_KIND))

    reader_cache = tmp_path / "reader"
    reader = S3ArtifactStore(s3_server.bucket, "teacher-logits-it", s3_server.client(), reader_cache)
    cache = open_stored_topk_cache(reader, uri)
    assert cache.manifest == manifest and downloaded_shards(reader_cache) == []
    rows = torch.tensor([7, 6])  # both in the third shard (rows 6-7)
    got = cache.rows(rows)
    assert downloaded_shards(reader_cache) == ["shard_00002.safetensors"]
    expected = TopKCache.open(local).rows(rows)
    for name in ("input_ids", "topk_ids", "topk_logprobs", "tail_logprob"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    cache.rows(torch.tensor([0]))
    assert downloaded_shards(reader_cache) == ["shard_00000.safetensors", "shard_00002.safetensors"]

    shard_uri = writer.uri_for(shard_ref(manifest.shards[0]))
    with pytest.raises(DistillError, match="is a 'teacher-logits-shard' artifact, not a 'teacher-logits'"):
        open_stored_topk_cache(reader, shard_uri)
