"""Artifact identity: references, manifests, the streamed sha256 and the all-or-nothing copy every store uses.

Layout of one artifact (same in a local folder and in a bucket, under the store's root):

    <kind>/<sha256>/<name>                  the payload: one file, or a folder of files
    <kind>/<sha256>/<name>.manifest.json    the manifest, written LAST: an artifact exists iff it does

Keys: every key a store builds or reads (an artifact's, a payload file's inside a folder artifact, an
S3 bucket prefix) passes `check_key`, the one rule of both stores: relative, '/'-separated, no empty,
'.' or '..' segment, no backslash, no NUL or other control character, so nothing can name a file
outside the store's root folder or bucket prefix. A manifest is read through `read_manifest`: its
schema_version, every file path and its own reference are checked before it is used.

Digest [defined here]:
- a file: sha256 of its bytes;
- a folder: sha256 of the canonical JSON `[[relative/posix/path, size, sha256], ...]` sorted by path,
  so it changes when any file's bytes, size or place change, and never depends on file times.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.io.digests import files_sha256
from moe2dense_core.schema import check_schema_version

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


class UnsafeKeyError(StorageError):
    """A key or path would leave the store's root folder or bucket prefix (see `check_key`)."""


def check_key(key: str, what: str = "artifact key") -> str:
    """`key` if it names something strictly inside a store root / bucket prefix, else UnsafeKeyError.

    Refused: empty, absolute (leading '/'), a backslash, a NUL or other control character, or an empty,
    '.' or '..' segment between the '/' separators."""
    problem = (
        "is empty"
        if not key
        else "is absolute"
        if key.startswith("/")
        else "contains a backslash"
        if "\\" in key
        else "contains a NUL or control character"
        if any(ord(c) < 32 or ord(c) == 127 for c in key)
        else "has an empty, '.' or '..' segment"
        if any(part in ("", ".", "..") for part in key.split("/"))
        else None
    )
    if problem is not None:
        raise UnsafeKeyError(f"{what} {key!r} {problem}: it must stay inside the store")
    return key


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

    @field_validator("path")
    @classmethod
    def _inside_the_artifact(cls, path: str) -> str:
        return check_key(path, "manifest file path")


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
    def build(
        cls, kind: str, name: str, layout: Literal["file", "dir"], files: list[ManifestFile]
    ) -> ArtifactManifest:
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


def read_manifest(data: bytes, ref: ArtifactRef, where: str) -> ArtifactManifest:
    """The manifest stored at `where` for `ref`: StorageError unless it is JSON of the known
    schema_version, every file path passes `check_key`, and it describes `ref` itself."""
    try:
        raw = json.loads(data)
    except ValueError as error:
        raise StorageError(f"{where}: manifest is not JSON ({error})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    check_schema_version(version, MANIFEST_SCHEMA_VERSION, where, StorageError)
    try:
        manifest = ArtifactManifest.model_validate(raw)
    except ValidationError as error:
        raise StorageError(f"{where}: invalid manifest: {error}") from None
    if manifest.ref != ref:
        raise StorageError(f"{where}: manifest describes {manifest.ref.key}, not {ref.key}")
    return manifest


def directory_digest(files: list[ManifestFile]) -> str:
    """sha256 of the canonical JSON of sorted [path, size, sha256] triples (see module docstring)."""
    triples = [[f.path, f.size, f.sha256] for f in sorted(files, key=lambda f: f.path)]
    return hashlib.sha256(json.dumps(triples, separators=(",", ":")).encode()).hexdigest()


def ref_under(uri: str, root_uri: str) -> ArtifactRef:
    """The reference that `uri` names inside a store whose root URI is `root_uri` (ending in '/')."""
    if not uri.startswith(root_uri):
        raise StorageError(f"URI {uri!r} is not inside this store ({root_uri})")
    return ArtifactRef.from_key(uri[len(root_uri) :])


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


def hash_stream(source: BinaryIO, sink: BinaryIO | None = None) -> tuple[int, str]:
    """(size, sha256) of everything read from `source` in chunks, each chunk also written to `sink` if given."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_chunks(source):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def copy_hashing(source: BinaryIO, target: Path) -> tuple[int, str]:
    """Stream `source` into a new file `target` (fsynced); return (size, sha256) of what was written."""
    with open(target, "xb") as out:
        size_and_sha = hash_stream(source, out)
        out.flush()
        os.fsync(out.fileno())
    return size_and_sha


def manifest_files(sources: dict[str, Path]) -> list[ManifestFile]:
    """The manifest entries of {stored path: local file}: each file's size and streamed sha256, the files
    hashed concurrently (io.digests.files_sha256)."""
    digests = files_sha256(sources.values())
    return [
        ManifestFile(path=name, size=path.stat().st_size, sha256=digests[path])
        for name, path in sources.items()
    ]


def materialize(
    manifest: ArtifactManifest, dest: Path | str, copy_entry: Callable[[ManifestFile, Path], None]
) -> Path:
    """Build the payload at `dest` (a new file or folder path) all at once or not at all.

    `copy_entry(entry, target)` writes one manifest file to `target` and verifies it (size, sha256);
    every entry lands in a hidden staging sibling of `dest`, renamed to `dest` only when all succeeded.
    The staging copy is removed on any failure."""
    dest = Path(dest)
    if dest.exists():
        raise StorageError(f"get {manifest.ref.key}: destination {dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.partial"
    try:
        for entry in manifest.files:
            target = staging if manifest.layout == "file" else staging / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_entry(entry, target)
        os.rename(staging, dest)
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            staging.unlink()
    return dest


def list_directory(root: Path) -> dict[str, Path]:
    """{relative posix path: file} for every regular file under `root`, sorted; refuses an empty
    folder and a file name that is not a safe key (`check_key`), before anything is copied."""
    if not root.is_dir():
        raise StorageError(f"{root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise StorageError(f"folder {root} holds no files; an artifact needs at least one")
    return {check_key(p.relative_to(root).as_posix(), f"file in {root}"): p for p in files}


def verify_against(
    manifest: ArtifactManifest, entry: ManifestFile, size: int, sha256: str, where: str
) -> None:
    """Raise ArtifactIntegrityError unless (size, sha256) equal the manifest's entry."""
    if size != entry.size or sha256 != entry.sha256:
        raise ArtifactIntegrityError(
            f"artifact {manifest.ref.key}, file {entry.path!r} at {where}: got {size} bytes sha256 {sha256}, "
            f"manifest says {entry.size} bytes sha256 {entry.sha256}"
        )
