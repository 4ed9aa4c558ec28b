"""The distill stage's launcher without torchrun: child output streamed line by line and a failure reported
with its exit code and last lines; rank 0's metric events replayed in order, a half-written line
waiting; process counts from the recipe and the nodes from the environment, bad values named; node 0
of a Job runs its command and tells the other nodes it is done."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from moe2dense_core.distill import DistillConfig
from moe2dense_core.errors import DistillError
from moe2dense_core.logging import NullLogger
from moe2dense_platform.recipe import parse_recipe
from tasks.distill_launch import (
    DistillLaunchError,
    ProcessLayout,
    launch_distill,
    local_processes,
    process_layout,
    run_streaming,
)
from tasks.distill_nodes import DONE_FILE, NodeGroup, announce_launch, follow, main, torchrun_command
from tasks.distill_worker import JsonLinesLogger, WorkerSpec, read_new_events, replay_events

NODES = {
    "MOE2DENSE_NNODES": "2",
    "MOE2DENSE_NODE_RANK": "1",
    "MOE2DENSE_RDZV_ENDPOINT": "job-0.job:29500",
    "MOE2DENSE_RDZV_ID": "job",
}
LOG = logging.getLogger("tests.distill_launch")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_params(self, params: dict) -> None:
        self.calls.append(("params", params))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.calls.append(("metrics", metrics, step))

    def log_artifact(self, path, artifact_path=None) -> None:
        self.calls.append(("artifact", str(path), artifact_path))


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_output_lines_are_logged_and_a_failure_names_its_exit_code_and_last_lines(tmp_path, caplog) -> None:
    polls: list[int] = []
    code = (
        "import sys\nfor i in range(60): print(f'line {i}', file=sys.stderr if i % 2 else sys.stdout)\n"
        "sys.exit(3)"
    )
    with caplog.at_level(logging.INFO, logger=LOG.name), pytest.raises(DistillLaunchError) as failed:
        run_streaming(
            python(code), cwd=tmp_path, log=LOG, on_poll=lambda: polls.append(1), what="a test", poll_s=0.0
        )
    message = str(failed.value)
    assert message.startswith("a test failed: it exited with code 3; its last 40 output lines:\nline 20\n")
    assert message.endswith("line 59") and "line 19\n" not in message
    assert [r.getMessage() for r in caplog.records] == [f"line {i}" for i in range(60)]  # stdout and stderr
    assert polls


def test_a_child_killed_by_a_signal_says_so(tmp_path) -> None:
    code = "import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(DistillLaunchError, match=r"it was killed by SIGKILL; its last 1 output lines:\nbye"):
        run_streaming(python(code), cwd=tmp_path, log=LOG, on_poll=lambda: None, what="a test")


def test_metric_events_replay_in_order_and_a_partial_line_waits(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    writer = JsonLinesLogger(path)
    writer.log_params({"distill.world_size": 2})
    writer.log_metrics({"loss": 0.5}, step=1)
    with open(path, "a", encoding="utf-8") as out:
        out.write('{"metrics": {"loss": 0.25}, "st')  # rank 0 is still writing this line
    events, offset = read_new_events(path, 0)
    recorder = Recorder()
    replay_events(events, recorder)
    assert recorder.calls == [("params", {"distill.world_size": 2}), ("metrics", {"loss": 0.5}, 1)]
    with open(path, "a", encoding="utf-8") as out:
        out.write('ep": 2}\n')
    writer.log_artifact(tmp_path / "x.txt", "plots")
    events, offset = read_new_events(path, offset)
    replay_events(events, recorder)
    assert recorder.calls[2:] == [
        ("metrics", {"loss": 0.25}, 2),
        ("artifact", str(tmp_path / "x.txt"), "plots"),
    ]
    assert read_new_events(path, offset) == ([], offset) and offset == path.stat().st_size


def test_a_worker_spec_names_exactly_one_teacher(tmp_path) -> None:
    paths = dict(
        student_dir=tmp_path,
        rows_file=tmp_path / "r",
        output_dir=tmp_path / "o",
        metrics_file=tmp_path / "m",
        result_file=tmp_path / "res",
        config=DistillConfig(max_steps=1),
    )
    with pytest.raises(ValueError, match="exactly one of teacher_model"):
        WorkerSpec(**paths)
    with pytest.raises(ValueError, match="exactly one of teacher_model"):
        WorkerSpec(**paths, teacher_model=tmp_path, teacher_cache_uri="file:///cache")


def recipe_distillation(**fields):
    return parse_recipe(
        {"name": "t", "source": {"model": "./teacher"}, "distillation": {"train": {"max_steps": 1}, **fields}}
    ).distillation


def test_the_layout_follows_the_recipe_and_the_nodes_environment() -> None:
    assert process_layout(recipe_distillation(nproc_per_node=3), env={}) == ProcessLayout(3)
    expected_auto = max(torch.cuda.device_count(), 1)
    assert local_processes("auto") == expected_auto
    layout = process_layout(recipe_distillation(nproc_per_node=2, nnodes=2), env=NODES)
    assert layout.world_size == 4 and layout.group == NodeGroup(2, 1, "job-0.job:29500", "job")
    assert layout.node_arguments(3) == [
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "job-0.job:29500",
        "--rdzv-id",
        "job-3",
        "--rdzv-conf",
        "is_host=0",
    ]
    assert ProcessLayout(2).node_arguments(0) == ["--standalone"]
    one_node = {**NODES, "MOE2DENSE_NNODES": "1", "MOE2DENSE_NODE_RANK": "0"}
    assert process_layout(recipe_distillation(), env=one_node).group is None
    with pytest.raises(DistillError, match="distillation.nnodes=2 but MOE2DENSE_NNODES is unset"):
        process_layout(recipe_distillation(nnodes=2), env={})
    with pytest.raises(DistillError, match="distillation.nnodes=1 but MOE2DENSE_NNODES=2"):
        process_layout(recipe_distillation(), env=NODES)


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("MOE2DENSE_NNODES", "two", "MOE2DENSE_NNODES='two': expected a whole number ≥ 1"),
        ("MOE2DENSE_NODE_RANK", "2", "MOE2DENSE_NODE_RANK=2 is not below MOE2DENSE_NNODES=2"),
        ("MOE2DENSE_NODE_RANK", "", "MOE2DENSE_NODE_RANK='': expected a whole number ≥ 0"),
        ("MOE2DENSE_RDZV_ENDPOINT", "job-0", "MOE2DENSE_RDZV_ENDPOINT='job-0': expected HOST:PORT of node 0"),
        ("MOE2DENSE_RDZV_ID", "a b", "MOE2DENSE_RDZV_ID='a b': expected an id"),
    ],
)
def test_a_bad_nodes_environment_names_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(DistillError, match=expected):
        NodeGroup.from_environment({**NODES, name: value})


def test_node_0_runs_its_command_and_then_releases_the_other_nodes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOE2DENSE_HOME", str(tmp_path))
    for name, value in {**NODES, "MOE2DENSE_NODE_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert main(["--", *python("import sys; sys.exit(5)")]) == 5
    folder = NodeGroup.from_environment().folder(tmp_path)
    assert json.loads((folder / DONE_FILE).read_text()) == {"exit_code": 5}
    follow(NodeGroup.from_environment({**NODES}), folder, poll_s=0.01)  # nothing announced: returns at once


def test_launches_are_announced_in_order_with_the_worker_command(tmp_path) -> None:
    folder = tmp_path / "group"
    assert [announce_launch(folder, tmp_path / f"spec{i}.json", 2) for i in range(2)] == [0, 1]
    assert json.loads((folder / "launch-0001.json").read_text()) == {
        "spec": str(tmp_path / "spec1.json"),
        "nproc_per_node": 2,
    }
    command = torchrun_command(2, Path("spec.json"), ["--standalone"])
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "tasks.distill_worker",
        "spec.json",
    ]


def test_a_launch_refuses_a_folder_without_a_model_before_starting_anything(tmp_path) -> None:
    with pytest.raises(DistillError, match=r"student_dir .*no-student holds no config\.json"):
        launch_distill(
            torch.zeros(4, 8, dtype=torch.long),
            DistillConfig(max_steps=1),
            layout=ProcessLayout(2),
            workdir=tmp_path / "w",
            home=tmp_path,
            student_dir=tmp_path / "no-student",
            output_dir=tmp_path / "out",
            logger=NullLogger(),
            teacher_model=tmp_path,
        )
    assert not (tmp_path / "w").exists()
