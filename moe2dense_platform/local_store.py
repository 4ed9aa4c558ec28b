"""LocalArtifactStore: content-addressed artifacts in a local folder (the embedded default).

Writes are atomic: the payload is copied (hashing while copying, one pass) into `<root>/.staging/<uuid>/`,
moved into place with one `os.replace`/`os.rename` (a single file or a whole folder), and the manifest is
written last through a temporary file and `os.replace`. A failure at any point leaves no manifest, so
the artifact does not exist; the staging copy is removed.

A SIGKILLed put cannot remove its staging copy (up to the artifact's size), so each staging folder holds
its writer's owner record (moe2dense_core/io/leftovers.py) and every put first deletes the staging
folders whose writer is gone (`remove_staging_leftovers`); those of live writers, or of writers on
another machine sharing the folder, are kept. A kill after the payload's rename but before the manifest
leaves a complete payload without manifest: the next put of the same artifact keeps it (it was renamed
whole) and writes the manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from moe2dense_core.io.atomic import atomic_path
from moe2dense_core.io.digests import files_sha256
from moe2dense_core.io.leftovers import is_leftover, write_owner
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
    materialize,
    read_manifest,
    ref_under,
    verify_against,
)

STAGING_FOLDER = ".staging"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` (fsynced) via a temporary sibling and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


class LocalArtifactStore:
    """Artifacts under `root` (see moe2dense_platform/artifact_manifest.py for the layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- writing ---------------------------------------------------------------------------------
    def put_file(self, path: Path | str, kind: str, name: str | None = None) -> ArtifactRef:
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"put_file: {path} is not a file")
        name, kind = check_name(name or path.name), check_kind(kind)
        with self._staging() as staging, open(path, "rb") as source:
            size, sha = copy_hashing(source, staging / name)
            manifest = ArtifactManifest.build(
                kind, name, "file", [ManifestFile(path=name, size=size, sha256=sha)]
            )
            self._commit(staging / name, manifest)
        return manifest.ref

    def put_bytes(self, data: bytes, kind: str, name: str) -> ArtifactRef:
        name, kind = check_name(name), check_kind(kind)
        with self._staging() as staging:
            write_bytes_atomic(staging / name, data)
            sha = hashlib.sha256(data).hexdigest()
            manifest = ArtifactManifest.build(
                kind, name, "file", [ManifestFile(path=name, size=len(data), sha256=sha)]
            )
            self._commit(staging / name, manifest)
        return manifest.ref

    def put_dir(self, path: Path | str, kind: str, name: str | None = None) -> ArtifactRef:
        path = Path(path)
        name = check_name(name or path.name)
        check_kind(kind)
        sources = list_directory(path)
        with self._staging() as staging:
            entries = []
            for relative, source_path in sources.items():
                target = staging / name / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(source_path, "rb") as source:
                    size, sha = copy_hashing(source, target)
                entries.append(ManifestFile(path=relative, size=size, sha256=sha))
            manifest = ArtifactManifest.build(kind, name, "dir", entries)
            self._commit(staging / name, manifest)
        return manifest.ref

    def remove_staging_leftovers(self) -> list[Path]:
        """Delete the staging folders of puts whose process is gone (killed); returns them."""
        folder = self.root / STAGING_FOLDER
        leftovers = [path for path in folder.iterdir() if is_leftover(path)] if folder.is_dir() else []
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return leftovers

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        self.remove_staging_leftovers()
        staging = self.root / STAGING_FOLDER / uuid.uuid4().hex
        staging.mkdir(parents=True)
        write_owner(staging)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, staged_payload: Path, manifest: ArtifactManifest) -> None:
        """Move the payload into place (unless an identical one is there), then write the manifest."""
        final = self._path(manifest.ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            try:
                os.rename(staged_payload, final)
            except OSError:
                if not final.exists():  # lost a race to an identical writer: its payload is as good
                    raise
        manifest_path = self._manifest_path(manifest.ref)
        if not manifest_path.exists():
            write_bytes_atomic(manifest_path, manifest.to_bytes())

    # ---- reading ---------------------------------------------------------------------------------
    def exists(self, ref: ArtifactRef) -> bool:
        return self._manifest_path(ref).is_file()

    def manifest(self, ref: ArtifactRef) -> ArtifactManifest:
        path = self._manifest_path(ref)
        if not path.is_file():
            raise ArtifactNotFoundError(f"artifact {ref.key} not found in {self.root}")
        return read_manifest(path.read_bytes(), ref, str(path))

    def uri_for(self, ref: ArtifactRef) -> str:
        return self._path(ref).as_uri()

    def ref_from_uri(self, uri: str) -> ArtifactRef:
        ref = ref_under(uri, self.root.as_uri() + "/")
        self.manifest(ref)
        return ref

    @contextmanager
    def open(self, ref: ArtifactRef, path: str | None = None) -> Iterator[BinaryIO]:
        """A binary stream of the payload file (a folder artifact needs `path`, relative inside it)."""
        manifest = self.manifest(ref)
        with open(self._file_path(ref, manifest, manifest.file_entry(path)), "rb") as stream:
            yield stream

    def fetch(self, ref: ArtifactRef, verify: bool = False) -> Path:
        """The local path of the payload, in place (no copy); `verify` re-hashes it against the manifest."""
        manifest = self.manifest(ref)
        if verify:
            self.verify(ref, manifest)
        return self._path(ref)

    def get(self, ref: ArtifactRef, dest: Path | str) -> Path:
        """Copy the payload to `dest` (a new file or folder path), verifying every file's sha256."""
        manifest = self.manifest(ref)

        def copy_entry(entry: ManifestFile, target: Path) -> None:
            with self.open(ref, None if manifest.layout == "file" else entry.path) as source:
                size, sha = copy_hashing(source, target)
            verify_against(manifest, entry, size, sha, str(self._path(ref)))

        return materialize(manifest, dest, copy_entry)

    def verify(self, ref: ArtifactRef, manifest: ArtifactManifest | None = None) -> None:
        """Re-hash every payload file, the files concurrently (io.digests.files_sha256); raise
        ArtifactIntegrityError naming the first file, in manifest order, whose size or sha256 differs from
        its manifest entry (a missing or unreadable file: the OSError naming it)."""
        manifest = manifest or self.manifest(ref)
        paths = [self._file_path(ref, manifest, entry) for entry in manifest.files]
        digests = files_sha256(paths)
        for entry, path in zip(manifest.files, paths, strict=True):
            verify_against(manifest, entry, path.stat().st_size, digests[path], str(self._path(ref)))

    # ---- paths -----------------------------------------------------------------------------------
    def _path(self, ref: ArtifactRef) -> Path:
        return self.root / check_key(ref.key)

    def _file_path(self, ref: ArtifactRef, manifest: ArtifactManifest, entry: ManifestFile) -> Path:
        """Where `entry` of `ref`'s manifest lies: the payload itself (layout `file`), else inside its folder."""
        payload = self._path(ref)
        return payload if manifest.layout == "file" else payload / entry.path

    def _manifest_path(self, ref: ArtifactRef) -> Path:
        return self.root / check_key(ref.manifest_key)
