"""S3ArtifactStore against a real S3 API (moto server), with faults injected by a real flaky proxy."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from moe2dense_platform.artifact_manifest import UnsafeKeyError
from moe2dense_platform.s3_store import S3ArtifactStore
from moe2dense_platform.settings import MIB, Settings
from moe2dense_platform.storage import (
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    StorageError,
    open_artifact_store,
)
from moe2dense_platform.transient import RetryPolicy
from tests.integration.faulty_proxy import DROP, PASS, TRUNCATE, FaultyProxy, drop_first
from tests.integration.servers import S3Server


def s3_settings(s3: S3Server, home: Path, endpoint: str | None = None, **overrides) -> Settings:
    """Team-stack settings on the moto server, a fresh key prefix per test, fast backoff."""
    values = {
        "home": home,
        "artifact_root": f"s3://{s3.bucket}/store-{uuid.uuid4().hex[:8]}",
        "s3_endpoint_url": endpoint or s3.endpoint_url,
        "aws_access_key_id": s3.access_key_id,
        "aws_secret_access_key": s3.secret_access_key,
        "storage_backoff_s": 0.01,
        **overrides,
    }
    return Settings(**values)


def make_checkpoint(root: Path) -> Path:
    (root / "ckpt" / "sub").mkdir(parents=True)
    (root / "ckpt" / "config.json").write_text('{"model_type": "qwen3"}')
    (root / "ckpt" / "sub" / "model.safetensors").write_bytes(os.urandom(300_000))
    return root / "ckpt"


def keys_under(s3: S3Server, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_settings_pick_s3_and_round_trip_a_folder(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_artifact_store(s3_settings(s3_server, tmp_path / "home"))
    assert isinstance(store, S3ArtifactStore)
    source = make_checkpoint(tmp_path)

    ref = store.put_dir(source, kind="dense-model")
    uri = store.uri_for(ref)
    assert uri == f"s3://{s3_server.bucket}/{store.prefix}/dense-model/{ref.sha256}/ckpt"
    assert store.ref_from_uri(uri) == ref and store.exists(ref)
    assert keys_under(s3_server, store.prefix) == sorted(
        [
            f"{store.prefix}/{ref.key}/config.json",
            f"{store.prefix}/{ref.key}/sub/model.safetensors",
            f"{store.prefix}/{ref.manifest_key}",
        ]
    )
    manifest = store.manifest(ref)
    assert {f.path: f.size for f in manifest.files} == {"config.json": 23, "sub/model.safetensors": 300_000}

    local = store.fetch(ref)
    assert (local / "sub" / "model.safetensors").read_bytes() == (
        source / "sub" / "model.safetensors"
    ).read_bytes()
    assert store.fetch(ref, verify=True) == local  # second fetch: the verified cache copy
    with store.open(ref, "config.json") as stream:
        assert stream.read() == b'{"model_type": "qwen3"}'
    assert store.put_dir(source, kind="dense-model") == ref  # content-addressed: same bytes, same ref


def test_concurrent_fetches_of_one_artifact_share_one_download(s3_server: S3Server, tmp_path: Path) -> None:
    settings = s3_settings(s3_server, tmp_path / "home")
    source = make_checkpoint(tmp_path)
    ref = open_artifact_store(settings).put_dir(source, kind="stats")
    stores = [open_artifact_store(settings) for _ in range(4)]  # separate clients, one cache folder
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(lambda store: store.fetch(ref), stores))
    assert len(set(paths)) == 1
    payload = (paths[0] / "sub" / "model.safetensors").read_bytes()
    assert payload == (source / "sub" / "model.safetensors").read_bytes()


def test_put_bytes_and_file_round_trip(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_artifact_store(s3_settings(s3_server, tmp_path / "home"))
    ref = store.put_bytes(b'{"ppl": 12.5}', kind="eval", name="results.json")
    assert ref.sha256 == hashlib.sha256(b'{"ppl": 12.5}').hexdigest()
    assert store.get(ref, tmp_path / "results.json").read_bytes() == b'{"ppl": 12.5}'
    (tmp_path / "plan.json").write_text("{}")
    file_ref = store.put_file(tmp_path / "plan.json", kind="plan")
    assert store.manifest(file_ref).layout == "file"
    with pytest.raises(ArtifactNotFoundError):
        store.manifest(file_ref.__class__("plan", "0" * 64, "plan.json"))


def test_corrupted_object_is_detected_on_read(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_artifact_store(s3_settings(s3_server, tmp_path / "home"))
    ref = store.put_bytes(b"original bytes", kind="stats", name="stats.bin")
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"{store.prefix}/{ref.key}", Body=b"tampered bytes"
    )
    with pytest.raises(ArtifactIntegrityError, match="stats.bin"):
        store.get(ref, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    assert not list(tmp_path.glob(".out.bin*"))  # no partial download left behind


def test_a_manifest_pointing_outside_the_prefix_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    """A tampered manifest in the bucket names neither an object outside the store's prefix nor a
    local file outside the cache: the same key check as the local store refuses it on every read."""
    store = open_artifact_store(s3_settings(s3_server, tmp_path / "home"))
    ref = store.put_dir(make_checkpoint(tmp_path), kind="dense-model")
    s3 = s3_server.client()
    escape = "../../../../outside/config.json"  # from <prefix>/<kind>/<sha>/ckpt up to the bucket's top
    s3.put_object(Bucket=s3_server.bucket, Key="outside/config.json", Body=b"foreign")
    manifest_key = f"{store.prefix}/{ref.manifest_key}"
    manifest = json.loads(s3.get_object(Bucket=s3_server.bucket, Key=manifest_key)["Body"].read())
    manifest["files"] = [{"path": escape, "size": 7, "sha256": hashlib.sha256(b"foreign").hexdigest()}]
    s3.put_object(Bucket=s3_server.bucket, Key=manifest_key, Body=json.dumps(manifest).encode())

    for read in (
        lambda: store.open(ref, escape).__enter__(),
        lambda: store.fetch(ref),
        lambda: store.get(ref, tmp_path / "a" / "b" / "copy"),
    ):
        with pytest.raises(UnsafeKeyError, match=r"manifest file path '(\.\./){4}outside/config.json'"):
            read()
    assert not (tmp_path / "a").exists() and not list((tmp_path / "home").rglob("config.json"))


def test_unsafe_prefixes_and_file_names_are_refused_before_any_request(
    s3_server: S3Server, tmp_path: Path
) -> None:
    for root in (f"s3://{s3_server.bucket}/a/../b", f"s3://{s3_server.bucket}/a\\b"):
        with pytest.raises(UnsafeKeyError, match="bucket prefix"):
            open_artifact_store(s3_settings(s3_server, tmp_path / "home", artifact_root=root))
    store = open_artifact_store(s3_settings(s3_server, tmp_path / "home"))
    source = make_checkpoint(tmp_path)
    (source / "sub" / "bad\\name.json").write_text("{}")
    with pytest.raises(UnsafeKeyError, match="backslash"):
        store.put_dir(source, kind="dense-model")
    assert keys_under(s3_server, store.prefix) == []


def test_large_file_goes_multipart(s3_server: S3Server, tmp_path: Path) -> None:
    settings = s3_settings(
        s3_server, tmp_path / "home", s3_multipart_threshold_mb=5, s3_multipart_chunksize_mb=5
    )
    store = open_artifact_store(settings)
    big = tmp_path / "model.safetensors"
    big.write_bytes(os.urandom(11 * MIB))  # 5 + 5 + 1 MiB parts

    ref = store.put_file(big, kind="dense-model")
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"{store.prefix}/{ref.key}")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # S3's multipart ETag: md5-of-parts-<count>
    assert ref.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert store.fetch(ref).read_bytes() == big.read_bytes()


def test_failure_mid_upload_leaves_no_visible_artifact(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every upload of the weights file fails: no manifest may exist, and a later put succeeds."""
    source = make_checkpoint(tmp_path)
    root = f"s3://{s3_server.bucket}/store-{uuid.uuid4().hex[:8]}"
    fail_weights = lambda n, method, path: DROP if method == "PUT" and "model.safetensors" in path else PASS  # noqa: E731
    with FaultyProxy(s3_server.endpoint_url, fail_weights) as proxy:
        settings = s3_settings(
            s3_server,
            tmp_path / "home",
            endpoint=proxy.url,
            artifact_root=root,
            s3_botocore_total_attempts=1,
            storage_max_attempts=2,
        )
        with pytest.raises(StorageError, match="model.safetensors"):
            open_artifact_store(settings).put_dir(source, kind="dense-model")
        # the store tried the weights file twice (2 attempts → 1 retry warning); every try was cut
        retries = [
            r
            for r in caplog.records
            if r.name == "moe2dense_platform.transient" and "model.safetensors" in r.getMessage()
        ]
        assert len(retries) == 1 and "attempt 1/2" in retries[0].getMessage()
        assert proxy.count(DROP) == 2 and proxy.count(PASS) >= 1  # config.json got through
    prefix = root.split("/", 3)[3]
    assert [k for k in keys_under(s3_server, prefix) if k.endswith(".manifest.json")] == []

    healthy = open_artifact_store(s3_settings(s3_server, tmp_path / "home", artifact_root=root))
    ref = healthy.put_dir(source, kind="dense-model")
    assert healthy.exists(ref)
    assert (healthy.fetch(ref) / "sub" / "model.safetensors").read_bytes() == (
        source / "sub" / "model.safetensors"
    ).read_bytes()


