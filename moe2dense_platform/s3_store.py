"""S3ArtifactStore: content-addressed artifacts in any S3-compatible bucket (AWS, MinIO, moto, …) via boto3.

Writing (atomic, streamed):
1. hash every payload file in one streamed local pass (8 MiB chunks) → the manifest and the key;
2. if the manifest already exists, the identical artifact is there: nothing is uploaded;
3. upload each file to its final key with boto3's managed transfer — multipart above
   `multipart_threshold`, in parts of `multipart_chunksize`. S3 makes an object visible only when its
   PUT or multipart-complete succeeds, so no half-written object is ever readable;
4. check each uploaded object's size, then PUT the manifest LAST. An artifact exists iff its manifest
   does: a crash between 3 and 4 leaves only invisible, complete objects that the next put rewrites.
A source file rewritten between pass 1 and 3 with the same size is caught on the first read (below).

A SIGKILLed multipart upload stays open on the server (its parts stored, billed, invisible) until
aborted. So every put of an artifact first aborts the incomplete multipart uploads under that artifact's
key that were initiated more than `stale_upload_age_s` ago (default 24 h: no live upload of one file
lasts that long; the age also absorbs clock skew with the server) — `stale_uploads`. A bucket lifecycle
rule `AbortIncompleteMultipartUpload` does the same for keys that are never put again.

Reading streams the object body to a temporary file, hashing as it goes, and renames it into place
only when size and sha256 match the manifest (ArtifactIntegrityError otherwise).

Retries: botocore retries single requests (standard mode, `s3_botocore_total_attempts`); `RetryPolicy`
retries whole file transfers on transient errors (moe2dense_platform/transient.py).
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from moe2dense_platform.artifact_manifest import (
    ArtifactManifest,
    ArtifactNotFoundError,
    ArtifactRef,
    ManifestFile,
    StorageError,
    check_key,
    check_kind,
    check_name,
    copy_hashing,
    list_directory,
    manifest_files,
    materialize,
    read_manifest,
    ref_under,
    verify_against,
)
from moe2dense_platform.local_store import LocalArtifactStore, write_bytes_atomic
from moe2dense_platform.settings import MIB, Settings
from moe2dense_platform.transient import RetryPolicy

NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
STALE_UPLOAD_AGE_S = 24 * 3600.0
"""An incomplete multipart upload initiated longer ago than this is a killed writer's (module docstring)."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` → ("bucket", "some/prefix")."""
    if not uri.startswith("s3://"):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if len(bucket) < 3:
        raise StorageError(f"{uri!r}: bucket name {bucket!r} is too short (S3 needs at least 3 characters)")
    return bucket, prefix.strip("/")


