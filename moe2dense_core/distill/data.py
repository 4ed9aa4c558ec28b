"""Text for distillation: load documents, split off a held-out set, tokenize, pack fixed-length rows.

Pipeline: `load_text_dataset(spec)` → documents (str) → `split_heldout(docs, fraction)` → train / held-out
documents → `tokenize_documents` → `pack_tokens(streams, seq_len)` → LongTensor [N, seq_len].
`prepare_token_splits` runs all of it.

[defined here] The held-out split is decided per document, before packing, by a hash of the document's
text: a document (and every copy of it) lands on one side only, no packed row mixes the two sides, and
the split does not change when documents are added, removed or reordered.
[defined here] Packing concatenates documents, each followed by the tokenizer's EOS id (when it has one),
and cuts the stream into rows of `seq_len` tokens; the last partial row is dropped, so no row needs padding.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
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


def is_heldout(document: str, heldout_fraction: float, seed: int = 0) -> bool:
    """True when the document belongs to the held-out side: u = sha256(seed, text) / 2^64 < fraction."""
    digest = hashlib.sha256(f"{seed}\x00{document}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


def split_heldout(
    documents: Sequence[str], heldout_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, held-out) documents, each in input order; see the module docstring for the rule."""
    if not 0.0 < heldout_fraction < 1.0:
        raise DataError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    train: list[str] = []
    heldout: list[str] = []
    for doc in documents:
        (heldout if is_heldout(doc, heldout_fraction, seed) else train).append(doc)
    return train, heldout


def tokenize_documents(documents: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids per document with the tokenizer's special tokens (e.g. a BOS) and EOS appended.

    `tokenizer` is a Hugging Face tokenizer (callable on a list of strings, optional `eos_token_id`).
    """
    encoded = tokenizer(list(documents), add_special_tokens=True)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return [list(ids) for ids in encoded]
    return [list(ids) if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]


def pack_tokens(token_streams: Iterable[Sequence[int]], seq_len: int) -> torch.Tensor:
    """Concatenate the streams and cut rows of `seq_len`: → LongTensor [N, seq_len] (remainder dropped).

    Raises DataError when there are fewer than `seq_len` tokens in all.
    """
    if seq_len < 2:
        raise DataError(f"seq_len must be ≥ 2, got {seq_len}")
    flat = [tok for stream in token_streams for tok in stream]
    rows = len(flat) // seq_len
    if rows == 0:
        raise DataError(f"only {len(flat)} tokens: not enough for one row of seq_len={seq_len}")
    return torch.tensor(flat[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


@dataclass(frozen=True)
class TokenSplits:
    """Packed training rows [N_train, seq_len] and held-out rows [N_heldout, seq_len] (int64)."""

    train: torch.Tensor
    heldout: torch.Tensor


def prepare_token_splits(
    documents: Sequence[str], tokenizer: Any, seq_len: int, *, heldout_fraction: float = 0.05, seed: int = 0
) -> TokenSplits:
    """Split documents into train / held-out (module docstring), tokenize and pack each side."""
    train_docs, heldout_docs = split_heldout(documents, heldout_fraction, seed)
    if not heldout_docs:
        raise DataError(
            f"heldout_fraction={heldout_fraction} selected none of {len(documents)} documents; raise it"
        )
    return TokenSplits(
        train=pack_tokens(tokenize_documents(train_docs, tokenizer), seq_len),
        heldout=pack_tokens(tokenize_documents(heldout_docs, tokenizer), seq_len),
    )


def tokens_digest(sequences: torch.Tensor) -> str:
    """sha256 of the int64 row-major bytes of a [N, L] token tensor: identifies the data of a cache."""
    return hashlib.sha256(sequences.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()