def test_retries_recover_from_dropped_connections(s3_server: S3Server, tmp_path: Path) -> None:
    """botocore's own retries off: the store's RetryPolicy alone absorbs the first 2 dropped requests."""
    root = f"s3://{s3_server.bucket}/store-{uuid.uuid4().hex[:8]}"
    with FaultyProxy(s3_server.endpoint_url, drop_first(2)) as proxy:
        settings = s3_settings(
            s3_server,
            tmp_path / "home",
            endpoint=proxy.url,
            artifact_root=root,
            s3_botocore_total_attempts=1,
            storage_max_attempts=3,
        )
        ref = open_artifact_store(settings).put_bytes(b"payload", kind="plan", name="plan.json")
        assert [action for _, _, action in proxy.requests[:3]] == [DROP, DROP, PASS]
        assert {method for method, _, _ in proxy.requests[:3]} == {"HEAD"}  # the manifest look-up, retried
    healthy = open_artifact_store(s3_settings(s3_server, tmp_path / "home2", artifact_root=root))
    assert healthy.get(ref, tmp_path / "plan.json").read_bytes() == b"payload"


def test_retry_budget_is_bounded(s3_server: S3Server, tmp_path: Path) -> None:
    with FaultyProxy(s3_server.endpoint_url, drop_first(100)) as proxy:
        settings = s3_settings(
            s3_server,
            tmp_path / "home",
            endpoint=proxy.url,
            s3_botocore_total_attempts=1,
            storage_max_attempts=3,
        )
        with pytest.raises(StorageError, match="after 3 attempts"):
            open_artifact_store(settings).put_bytes(b"payload", kind="plan", name="plan.json")
        assert len(proxy.requests) == 3


