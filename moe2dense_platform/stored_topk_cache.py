"""The teacher's top-k cache (moe2dense_core/distill/topk_cache.py) in the artifact store, read shard by shard.

Layout (content-addressed, moe2dense_platform/artifact_manifest.py):

    teacher-logits/<sha256 of manifest.json>/manifest.json               the core's TopKCacheManifest
    teacher-logits-shard/<sha256 of the shard>/shard_00000.safetensors    one file artifact per shard

A shard's store address is the sha256 its cache manifest records (`shard_ref`), so the manifest alone
finds every shard, and the manifest is stored after the last shard: a stored manifest is a complete
cache. `open_stored_topk_cache(store, uri)` reads the manifest and fetches each shard when a row of it
is first read: in place from a local store, a verified download into the local cache for S3 (one lock
per artifact, so the processes of one job that share a cache folder download each shard once). Only
the URI crosses process boundaries: a worker process opens its own with
`open_stored_topk_cache(open_artifact_store(Settings()), uri)`.
"""

from __future__ import annotations

from moe2dense_core.distill.topk_cache import CacheShard, TopKCache, read_manifest
from moe2dense_core.errors import DistillError
from moe2dense_platform.artifact_manifest import ArtifactRef
from moe2dense_platform.storage import ArtifactStore

MANIFEST_KIND = "teacher-logits"
SHARD_KIND = "teacher-logits-shard"


def shard_ref(shard: CacheShard) -> ArtifactRef:
    """The store reference of one cache shard: kind `teacher-logits-shard`, its sha256, its file name."""
    return ArtifactRef(SHARD_KIND, shard.sha256, shard.file)


def open_stored_topk_cache(store: ArtifactStore, manifest_uri: str) -> TopKCache:
    """The cache whose manifest is stored at `manifest_uri` (kind `teacher-logits`); shards fetched on use."""
    ref = store.ref_from_uri(manifest_uri)
    if ref.kind != MANIFEST_KIND:
        raise DistillError(
            f"{manifest_uri} is a {ref.kind!r} artifact, not a {MANIFEST_KIND!r} cache manifest"
        )
    manifest = read_manifest(store.fetch(ref))
    return TopKCache(manifest, lambda shard: store.fetch(shard_ref(shard)), manifest_uri)
