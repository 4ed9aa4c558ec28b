"""Stage `corpus`: write a CorpusSpec's train / held-out text files for the teacher flow (not cached: seconds)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from moe2dense_platform.corpus import CorpusFiles, CorpusSpec, corpus_folder, write_corpus
from tasks.stage_events import STATE_HOOKS


@task(name="corpus", cache_policy=NONE, persist_result=False, **STATE_HOOKS)
def prepare_corpus_task(spec: CorpusSpec, root: str) -> CorpusFiles:
    """Prefect adapter of `write_corpus` into `corpus_folder(spec, root)` (cheap: seconds; not cached)."""
    return write_corpus(spec, corpus_folder(spec, Path(root)))
