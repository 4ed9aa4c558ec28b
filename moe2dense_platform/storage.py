"""The artifact store: one protocol, a local-folder and an S3 implementation, chosen by settings.

    store = open_artifact_store(load_settings())
    ref = store.put_dir(checkpoint_dir, kind="dense-model")      # → ArtifactRef(kind, sha256, name)
    uri = store.uri_for(ref)                                     # file:///… or s3://bucket/prefix/…
    path = store.fetch(store.ref_from_uri(uri))                  # local path (S3: verified cache copy)

Content-addressed (key `<kind>/<sha256>/<name>`), atomic (manifest written last; an artifact exists iff
its manifest does), streamed (8 MiB chunks, hashed while streaming), multipart for large S3 files,
bounded retries with exponential backoff on transient errors. Details: moe2dense_platform/artifact_manifest.py,
moe2dense_platform/local_store.py, moe2dense_platform/s3_store.py, moe2dense_platform/transient.py.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from moe2dense_platform.artifact_manifest import (
    ArtifactIntegrityError,
    ArtifactManifest,
    ArtifactNotFoundError,
    ArtifactRef,
    ManifestFile,
    StorageError,
)
from moe2dense_platform.local_store import LocalArtifactStore
from moe2dense_platform.s3_store import S3ArtifactStore
from moe2dense_platform.settings import Settings


@runtime_checkable
class ArtifactStore(Protocol):
    """What tasks need from artifact storage. All methods are safe to call concurrently."""

    def put_file(self, path: Path | str, kind: str, name: str | None = None) -> ArtifactRef:
        """Store one file (name defaults to the file name); returns its reference."""
        ...

    def put_dir(self, path: Path | str, kind: str, name: str | None = None) -> ArtifactRef:
        """Store a folder, every file under it (name defaults to the folder name)."""
        ...

    def put_bytes(self, data: bytes, kind: str, name: str) -> ArtifactRef:
        """Store a small in-memory payload (JSON results, plans)."""
        ...

    def exists(self, ref: ArtifactRef) -> bool:
        """True iff the artifact is complete (its manifest exists)."""
        ...

    def manifest(self, ref: ArtifactRef) -> ArtifactManifest:
        """The manifest: files, sizes, sha256s, kind, created, schema_version."""
        ...

    def uri_for(self, ref: ArtifactRef) -> str:
        """The payload's URI (file:// or s3://)."""
        ...

    def ref_from_uri(self, uri: str) -> ArtifactRef:
        """The reference of a URI returned by `uri_for` (checks that the artifact exists)."""
        ...

    def open(self, ref: ArtifactRef, path: str | None = None) -> AbstractContextManager[BinaryIO]:
        """A binary read stream of a file artifact, or of `path` inside a folder artifact."""
        ...

    def get(self, ref: ArtifactRef, dest: Path | str) -> Path:
        """Copy the payload to the new path `dest`, verifying sizes and sha256s."""
        ...

    def fetch(self, ref: ArtifactRef, verify: bool = False) -> Path:
        """A local path of the payload (in place locally; a cached verified download for S3)."""
        ...


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """The store the settings choose: S3 for an `s3://` artifact root, else a local folder."""
    if settings.uses_s3:
        return S3ArtifactStore.from_settings(settings)
    return LocalArtifactStore(settings.resolved_artifact_root)


__all__ = [
    "ArtifactIntegrityError",
    "ArtifactManifest",
    "ArtifactNotFoundError",
    "ArtifactRef",
    "ArtifactStore",
    "LocalArtifactStore",
    "ManifestFile",
    "S3ArtifactStore",
    "StorageError",
    "open_artifact_store",
]
