"""moe2dense_platform/corpus.py: the builtin offline corpus, local files, local `datasets` folders, the stable split."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from moe2dense_platform.corpus import (
    CorpusError,
    CorpusSpec,
    file_documents,
    is_heldout,
    load_documents,
    write_corpus,
)
from tasks.corpus import prepare_corpus_task


@pytest.mark.slow
def test_builtin_corpus_is_english_prose_and_deterministic(tmp_path):
    first = write_corpus(CorpusSpec(), tmp_path / "a")
    train_text = first.train.read_text()
    assert len(train_text) > 1_000_000
    assert 'The "for" statement' in train_text  # pydoc topics (the language reference)
    assert "Return a new" in train_text  # stdlib docstrings
    second = prepare_corpus_task.fn(CorpusSpec(), str(tmp_path / "b"))
    assert first.digest == second.digest
    assert first.train.read_bytes() == second.train.read_bytes()
    assert (
        first.num_heldout_documents > 0
        and 0.03
        < first.num_heldout_documents / (first.num_train_documents + first.num_heldout_documents)
        < 0.07
    )


def test_split_is_by_document_hash_and_disjoint(tmp_path):
    text_file = tmp_path / "story.txt"
    paragraphs = [f"Paragraph number {i} tells a small story about a cat and a dog." for i in range(400)]
    text_file.write_text("\n\n".join(paragraphs))
    spec = CorpusSpec(source="files", paths=(text_file,), heldout_fraction=0.2)
    files = write_corpus(spec, tmp_path / "out")
    train = set(files.train.read_text().split("\n\n"))
    heldout = set(files.heldout.read_text().split("\n\n"))
    assert train and heldout and not train & heldout
    for document in heldout:
        bucket = int.from_bytes(hashlib.sha256(f"0\x00{document}".encode()).digest()[:8], "big")
        assert bucket < 0.2 * 2**64
    assert all(is_heldout(d, 0.2) for d in heldout) and not any(is_heldout(d, 0.2) for d in train)


def test_file_paragraphs_are_merged_to_min_chars(tmp_path):
    text_file = tmp_path / "a.txt"
    text_file.write_text("one two\n\nthree four\r\n\r\nfive six seven eight nine ten\n\n\n\nlast")
    assert file_documents([text_file], min_chars=15) == [
        "one two\nthree four",
        "five six seven eight nine ten",
        "last",
    ]


def test_local_datasets_folder_through_the_hub_branch(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.txt").write_text("first line of text\n\nsecond line of text\n")
    documents = load_documents(CorpusSpec(source="hub", dataset=str(folder)))
    assert documents == ["first line of text", "second line of text"]
    with pytest.raises(CorpusError, match="corpus.text_field"):
        load_documents(CorpusSpec(source="hub", dataset=str(folder), text_field="body"))


def test_bad_specs_name_the_field(tmp_path):
    with pytest.raises(ValidationError, match="corpus.paths"):
        CorpusSpec(source="files")
    with pytest.raises(ValidationError, match="corpus.dataset"):
        CorpusSpec(source="hub")
    with pytest.raises(ValidationError, match="heldout_fraction"):
        CorpusSpec(heldout_fraction=0.9)
    with pytest.raises(CorpusError, match="missing.txt is not a file"):
        load_documents(CorpusSpec(source="files", paths=(tmp_path / "missing.txt",)))
    lonely = tmp_path / "one.txt"
    lonely.write_text("a single short document")
    with pytest.raises(CorpusError, match="both must be non-empty"):
        write_corpus(CorpusSpec(source="files", paths=(lonely,)), tmp_path / "out")