def make_s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the settings' endpoint and credentials, with botocore's standard retries."""
    config = BotoConfig(
        retries={"total_max_attempts": settings.s3_botocore_total_attempts, "mode": "standard"},
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        s3={"addressing_style": "path"},
    )
    return boto3.session.Session().client("s3", config=config, **settings.s3_client_kwargs())


def stale_uploads(
    uploads: Iterable[dict[str, Any]], key: str, now: datetime, age_s: float
) -> list[dict[str, Any]]:
    """The multipart uploads (list_multipart_uploads' `Uploads` entries) of `key` itself or of keys below
    `key/`, initiated before `now - age_s`."""
    cutoff = now - timedelta(seconds=age_s)
    return [
        upload
        for upload in uploads
        if (upload["Key"] == key or upload["Key"].startswith(f"{key}/")) and upload["Initiated"] < cutoff
    ]


class S3ArtifactStore:
    """Artifacts under `s3://<bucket>/<prefix>/` (layout: moe2dense_platform/artifact_manifest.py)."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        cache_dir: Path | str,
        transfer: TransferConfig | None = None,
        retry: RetryPolicy | None = None,
        stale_upload_age_s: float = STALE_UPLOAD_AGE_S,
    ) -> None:
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/"), "bucket prefix") if prefix.strip("/") else ""
        self.client = client
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self.transfer = transfer or TransferConfig()
        self.retry = retry or RetryPolicy()
        self.stale_upload_age_s = stale_upload_age_s

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ArtifactStore:
        bucket, prefix = parse_s3_uri(settings.resolved_artifact_root)
        transfer = TransferConfig(
            multipart_threshold=settings.s3_multipart_threshold_mb * MIB,
            multipart_chunksize=settings.s3_multipart_chunksize_mb * MIB,
            max_concurrency=settings.s3_max_concurrency,
        )
        retry = RetryPolicy(
            settings.storage_max_attempts, settings.storage_backoff_s, settings.storage_backoff_max_s
        )
        return cls(bucket, prefix, make_s3_client(settings), settings.resolved_cache_dir, transfer, retry)

    # ---- writing ---------------------------------------------------------------------------------
    def put_file(self, path: Path | str, kind: str, name: str | None = None) -> ArtifactRef:
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"put_file: {path} is not a file")
        name = check_name(name or path.name)
        sources = {name: path}
        manifest = ArtifactManifest.build(check_kind(kind), name, "file", manifest_files(sources))
        return self._upload(manifest, sources)

    def put_dir(self, path: Path | str, kind: str, name: str | None = None) -> ArtifactRef:
        path = Path(path)
        name = check_name(name or path.name)
        check_kind(kind)
        sources = list_directory(path)
        return self._upload(ArtifactManifest.build(kind, name, "dir", manifest_files(sources)), sources)

    def put_bytes(self, data: bytes, kind: str, name: str) -> ArtifactRef:
        name = check_name(name)
        entry = ManifestFile(path=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        manifest = ArtifactManifest.build(check_kind(kind), name, "file", [entry])
        if not self.exists(manifest.ref):
            self._put_object(self._payload_key(manifest, entry), data)
            self._put_object(self._key(manifest.ref.manifest_key), manifest.to_bytes())
        return manifest.ref

    def _upload(self, manifest: ArtifactManifest, sources: dict[str, Path]) -> ArtifactRef:
        self.abort_stale_uploads(manifest.ref)
        if self.exists(manifest.ref):
            return manifest.ref
        for entry in manifest.files:
            key = self._payload_key(manifest, entry)
            self.retry.run(
                lambda key=key, entry=entry: self.client.upload_file(
                    str(sources[entry.path]), self.bucket, key, Config=self.transfer
                ),
                f"upload {sources[entry.path]} to {self._uri(key)}",
            )
            stored = self._call(
                lambda key=key: self.client.head_object(Bucket=self.bucket, Key=key), f"check {key}"
            )
            if stored["ContentLength"] != entry.size:
                raise StorageError(
                    f"upload to {self._uri(key)}: stored {stored['ContentLength']} bytes, expected {entry.size}"
                )
        self._put_object(self._key(manifest.ref.manifest_key), manifest.to_bytes())
        return manifest.ref

    def abort_stale_uploads(self, ref: ArtifactRef) -> list[str]:
        """Abort the incomplete multipart uploads of `ref`'s payload older than `stale_upload_age_s`
        (killed puts: module docstring); returns their keys."""
        key = self._key(ref.key)

        def listing() -> list[dict[str, Any]]:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=key
            )
            return [upload for page in pages for upload in page.get("Uploads", [])]

        uploads = self._call(listing, f"list the incomplete uploads under {self._uri(key)}")
        stale = stale_uploads(uploads, key, datetime.now(UTC), self.stale_upload_age_s)
        for upload in stale:
            self._call(
                lambda upload=upload: self._abort_upload(upload["Key"], upload["UploadId"]),
                f"abort the incomplete upload {upload['UploadId']} of {self._uri(upload['Key'])}",
            )
        return [upload["Key"] for upload in stale]

    def _abort_upload(self, key: str, upload_id: str) -> None:
        """Abort one multipart upload; one that is already gone (another put aborted it) is fine."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    def _put_object(self, key: str, data: bytes) -> None:
        self._call(
            lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data), f"write {self._uri(key)}"
        )

    # ---- reading ---------------------------------------------------------------------------------
    def exists(self, ref: ArtifactRef) -> bool:
        key = self._key(ref.manifest_key)
        try:
            self._call(
                lambda: self.client.head_object(Bucket=self.bucket, Key=key), f"look up {self._uri(key)}"
            )
        except ArtifactNotFoundError:
            return False
        return True

    def manifest(self, ref: ArtifactRef) -> ArtifactManifest:
        key = self._key(ref.manifest_key)
        body = self._call(
            lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read(),
            f"read {self._uri(key)}",
        )
        return read_manifest(body, ref, self._uri(key))

    def uri_for(self, ref: ArtifactRef) -> str:
        return self._uri(self._key(ref.key))

    def ref_from_uri(self, uri: str) -> ArtifactRef:
        ref = ref_under(uri, self._uri(f"{self.prefix}/" if self.prefix else ""))
        self.manifest(ref)
        return ref

    @contextmanager
    def open(self, ref: ArtifactRef, path: str | None = None) -> Iterator[BinaryIO]:
        """The streaming body of the payload object (a folder artifact needs `path` inside it)."""
        manifest = self.manifest(ref)
        key = self._payload_key(manifest, manifest.file_entry(path))
        body = self._call(
            lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"], f"open {self._uri(key)}"
        )
        try:
            yield body
        finally:
            body.close()

    def get(self, ref: ArtifactRef, dest: Path | str) -> Path:
        """Download the payload to `dest` (a new file or folder path), verifying every file's sha256."""
        manifest = self.manifest(ref)

        def download_entry(entry: ManifestFile, target: Path) -> None:
            key = self._payload_key(manifest, entry)
            self.retry.run(lambda: self._download(manifest, entry, key, target), f"download {self._uri(key)}")

        return materialize(manifest, dest, download_entry)

    def fetch(self, ref: ArtifactRef, verify: bool = False) -> Path:
        """A verified local copy of the payload in the cache folder (downloaded once, then reused).

        The cache is laid out as a LocalArtifactStore; `verify` re-hashes a cached copy before use.
        Concurrent fetches of one artifact (threads or processes sharing the cache) are serialised by
        an exclusive lock file per artifact, so the second one reuses the first one's download."""
        cache = LocalArtifactStore(self.cache_dir)
        with _exclusive_lock(self.cache_dir / ".locks" / f"{ref.kind}-{ref.sha256}.lock"):
            if cache.exists(ref):
                return cache.fetch(ref, verify=verify)
            local = self.cache_dir / ref.key
            if local.is_dir():  # a payload whose manifest was never written (interrupted fetch)
                shutil.rmtree(local)
            elif local.exists():
                local.unlink()
            self.get(ref, local)
            write_bytes_atomic(self.cache_dir / ref.manifest_key, self.manifest(ref).to_bytes())
            return local

    def _download(self, manifest: ArtifactManifest, entry: ManifestFile, key: str, target: Path) -> None:
        target.unlink(missing_ok=True)
        body = self._call(
            lambda: self.client.get_object(Bucket=self.bucket, Key=key)["Body"], f"open {self._uri(key)}"
        )
        try:
            size, sha = copy_hashing(body, target)
        finally:
            body.close()
        verify_against(manifest, entry, size, sha, self._uri(key))

    # ---- keys and errors ---------------------------------------------------------------------------
    def _key(self, relative: str) -> str:
        """The object key of `relative` under the bucket prefix (checked: it cannot leave the prefix)."""
        check_key(relative)
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _payload_key(self, manifest: ArtifactManifest, entry: ManifestFile) -> str:
        key = manifest.ref.key if manifest.layout == "file" else f"{manifest.ref.key}/{entry.path}"
        return self._key(key)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _call(self, operation: Any, description: str) -> Any:
        """Run one S3 call under the retry policy; not-found → ArtifactNotFoundError, other client
        errors → StorageError naming `description`."""
        try:
            return self.retry.run(operation, description)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in NOT_FOUND_CODES:
                raise ArtifactNotFoundError(f"{description}: not found") from None
            raise StorageError(f"{description}: {code or type(error).__name__}: {error}") from error


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed): blocks other threads and processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
