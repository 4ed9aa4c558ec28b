"""The distill stage on several processes (CPU, gloo): one tiny recipe distilled in the stage's own process
(micro-batch 4), by torchrun with 2 processes (micro-batch 2) and by 2 nodes of 1 process (node 0 the stage,
node 1 `python -m tasks.distill_nodes` in a subprocess, c10d rendezvous on 127.0.0.1) ends with the same
weights and logs the same loss curve on the stage's MLflow run; a failing worker comes back as an error
with the exit code and the worker's own exception."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from moe2dense_core.logging import NullLogger
from moe2dense_platform.processes import free_port, stop_group
from moe2dense_platform.runtime import Runtime
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.distill import distill_task
from tasks.distill_launch import DistillLaunchError, ProcessLayout, launch_distill
from tasks.distill_nodes import NodeGroup, finish_group
from tasks.plan import plan_task
from tasks.source import source_task
from tests.tasks.stage_fixtures import parent_run_id, teacher  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SAME_RUN = (
    "distillation.train.precision=fp32",
    "distillation.train.max_steps=3",
    "distillation.train.grad_accum_steps=2",
    "distillation.train.log_every=1",
)
ONE_PROCESS = (*SAME_RUN, "distillation.train.micro_batch_size=4")
TWO_PROCESSES = (*SAME_RUN, "distillation.train.micro_batch_size=2", "distillation.nproc_per_node=2")
TWO_NODES = (*SAME_RUN, "distillation.train.micro_batch_size=2", "distillation.nnodes=2")


@pytest.fixture(scope="module")
def inputs(teacher, parent_run_id):  # noqa: F811
    """The recipe's source and assembled student, shared by every distillation here."""
    recipe = teacher.recipe(*ONE_PROCESS)
    source = source_task.fn(recipe.source)
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    plan = plan_task.fn(source, calibration, recipe.plan, parent_run_id)
    return source, assemble_task.fn(source, plan, recipe.storage, parent_run_id)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def distill_on_two_nodes(teacher, inputs, parent_run_id):  # noqa: F811
    """Node 0 is this process's distill stage, node 1 a follower subprocess (module docstring)."""
    group = {
        "MOE2DENSE_NNODES": "2",
        "MOE2DENSE_RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
        "MOE2DENSE_RDZV_ID": "stage-test",
    }
    follower = subprocess.Popen(
        [sys.executable, "-m", "tasks.distill_nodes"],
        cwd=REPO,
        env={**os.environ, **group, "MOE2DENSE_NODE_RANK": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        with environment({**group, "MOE2DENSE_NODE_RANK": "0"}):
            result = distill_task.fn(*inputs, teacher.recipe(*TWO_NODES).distillation, parent_run_id)
            finish_group(NodeGroup.from_environment().folder(Runtime.from_environment().settings.home), 0)
        output, _ = follower.communicate(timeout=120)
    finally:
        stop_group(follower.pid)
    assert follower.returncode == 0, output[-4000:]
    assert "node 1 joins launch 0" in output
    return result


@pytest.fixture(scope="module")
def results(teacher, inputs, parent_run_id):  # noqa: F811
    torch.set_num_threads(1)
    return {
        "one process": distill_task.fn(*inputs, teacher.recipe(*ONE_PROCESS).distillation, parent_run_id),
        "two processes": distill_task.fn(*inputs, teacher.recipe(*TWO_PROCESSES).distillation, parent_run_id),
        "two nodes": distill_on_two_nodes(teacher, inputs, parent_run_id),
    }


def weights(result) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(
        Runtime.from_environment().fetch_uri(result.checkpoint_uri)
    ).state_dict()


def logged(result) -> tuple[dict[str, str], dict[int, float]]:
    """(params, {step: loss}) of the stage's MLflow run."""
    client = Runtime.from_environment().client
    history = client.get_metric_history(result.mlflow_run_id, "loss")
    return client.get_run(result.mlflow_run_id).data.params, {m.step: m.value for m in history}


@pytest.mark.parametrize("launched", ["two processes", "two nodes"])
def test_launched_processes_distill_what_one_process_does(results, launched: str) -> None:
    single, several = results["one process"], results[launched]
    reference = weights(single)
    for name, value in weights(several).items():
        # AdamW moves a weight whose gradient is ~0 by up to ~lr when its last bits differ: 5% of one step
        assert torch.allclose(value, reference[name], rtol=0, atol=5e-5), name
    assert several.num_parameters == single.num_parameters
    params, losses = logged(several)
    single_params, single_losses = logged(single)
    assert (params["distill.world_size"], single_params["distill.world_size"]) == ("2", "1")
    assert sorted(losses) == [1, 2, 3]
    assert losses == pytest.approx(single_losses, rel=1e-4)


def test_a_failing_worker_reports_its_exit_code_and_exception(teacher, tmp_path) -> None:  # noqa: F811
    config = teacher.recipe(*TWO_PROCESSES).distillation.train
    out_of_vocabulary = torch.full((8, 16), 10**6, dtype=torch.long)
    with pytest.raises(DistillLaunchError) as failed:
        launch_distill(
            out_of_vocabulary,
            config,
            layout=ProcessLayout(2),
            workdir=tmp_path / "w",
            home=tmp_path,
            student_dir=teacher.path,
            output_dir=tmp_path / "out",
            logger=NullLogger(),
            teacher_model=teacher.path,
        )
    message = str(failed.value)
    assert message.startswith("distillation on 2 processes failed: it exited with code 1; its last")
    assert "DistillError: data token ids must lie in [0, 300)" in message
