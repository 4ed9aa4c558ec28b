"""Stage `teacher_logits` on two CPU processes (`distillation.teacher_cache.processes`), through `.fn` in the
embedded default, on a tiny random Qwen3-MoE: the stored cache is byte-identical to one process's (same
manifest digest, so the same shard digests) and `processes` is not part of the cache key; a rank that
fails fails the pass with its own error, before any manifest, and its shards are never handed over; the ranks
of a SIGKILLed stage stop by themselves after their current shard; the setting is checked when the
recipe loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from moe2dense_core.errors import DistillError
from moe2dense_platform.recipe import RecipeError
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.stored_topk_cache import open_stored_topk_cache
from tasks.source import source_task
from tasks.stage import STAGES
from tasks.teacher_logits import teacher_logits_task
from tasks.teacher_logits_workers import WORKER_MODULE, TeacherPassSpec, run_teacher_workers
from tests.fixtures.tiny_moe import VOCAB_SIZE
from tests.flows.tiny_teacher import TinyTeacher, make_random_teacher
from tests.tasks.stage_fixtures import parent_run_id  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TinyTeacher:
    """A tiny random Qwen3-MoE (byte-level tokenizer) and ~80 rows of 64 tokens of English to distil on."""
    return make_random_teacher(tmp_path_factory.mktemp("teacher"), 100)


def cached_recipe(teacher: TinyTeacher, processes: int | str):
    """16 rows per shard (several shards, more than two processes' worth), on the CPU, fp32."""
    return teacher.recipe(
        "distillation.teacher=cached",
        "distillation.teacher_cache.k=16",
        "distillation.teacher_cache.rows_per_shard=16",
        "distillation.teacher_cache.batch_size=8",
        "distillation.teacher_cache.device=cpu",
        f"distillation.teacher_cache.processes={processes}",
        "distillation.train.precision=fp32",
    )


def test_two_processes_store_the_cache_one_process_stores(teacher, parent_run_id) -> None:  # noqa: F811
    torch.set_num_threads(1)
    one, two = cached_recipe(teacher, 1), cached_recipe(teacher, 2)
    source = source_task.fn(one.source)
    by_one = teacher_logits_task.fn(source, one.distillation, parent_run_id)
    by_two = teacher_logits_task.fn(source, two.distillation, parent_run_id)
    assert by_two.cache_digest == by_one.cache_digest  # the manifest, holding every shard's sha256
    assert by_two.model_dump(exclude={"mlflow_run_id"}) == by_one.model_dump(exclude={"mlflow_run_id"})
    runtime = Runtime.from_environment()
    assert len(open_stored_topk_cache(runtime.store, by_two.manifest_uri).manifest.shards) >= 3
    client = MlflowClient(runtime.settings.resolved_mlflow_tracking_uri)
    processes = [
        client.get_run(r.mlflow_run_id).data.params["teacher_logits.processes"] for r in (by_one, by_two)
    ]
    assert processes == ["1", "2"]

    key = STAGES["teacher_logits"].key

    def key_of(recipe) -> str:
        return key(None, {"source": source, "distillation": recipe.distillation, "parent_run_id": "any"})

    assert key_of(one) == key_of(two) == key_of(cached_recipe(teacher, "auto"))
    other_k = one.model_copy(
        update={
            "distillation": one.distillation.model_copy(
                update={"teacher_cache": one.distillation.teacher_cache.model_copy(update={"k": 8})}
            )
        }
    )
    assert key_of(other_k) != key_of(one)


def two_rank_cpu_pass(teacher: TinyTeacher, work: Path, cache: Path) -> TeacherPassSpec:
    """The teacher pass these tests start: 2 CPU ranks of 1 thread, k = 8, 4-row batches and shards."""
    return TeacherPassSpec(
        teacher_dir=teacher.path,
        rows_file=work / "rows.safetensors",
        out_dir=cache,
        k=8,
        temperature=1.0,
        teacher_top_k=None,
        teacher_digest="tiny",
        batch_size=4,
        rows_per_shard=4,
        precision="fp32",
        logprob_dtype="float32",
        device="cpu",
        processes=2,
        threads=1,
    )


def test_a_failing_rank_fails_the_pass_with_its_error_and_hands_over_none_of_its_shards(
    teacher, tmp_path: Path
) -> None:
    """Rank 1 of 2 meets a token id outside the vocabulary in its first shard (rows 4-7)."""
    rows = torch.randint(0, VOCAB_SIZE, (16, 32), generator=torch.Generator().manual_seed(0))
    rows[5, 3] = VOCAB_SIZE
    spec = two_rank_cpu_pass(teacher, tmp_path / "work", tmp_path / "cache")
    handed: list[str] = []
    with pytest.raises(DistillError) as failed:
        run_teacher_workers(spec, rows, tmp_path / "work", on_shard=lambda path: handed.append(path.name))
    message = str(failed.value)
    assert message.startswith("teacher pass: process 1 of 2 exited with code 1; the end of its log")
    assert "IndexError: index out of range in self" in message  # the rank's own traceback
    assert set(handed) <= {"shard_00000.safetensors", "shard_00002.safetensors"}  # rank 0's only
    assert not (spec.out_dir / "manifest.json").exists() and not (spec.out_dir / "part_00001.json").exists()


PROJECT_ROOT = Path(__file__).resolve().parents[2]
STAGE_CHILD = """
import sys, torch
from pathlib import Path
from tasks.teacher_logits_workers import TeacherPassSpec, run_teacher_workers
spec = TeacherPassSpec.model_validate_json(Path(sys.argv[1]).read_text())
rows = torch.randint(0, int(sys.argv[2]), (2000, 32), generator=torch.Generator().manual_seed(0))
run_teacher_workers(spec, rows, spec.rows_file.parent, on_shard=lambda path: None)
"""


def ranks_running(spec_file: Path) -> list[int]:
    """Pids of the teacher-pass ranks started with `spec_file` (whatever their parent now)."""
    running = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if WORKER_MODULE.encode() in argv and str(spec_file).encode() in argv:
            running.append(int(entry.name))
    return running


@pytest.mark.slow
def test_the_ranks_of_a_killed_stage_stop_after_their_current_shard(teacher, tmp_path: Path) -> None:
    """The stage process is SIGKILLed once the first of 500 shards is written: its two ranks, in their own
    sessions, out of its reach, notice the lost parent after their shard and exit with the reason."""
    work, cache = tmp_path / "work", tmp_path / "cache"
    spec = two_rank_cpu_pass(teacher, work, cache)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    stage = subprocess.Popen(
        [sys.executable, "-c", STAGE_CHILD, str(tmp_path / "spec.json"), str(VOCAB_SIZE)],
        cwd=PROJECT_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(cache.glob("shard_*.safetensors")):
        if stage.poll() is not None or time.monotonic() > deadline:
            stage.kill()
            pytest.fail(f"no shard written (stage exit {stage.poll()}): {stage.stderr.read()[-4000:]}")
        time.sleep(0.001)
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait(timeout=30)

    while ranks_running(work / "spec.json"):
        assert time.monotonic() < deadline, "the ranks of the killed stage kept running"
        time.sleep(0.1)
    assert len(list(cache.glob("shard_*.safetensors"))) < 500
    for rank in (0, 1):
        assert f"stage process {stage.pid} is gone" in (work / f"rank_{rank:05d}.log").read_text()


def test_the_processes_setting_is_checked_when_the_recipe_loads(teacher) -> None:
    for bad in ("0", "two"):
        with pytest.raises(
            RecipeError, match="teacher_cache.processes.*expected a whole number ≥ 1 or 'auto'"
        ):
            cached_recipe(teacher, bad)
    with pytest.raises(RecipeError, match="device 'cuda:1' names one device: use processes 1"):
        teacher.recipe("distillation.teacher_cache.processes=2", "distillation.teacher_cache.device=cuda:1")
    assert cached_recipe(teacher, "auto").distillation.teacher_cache.processes == "auto"
