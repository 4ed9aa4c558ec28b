"""Where training / calibration / evaluation text comes from: a hub dataset id or local text files.

`load_text_dataset(spec)` → documents (list of non-empty str); `moe2dense_core.data.packing` turns them into
token rows.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from moe2dense_core.errors import DataError

_LOCAL_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class TextDataSpec(BaseModel):
    """Where the text comes from: a hub dataset id, or local text / jsonl / parquet files.

    `source` is a hub id (e.g. "HuggingFaceFW/fineweb-edu", with `subset="sample-10BT"`), or a local
    file, directory or glob. Local files of one kind only (.txt/.text, .jsonl/.json or .parquet).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(..., min_length=1)
    subset: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = "train"
    revision: str | None = None
    text_field: str = Field("text", description="Column holding the text (jsonl / parquet / hub).")
    sample_by: Literal["line", "paragraph", "document"] = Field(
        "paragraph", description="How a .txt file is cut into documents (blank-line paragraphs by default)."
    )
    max_documents: int | None = Field(None, ge=1, description="Read at most this many documents.")


def _local_files(source: str) -> list[str] | None:
    """The local files `source` names (file, directory or glob), or None when it is not local."""
    path = Path(source).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix in _LOCAL_BUILDERS and p.is_file())
        if not files:
            raise DataError(f"directory {path} holds no .txt, .jsonl, .json or .parquet file")
        return files
    matches = sorted(glob.glob(str(path)))
    looks_local = any(ch in source for ch in "*?[") or source.startswith(("/", ".", "~"))
    if looks_local or Path(source).suffix in _LOCAL_BUILDERS:
        if not matches:
            raise DataError(f"text data source {source!r} matches no file")
        return matches
    return None


def load_text_dataset(spec: TextDataSpec) -> list[str]:
    """Read the documents `spec` names, in order: list of non-empty strings.

    Local files load through `datasets`' text / json / parquet builders; a hub id is streamed, so
    `max_documents` bounds what is downloaded. Raises DataError naming the file / column at fault.
    """
    try:
        import datasets
    except ImportError as err:  # datasets is an optional dependency of the core
        raise DataError("load_text_dataset needs the `datasets` package (pip install datasets)") from err

    files = _local_files(spec.source)
    kwargs: dict[str, Any]
    if files is not None:
        suffixes = {Path(f).suffix for f in files}
        builders = {_LOCAL_BUILDERS.get(s) for s in suffixes}
        if None in builders or len(builders) != 1:
            raise DataError(f"text data files {files[:3]}… must all be .txt, .jsonl/.json or .parquet")
        builder = builders.pop()
        kwargs = {"path": builder, "data_files": {"train": files}, "split": "train"}
        if builder == "text":
            kwargs["sample_by"] = spec.sample_by
        dataset = datasets.load_dataset(**kwargs)
        where = f"files {files[:3]}"
    else:
        dataset = datasets.load_dataset(
            spec.source, spec.subset, split=spec.split, revision=spec.revision, streaming=True
        )
        where = f"hub dataset {spec.source!r}"

    documents: list[str] = []
    for row in dataset:
        if spec.text_field not in row:
            raise DataError(f"{where} has no column {spec.text_field!r}; columns: {sorted(row)}")
        text = row[spec.text_field]
        if isinstance(text, str) and text.strip():
            documents.append(text)
        if spec.max_documents is not None and len(documents) >= spec.max_documents:
            break
    if not documents:
        raise DataError(f"{where} yielded no non-empty text in column {spec.text_field!r}")
    return documents