def test_body_cut_mid_stream_is_downloaded_again(s3_server: S3Server, tmp_path: Path) -> None:
    direct = S3ArtifactStore(
        s3_server.bucket,
        f"store-{uuid.uuid4().hex[:8]}",
        open_artifact_store(s3_settings(s3_server, tmp_path)).client,
        tmp_path / "cache",
    )
    payload = os.urandom(200_000)
    ref = direct.put_bytes(payload, kind="stats", name="stats.bin")
    truncated_gets = {"n": 0}

    def truncate_first_payload_get(n: int, method: str, path: str) -> str:
        if method == "GET" and path.split("?")[0].endswith("/stats.bin") and truncated_gets["n"] == 0:
            truncated_gets["n"] += 1
            return TRUNCATE
        return PASS

    with FaultyProxy(s3_server.endpoint_url, truncate_first_payload_get) as proxy:
        settings = s3_settings(s3_server, tmp_path / "home", endpoint=proxy.url, s3_botocore_total_attempts=1)
        flaky = S3ArtifactStore.from_settings(settings)
        store = S3ArtifactStore(
            direct.bucket,
            direct.prefix,
            flaky.client,
            tmp_path / "cache2",
            TransferConfig(),
            RetryPolicy(max_attempts=3, backoff_s=0.01),
        )
        assert store.get(ref, tmp_path / "stats.bin").read_bytes() == payload
        assert proxy.count(TRUNCATE) == 1


def open_upload(s3: S3Server, key: str) -> str:
    """Start a multipart upload of `key` and store its first part, as a put killed after part 1 leaves it."""
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload, PartNumber=1, Body=os.urandom(5 * MIB))
    return upload


def test_a_put_aborts_the_stale_incomplete_uploads_of_its_own_artifact_only(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = open_artifact_store(s3_settings(s3_server, tmp_path / "home"))
    source = make_checkpoint(tmp_path)
    ref = store.put_dir(source, kind="dense-model")
    own = f"{store.prefix}/{ref.key}/sub/model.safetensors"
    neighbour = f"{store.prefix}/{ref.key}-other/model.safetensors"  # same prefix, another key
    uploads = {open_upload(s3_server, own): own, open_upload(s3_server, neighbour): neighbour}

    young = S3ArtifactStore(store.bucket, store.prefix, store.client, tmp_path / "c1", stale_upload_age_s=1e9)
    assert young.put_dir(source, kind="dense-model") == ref  # moto dates every upload 2010: not 31 years old
    listing = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=store.prefix)
    assert len(listing["Uploads"]) == 2

    assert store.put_dir(source, kind="dense-model") == ref  # the default age: 24 h
    left = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=store.prefix)["Uploads"]
    assert {upload["UploadId"]: upload["Key"] for upload in left} == {
        uid: key for uid, key in uploads.items() if key == neighbour
    }
    assert store.abort_stale_uploads(ref) == []
