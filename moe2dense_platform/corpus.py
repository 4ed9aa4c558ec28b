"""Text corpora for the teacher and the demo: an offline builtin corpus, local text files, hub datasets.

`builtin` [defined here] is English prose that exists on every machine with Python, with no download:
1. the reference topics of `pydoc_data.topics` (the language reference and library pages that
   `help("FOR")` prints), in sorted topic order, and
2. every docstring of at least `MIN_DOCSTRING_CHARS` characters in the standard library's own modules
   (`test`, `idlelib`, `tkinter`, `turtledemo`, `lib2to3`, `ensurepip` and site-packages excluded), walked
   in sorted file order.
It is deterministic for a given Python version (CPython 3.11: ~1.6 MB, ~2,100 documents). A different
Python gives a different corpus: `corpus_digest` tells them apart in every stage cache key, and
`CorpusFiles.digest` in the lineage of a teacher trained on it.

Documents are split into train / held-out by a stable hash of their text (the core's rule,
`moe2dense_core.data.is_heldout`: sha256("0\\x00" + text) / 2⁶⁴ < fraction; never position or
`random`), so adding documents never moves one across the split, and the teacher, the calibration,
the distillation and the evaluation all agree on which text is held out. `write_corpus` writes
`train.txt` and `heldout.txt` (documents separated by one blank line) atomically.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe2dense_core.data import is_heldout, prepare_token_splits
from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.io.atomic import atomic_write_text

MIN_DOCSTRING_CHARS = 200
EXCLUDED_STDLIB_PACKAGES = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "ensurepip",
    }
)
DOCUMENT_SEPARATOR = "\n\n"


class CorpusError(Moe2DenseError):
    """A corpus source is missing, empty or unreadable; the message names the source."""


class CorpusSpec(BaseModel):
    """Where the text comes from.

    source: `builtin` (offline, see module docstring), `files` (local UTF-8 text files, one document per
    paragraph block), or `hub` (`datasets.load_dataset(dataset, dataset_config, split=split)[text_field]`).
    heldout_fraction: share of documents (by hash) kept out of training, in (0, 0.5].
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["builtin", "files", "hub"] = "builtin"
    paths: tuple[Path, ...] = ()
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    text_field: str = "text"
    heldout_fraction: float = Field(default=0.05, gt=0.0, le=0.5)

    @model_validator(mode="after")
    def _source_has_its_fields(self) -> CorpusSpec:
        if self.source == "files" and not self.paths:
            raise ValueError("corpus.paths: source 'files' needs at least one path")
        if self.source == "hub" and not self.dataset:
            raise ValueError("corpus.dataset: source 'hub' needs a dataset id")
        return self


@dataclass(frozen=True)
class CorpusFiles:
    """The written corpus: train / held-out text files and the sha256 over both (train, then held-out)."""

    train: Path
    heldout: Path
    digest: str
    num_train_documents: int
    num_heldout_documents: int


def builtin_documents() -> list[str]:
    """The builtin corpus as documents (pydoc topics, then stdlib docstrings), deterministic order."""
    return list(_builtin_documents())


@functools.lru_cache(maxsize=1)
def _builtin_documents() -> tuple[str, ...]:
    """Parsed once per process (~4 s): every stage of a flow run reads the same text."""
    from pydoc_data.topics import topics

    documents = [topics[name].strip() for name in sorted(topics) if topics[name].strip()]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if EXCLUDED_STDLIB_PACKAGES.intersection(path.relative_to(stdlib).parts):
            continue
        documents.extend(_module_docstrings(path))
    if not documents:
        raise CorpusError(f"builtin corpus: no text found in pydoc_data.topics or {stdlib}")
    return tuple(documents)


def _module_docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a stdlib file this Python cannot parse is simply not part of its corpus
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [text.strip() for text in docstrings if text and len(text.strip()) >= MIN_DOCSTRING_CHARS]


def file_documents(paths: Sequence[Path], *, min_chars: int = 1000) -> list[str]:
    """Local UTF-8 text files as documents: blank-line separated paragraphs merged to ≥ `min_chars`."""
    documents: list[str] = []
    for path in paths:
        if not Path(path).is_file():
            raise CorpusError(f"corpus.paths: {path} is not a file")
        text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
        documents.extend(_merge_paragraphs(text.split("\n\n"), min_chars))
    if not documents:
        raise CorpusError(f"corpus.paths: {', '.join(map(str, paths))} hold no text")
    return documents


