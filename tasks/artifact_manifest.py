"""Artifact identity: references, manifests and the streamed sha256 every store uses.

Layout of one artifact (same in a local folder and in a bucket, under the store's root):

    <kind>/<sha256>/<name>                  the payload: one file, or a folder of files
    <kind>/<sha256>/<name>.manifest.json    the manifest, written LAST: an artifact exists iff it does

Digest [defined here]:
- a file: sha256 of its bytes;
- a folder: sha256 of the canonical JSON `[[relative/posix/path, size, sha256], ...]` sorted by path,
  so it changes when any file's bytes, size or place change, and never depends on file times.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from moe2dense_core.errors import Moe2DenseError

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
NAME_PATTERN = re.compile(r"^[\w][\w.+-]*$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class StorageError(Moe2DenseError):
    """An artifact could not be written or read; the message names the artifact key or file."""


class ArtifactNotFoundError(StorageError):
    """No complete artifact (no manifest) at the given reference or URI."""


class ArtifactIntegrityError(StorageError):
    """Stored bytes disagree with the manifest (size or sha256)."""


@dataclass(frozen=True)
class ArtifactRef:
    """Names one artifact: `<kind>/<sha256>/<name>` under a store's root."""

    kind: str
    sha256: str
    name: str

    def __post_init__(self) -> None:
        check_kind(self.kind)
        check_name(self.name)
        if not SHA256_PATTERN.match(self.sha256):
            raise StorageError(f"artifact sha256 {self.sha256!r}: expected 64 lowercase hex digits")

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.sha256}/{self.name}"

    @property
    def manifest_key(self) -> str:
        return self.key + MANIFEST_SUFFIX

    @classmethod
    def from_key(cls, key: str) -> ArtifactRef:
        parts = key.strip("/").split("/")
        if len(parts) != 3:
            raise StorageError(f"artifact key {key!r}: expected <kind>/<sha256>/<name>")
        return cls(*parts)


class ManifestFile(BaseModel):
    """One payload file: its path relative to the artifact (the name itself for a single file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str


class ArtifactManifest(BaseModel):
    """What an artifact holds; written last, so its presence means the payload is complete."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = MANIFEST_SCHEMA_VERSION
    kind: str
    name: str
    sha256: str
    layout: Literal["file", "dir"]
    files: list[ManifestFile]
    total_size: int
    created: str

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(self.kind, self.sha256, self.name)

    @classmethod
    def build(cls, kind: str, name: str, layout: Literal["file", "dir"], files: list[ManifestFile]) -> ArtifactManifest:
        files = sorted(files, key=lambda f: f.path)
        digest = files[0].sha256 if layout == "file" else directory_digest(files)
        return cls(
            kind=kind,
            name=name,
            sha256=digest,
            layout=layout,
            files=files,
            total_size=sum(f.size for f in files),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def file_entry(self, path: str | None) -> ManifestFile:
        """The entry of a single-file artifact (path None) or of `path` inside a folder artifact."""
        if self.layout == "file":
            if path is not None:
                raise StorageError(f"artifact {self.ref.key} is a single file; open it without a path")
            return self.files[0]
        if path is None:
            raise StorageError(f"artifact {self.ref.key} is a folder; name the file to open inside it")
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ArtifactNotFoundError(f"artifact {self.ref.key} has no file {path!r}")

    def to_bytes(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def directory_digest(files: list[ManifestFile]) -> str:
    """sha256 of the canonical JSON of sorted [path, size, sha256] triples (see module docstring)."""
    triples = [[f.path, f.size, f.sha256] for f in sorted(files, key=lambda f: f.path)]
    return hashlib.sha256(json.dumps(triples, separators=(",", ":")).encode()).hexdigest()


def check_kind(kind: str) -> str:
    if not KIND_PATTERN.match(kind):
        raise StorageError(f"artifact kind {kind!r}: use lowercase letters, digits, '_' and '-'")
    return kind


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name) or name.endswith(MANIFEST_SUFFIX):
        raise StorageError(
            f"artifact name {name!r}: use letters, digits, '_', '.', '+', '-' (not ending in {MANIFEST_SUFFIX})"
        )
    return name


def iter_chunks(stream: BinaryIO, chunk_bytes: int = HASH_CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := stream.read(chunk_bytes):
        yield chunk


def file_sha256(path: Path) -> ManifestFile:
    """Size and sha256 of a file, read in chunks (never whole in memory); `path` field = file name."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        for chunk in iter_chunks(stream):
            digest.update(chunk)
            size += len(chunk)
    return ManifestFile(path=path.name, size=size, sha256=digest.hexdigest())


def list_directory(root: Path) -> list[Path]:
    """Every regular file under `root`, sorted; refuses an empty folder."""
    if not root.is_dir():
        raise StorageError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise StorageError(f"folder {root} holds no files; an artifact needs at least one")
    return files


def verify_against(manifest: ArtifactManifest, entry: ManifestFile, size: int, sha256: str, where: str) -> None:
    """Raise ArtifactIntegrityError unless (size, sha256) equal the manifest's entry."""
    if size != entry.size or sha256 != entry.sha256:
        raise ArtifactIntegrityError(
            f"artifact {manifest.ref.key}, file {entry.path!r} at {where}: got {size} bytes sha256 {sha256}, "
            f"manifest says {entry.size} bytes sha256 {entry.sha256}"
        )
