"""LocalArtifactStore and the storage building blocks (the S3 store: tests/integration/test_storage_s3.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from moe2dense_platform.artifact_manifest import (
    MANIFEST_SUFFIX,
    ArtifactRef,
    ManifestFile,
    UnsafeKeyError,
    check_key,
    directory_digest,
)
from moe2dense_platform.settings import Settings
from moe2dense_platform.storage import (
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    LocalArtifactStore,
    StorageError,
    open_artifact_store,
)
from moe2dense_platform.transient import RetryPolicy, is_transient


def make_folder(root: Path) -> Path:
    (root / "ckpt" / "sub").mkdir(parents=True)
    (root / "ckpt" / "config.json").write_text('{"hidden_size": 32}')
    (root / "ckpt" / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    return root / "ckpt"


def test_settings_default_to_a_local_folder(tmp_path: Path) -> None:
    store = open_artifact_store(Settings(home=tmp_path / "home"))
    assert isinstance(store, LocalArtifactStore)
    assert store.root == (tmp_path / "home" / "artifacts").resolve()


def test_file_round_trip_is_content_addressed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = tmp_path / "plan.json"
    source.write_text('{"k": 8}')
    ref = store.put_file(source, kind="plan")

    assert ref == ArtifactRef("plan", hashlib.sha256(b'{"k": 8}').hexdigest(), "plan.json")
    assert store.uri_for(ref) == (tmp_path / "store" / ref.key).resolve().as_uri()
    assert store.ref_from_uri(store.uri_for(ref)) == ref
    manifest = json.loads((tmp_path / "store" / ref.manifest_key).read_text())
    assert manifest["files"] == [{"path": "plan.json", "size": 8, "sha256": ref.sha256}]
    assert (manifest["schema_version"], manifest["kind"], manifest["layout"]) == (1, "plan", "file")
    assert "created" in manifest
    with store.open(ref) as stream:
        assert stream.read() == b'{"k": 8}'
    assert store.get(ref, tmp_path / "copy.json").read_bytes() == b'{"k": 8}'
    assert store.put_bytes(b'{"k": 8}', kind="plan", name="plan.json") == ref  # same bytes, same artifact


def test_folder_round_trip_and_digest_definition(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = make_folder(tmp_path)
    ref = store.put_dir(source, kind="dense-model")

    manifest = store.manifest(ref)
    expected_files = [
        ManifestFile(path="config.json", size=19, sha256=hashlib.sha256(b'{"hidden_size": 32}').hexdigest()),
        ManifestFile(
            path="sub/model.safetensors",
            size=10240,
            sha256=hashlib.sha256(bytes(range(256)) * 40).hexdigest(),
        ),
    ]
    assert manifest.files == expected_files and manifest.total_size == 10259
    assert ref.sha256 == directory_digest(expected_files)
    copy = store.get(ref, tmp_path / "copy")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "config.json",
        "sub/model.safetensors",
    ]
    assert store.fetch(ref, verify=True) == tmp_path / "store" / ref.key
    with store.open(ref, "config.json") as stream:
        assert stream.read() == b'{"hidden_size": 32}'
    with pytest.raises(StorageError, match="is a folder"), store.open(ref):
        pass


def test_changing_one_byte_or_moving_a_file_changes_the_digest(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = make_folder(tmp_path)
    first = store.put_dir(source, kind="dense-model")
    (source / "config.json").write_text('{"hidden_size": 33}')
    second = store.put_dir(source, kind="dense-model")
    (source / "config.json").rename(source / "sub" / "config.json")
    third = store.put_dir(source, kind="dense-model")
    assert len({first.sha256, second.sha256, third.sha256}) == 3


def test_corruption_is_detected_on_get_and_verify(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    ref = store.put_dir(make_folder(tmp_path), kind="dense-model")
    payload = tmp_path / "store" / ref.key / "sub" / "model.safetensors"
    payload.write_bytes(b"\xff" + payload.read_bytes()[1:])

    with pytest.raises(ArtifactIntegrityError, match="sub/model.safetensors"):
        store.get(ref, tmp_path / "copy")
    assert not (tmp_path / "copy").exists() and not list(tmp_path.glob(".copy.*"))
    with pytest.raises(ArtifactIntegrityError):
        store.fetch(ref, verify=True)


def test_verify_names_the_one_corrupted_file_among_many(tmp_path: Path) -> None:
    """verify hashes the files concurrently and still names the bad one with what it found: a changed byte
    as a sha256 mismatch at the manifest's size, a truncation as a size mismatch; a single-file artifact
    the same way."""
    contents = {f"model-{i:05d}-of-00006.safetensors": bytes([i]) * (4096 + i) for i in range(6)}
    (tmp_path / "shards").mkdir()
    for name, data in contents.items():
        (tmp_path / "shards" / name).write_bytes(data)
    store = LocalArtifactStore(tmp_path / "store")
    ref = store.put_dir(tmp_path / "shards", kind="dense-model")
    single = store.put_bytes(contents["model-00003-of-00006.safetensors"], kind="plan", name="plan.bin")
    store.verify(ref)
    store.verify(single)

    original = contents["model-00003-of-00006.safetensors"]
    for artifact, victim, shown in (
        (ref, store.root / ref.key / "model-00003-of-00006.safetensors", "model-00003-of-00006.safetensors"),
        (single, store.root / single.key, "plan.bin"),
    ):
        for corrupted in (b"\xff" + original[1:], original[:-1]):
            victim.write_bytes(corrupted)
            found = rf"got {len(corrupted)} bytes sha256 {hashlib.sha256(corrupted).hexdigest()}"
            expected = rf"manifest says {len(original)} bytes sha256 {hashlib.sha256(original).hexdigest()}"
            with pytest.raises(ArtifactIntegrityError, match=rf"file '{shown}' at .*: {found}, {expected}$"):
                store.verify(artifact)
        victim.write_bytes(original)
        store.verify(artifact)


def test_failure_while_copying_leaves_nothing_visible(tmp_path: Path) -> None:
    """A real read error on the last file (/proc/self/mem fails with EIO at offset 0) aborts put_dir
    after the first file was copied: no artifact, no payload, no staging residue."""
    source = make_folder(tmp_path)
    os.symlink("/proc/self/mem", source / "z_unreadable.bin")
    store = LocalArtifactStore(tmp_path / "store")

    with pytest.raises(OSError):
        store.put_dir(source, kind="dense-model")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".staging"]
    assert list((tmp_path / "store" / ".staging").iterdir()) == []


def test_payload_without_manifest_does_not_exist_and_is_completed_by_the_next_put(tmp_path: Path) -> None:
    """A crash between moving the payload and writing the manifest: invisible until a put commits it."""
    store = LocalArtifactStore(tmp_path / "store")
    source = make_folder(tmp_path)
    ref = store.put_dir(source, kind="dense-model")
    (tmp_path / "store" / ref.manifest_key).unlink()

    assert not store.exists(ref)
    with pytest.raises(ArtifactNotFoundError, match=ref.key):
        store.fetch(ref)
    assert store.put_dir(source, kind="dense-model") == ref and store.exists(ref)


def test_concurrent_identical_puts_agree(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = make_folder(tmp_path)
    refs: list[ArtifactRef] = []
    threads = [
        threading.Thread(target=lambda: refs.append(store.put_dir(source, kind="m"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(refs)) == 1 and store.exists(refs[0])
    store.fetch(refs[0], verify=True)


@pytest.mark.parametrize(
    "kind, name", [("Dense", "x"), ("a/b", "x"), ("m", "../x"), ("m", "x" + MANIFEST_SUFFIX)]
)
def test_bad_kind_or_name_is_refused_before_writing(tmp_path: Path, kind: str, name: str) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(StorageError, match="artifact (kind|name)"):
        store.put_bytes(b"x", kind=kind, name=name)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == []


def test_empty_folder_and_foreign_uri_are_refused(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StorageError, match="holds no files"):
        store.put_dir(tmp_path / "empty", kind="m")
    with pytest.raises(StorageError, match="not inside this store"):
        store.ref_from_uri("file:///elsewhere/m/" + "0" * 64 + "/x")


UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "../x",
    "a/../../x",
    "a/./b",
    "a//b",
    "a/",
    "..",
    "a\\..\\b",
    "a\x00b",
    "a\nb",
]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_check_key_refuses_every_way_out_of_the_store(key: str) -> None:
    with pytest.raises(UnsafeKeyError, match="must stay inside the store"):
        check_key(key)


def test_check_key_accepts_nested_relative_keys() -> None:
    for key in ("config.json", "sub/model-00001.safetensors", "m/" + "0" * 64 + "/x.manifest.json", "a..b/c"):
        assert check_key(key) == key


def tamper_manifest(store_root: Path, ref: ArtifactRef, **changes: object) -> None:
    path = store_root / ref.manifest_key
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_manifest_pointing_outside_the_store_is_refused_on_every_read(tmp_path: Path) -> None:
    """A tampered manifest must neither read nor write a file outside the store or the destination."""
    store = LocalArtifactStore(tmp_path / "deep" / "store")
    ref = store.put_dir(make_folder(tmp_path), kind="dense-model")
    outside = tmp_path / "deep" / "outside.txt"
    outside.write_text("not an artifact")
    escape = "../../../../outside.txt"  # from <root>/<kind>/<sha>/ckpt up to tmp_path/deep
    files = [{"path": escape, "size": 15, "sha256": hashlib.sha256(b"not an artifact").hexdigest()}]
    tamper_manifest(store.root, ref, files=files)

    for read in (
        lambda: store.open(ref, escape).__enter__(),
        lambda: store.fetch(ref, verify=True),
        lambda: store.get(ref, tmp_path / "a" / "b" / "copy"),
    ):
        with pytest.raises(UnsafeKeyError, match=r"manifest file path '(\.\./){4}outside.txt'"):
            read()
    assert not (tmp_path / "a").exists() and outside.read_text() == "not an artifact"


def test_a_file_name_that_is_not_a_safe_key_is_refused_before_writing(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = make_folder(tmp_path)
    (source / "back\\slash.json").write_text("{}")
    with pytest.raises(UnsafeKeyError, match="backslash"):
        store.put_dir(source, kind="dense-model")
    assert sorted(p.name for p in store.root.iterdir()) == []  # not even a staging folder


def test_a_manifest_of_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    ref = store.put_bytes(b"{}", kind="plan", name="plan.json")
    tamper_manifest(store.root, ref, schema_version=99)
    with pytest.raises(StorageError, match=r"plan.json.manifest.json: schema_version 99 is not supported"):
        store.fetch(ref)


def test_a_manifest_describing_another_artifact_is_refused(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    ref = store.put_bytes(b"{}", kind="plan", name="plan.json")
    tamper_manifest(store.root, ref, kind="stats")
    with pytest.raises(StorageError, match="describes stats/"):
        store.manifest(ref)


def test_retry_policy_retries_transient_errors_only() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert RetryPolicy(max_attempts=3, backoff_s=0.0).run(flaky, "op") == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(StorageError, match="op: still failing after 2 attempts"):
        RetryPolicy(max_attempts=2, backoff_s=0.0).run(flaky, "op")

    def broken() -> None:
        calls.append(1)
        raise ValueError("not transient")

    calls.clear()
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=5, backoff_s=0.0).run(broken, "op")
    assert len(calls) == 1


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=6, backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay(i) for i in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_transient_detection_follows_the_cause_chain() -> None:
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(ArtifactIntegrityError("bad bytes"))


def test_transient_errors_of_botocore_are_retryable() -> None:
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionClosedError(endpoint_url="http://x"))
    assert is_transient(ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"))
    assert not is_transient(ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"))