def _merge_paragraphs(paragraphs: Iterable[str], min_chars: int) -> list[str]:
    documents, current = [], []
    for paragraph in (p.strip() for p in paragraphs):
        if not paragraph:
            continue
        current.append(paragraph)
        if sum(len(p) for p in current) >= min_chars:
            documents.append("\n".join(current))
            current = []
    if current:
        documents.append("\n".join(current))
    return documents


def hub_documents(dataset: str, dataset_config: str | None, split: str, text_field: str) -> list[str]:
    """One document per non-empty `text_field` row of a `datasets` dataset (hub id or local builder)."""
    import datasets

    rows = datasets.load_dataset(dataset, dataset_config, split=split)
    if text_field not in rows.column_names:
        raise CorpusError(
            f"corpus.text_field: {dataset!r} has no column {text_field!r} ({rows.column_names})"
        )
    documents = [text.strip() for text in rows[text_field] if text and text.strip()]
    if not documents:
        raise CorpusError(f"corpus.dataset: {dataset!r} split {split!r} has no text in {text_field!r}")
    return documents


def load_documents(spec: CorpusSpec) -> list[str]:
    """The documents a spec names, in their deterministic order."""
    if spec.source == "builtin":
        return builtin_documents()
    if spec.source == "files":
        return file_documents(spec.paths)
    return hub_documents(spec.dataset or "", spec.dataset_config, spec.split, spec.text_field)


def corpus_digest(spec: CorpusSpec) -> str:
    """Content digest of the text a spec yields [defined here]: sha256 over `heldout_fraction`, then the
    sha256 of every document in `load_documents` order.

    What calibration, distillation and evaluation read, never where it lives: the same text under
    another path gives the same digest; one changed character (outside the whitespace that splits
    paragraphs) gives another. Stage cache keys hold this instead of the spec (moe2dense_platform/caching.py).
    Costs one read of the documents (builtin: parsed once per process)."""
    digest = hashlib.sha256(f"heldout_fraction={spec.heldout_fraction!r}\0".encode())
    for document in load_documents(spec):
        digest.update(hashlib.sha256(document.encode("utf-8")).digest())
    return digest.hexdigest()


def write_corpus(spec: CorpusSpec, out_dir: Path) -> CorpusFiles:
    """Load, split and write `train.txt` / `heldout.txt` under `out_dir` (atomic), returning their digest."""
    documents = load_documents(spec)
    train = [d for d in documents if not is_heldout(d, spec.heldout_fraction)]
    heldout = [d for d in documents if is_heldout(d, spec.heldout_fraction)]
    if not train or not heldout:
        raise CorpusError(
            f"corpus: {len(documents)} documents give {len(train)} train / {len(heldout)} held-out with "
            f"heldout_fraction={spec.heldout_fraction}; both must be non-empty"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    train_text, heldout_text = DOCUMENT_SEPARATOR.join(train), DOCUMENT_SEPARATOR.join(heldout)
    atomic_write_text(out_dir / "train.txt", train_text)
    atomic_write_text(out_dir / "heldout.txt", heldout_text)
    digest = hashlib.sha256()
    for text in (train_text, heldout_text):
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return CorpusFiles(
        out_dir / "train.txt", out_dir / "heldout.txt", digest.hexdigest(), len(train), len(heldout)
    )


def corpus_folder(spec: CorpusSpec, root: Path) -> Path:
    """`<root>/corpus/<sha256(spec JSON)[:12]>`: one folder per distinct corpus request."""
    canonical = spec.model_dump_json()
    return Path(root) / "corpus" / hashlib.sha256(canonical.encode()).hexdigest()[:12]


def token_rows(
    spec: CorpusSpec, tokenizer: Any, seq_len: int, side: Literal["train", "heldout"]
) -> torch.Tensor:
    """Packed rows [N, seq_len] (int64) of one side of the split, tokenized with the model's tokenizer.

    The same split rule as `write_corpus` (the core's `is_heldout`), so calibration and distillation
    read only train-side text and evaluation only held-out text.
    """
    splits = prepare_token_splits(
        load_documents(spec), tokenizer, seq_len, heldout_fraction=spec.heldout_fraction
    )
    return splits.train if side == "train" else splits.heldout
