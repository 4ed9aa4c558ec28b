"""Text loading (local txt / jsonl / parquet through `datasets`), held-out split, packing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import (
    DataError,
    TextDataSpec,
    load_text_dataset,
    pack_tokens,
    prepare_token_splits,
    split_heldout,
)
from tests.core.distill_tiny_models import ByteTokenizer

DOCS = [f"document number {i} says {'la ' * (i % 5)}" for i in range(60)]


def test_pack_tokens_concatenates_and_drops_the_remainder() -> None:
    rows = pack_tokens([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4)
    assert rows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert rows.dtype == torch.long
    with pytest.raises(DataError, match="not enough for one row"):
        pack_tokens([[1, 2]], seq_len=4)


def test_heldout_split_is_by_document_deterministic_and_order_free() -> None:
    train, heldout = split_heldout(DOCS, 0.2, seed=3)
    assert set(train).isdisjoint(heldout) and len(train) + len(heldout) == len(DOCS)
    assert 3 <= len(heldout) <= 25
    train_r, heldout_r = split_heldout(list(reversed(DOCS)), 0.2, seed=3)
    assert set(heldout_r) == set(heldout) and set(train_r) == set(train)
    _, other_seed = split_heldout(DOCS, 0.2, seed=4)
    assert set(other_seed) != set(heldout)
    with pytest.raises(DataError, match="heldout_fraction"):
        split_heldout(DOCS, 1.0)


def test_prepare_token_splits_keeps_heldout_text_out_of_training_rows() -> None:
    splits = prepare_token_splits(DOCS, ByteTokenizer(), seq_len=16, heldout_fraction=0.2, seed=3)
    _, heldout_docs = split_heldout(DOCS, 0.2, seed=3)
    train_bytes = bytes(t for t in splits.train.flatten().tolist() if t)
    heldout_bytes = bytes(t for t in splits.heldout.flatten().tolist() if t)
    assert splits.train.shape[1] == splits.heldout.shape[1] == 16
    assert any(doc.encode() in heldout_bytes for doc in heldout_docs)
    assert not any(doc.encode() in train_bytes for doc in heldout_docs)


def test_load_text_dataset_reads_txt_jsonl_and_parquet(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    assert load_text_dataset(TextDataSpec(source=str(txt))) == [
        "first paragraph\nstill first",
        "second paragraph\n",
    ]
    assert len(load_text_dataset(TextDataSpec(source=str(txt), sample_by="line"))) == 3

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps({"content": d}) for d in DOCS[:5]) + "\n")
    assert load_text_dataset(TextDataSpec(source=str(jsonl), text_field="content")) == DOCS[:5]
    assert (
        load_text_dataset(TextDataSpec(source=str(jsonl), text_field="content", max_documents=2)) == DOCS[:2]
    )
    with pytest.raises(DataError, match="no column 'text'"):
        load_text_dataset(TextDataSpec(source=str(jsonl)))

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS[:4]}), tmp_path / "part.parquet")
    assert load_text_dataset(TextDataSpec(source=str(tmp_path / "*.parquet"))) == DOCS[:4]


def test_load_text_dataset_names_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="matches no file"):
        load_text_dataset(TextDataSpec(source=str(tmp_path / "absent.txt")))
    with pytest.raises(DataError, match="matches no file"):
        load_text_dataset(TextDataSpec(source="relative/absent.jsonl"))


def test_shared_tinyshakespeare_packs_into_rows(shared_data: Path) -> None:
    docs = load_text_dataset(
        TextDataSpec(source=str(shared_data / "text" / "tinyshakespeare.txt"), max_documents=200)
    )
    splits = prepare_token_splits(docs, ByteTokenizer(), seq_len=64, heldout_fraction=0.1)
    assert splits.train.shape[0] > 10 and splits.heldout.shape[0] >= 1
