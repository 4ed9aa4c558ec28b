"""Where distillation processes run: torchrun's command line for this node, and the nodes of a
multi-node distillation (the indexed Job of infra/kubernetes/distill-multinode.yaml).

    python -m torch.distributed.run --nproc_per_node N <node arguments> -m tasks.distill_worker SPEC
    one node:     --standalone
    node r of M:  --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id ID-i
                  --rdzv-conf is_host=1 (r = 0) | is_host=0

A multi-node run is described by the environment of every node (`NodeGroup.from_environment`):
MOE2DENSE_NNODES (M), MOE2DENSE_NODE_RANK (r, the Job's completion index), MOE2DENSE_RDZV_ENDPOINT
(host:port of node 0, which hosts torchrun's c10d rendezvous store) and MOE2DENSE_RDZV_ID (one id per
Job). Every node starts `python -m tasks.distill_nodes -- COMMAND…`:
- node 0 runs COMMAND (the flow, e.g. `moe2dense convert RECIPE`); its distill stage, for its i-th launch,
  writes `launch-<i>.json` (the worker spec's path and N) into the group's folder
  `<MOE2DENSE_HOME>/distill-rendezvous/<ID>/` and starts torchrun as the rendezvous host;
- every other node waits for those announcements and starts torchrun with the same spec for each one,
  until node 0's COMMAND has ended (`done.json`, written whatever its outcome).
The folder, the spec, the student, the teacher and the checkpoints must be on one filesystem that all
nodes share (the Job mounts one ReadWriteMany volume at /data).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from moe2dense_core.errors import DistillError
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_platform.settings import Settings

LOG = logging.getLogger("moe2dense.distill")
WORKER_MODULE = "tasks.distill_worker"
NNODES_ENV = "MOE2DENSE_NNODES"
NODE_RANK_ENV = "MOE2DENSE_NODE_RANK"
RDZV_ENDPOINT_ENV = "MOE2DENSE_RDZV_ENDPOINT"
RDZV_ID_ENV = "MOE2DENSE_RDZV_ID"
RENDEZVOUS_FOLDER = "distill-rendezvous"
DONE_FILE = "done.json"
POLL_S = 2.0
_ENDPOINT = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$")
_RDZV_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NodeGroup:
    """The nodes of one multi-node distillation, as this node's environment describes them."""

    nnodes: int
    node_rank: int
    endpoint: str
    rdzv_id: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> NodeGroup | None:
        """The group the MOE2DENSE_* variables describe (module docstring); None when MOE2DENSE_NNODES is
        unset. DistillError naming the variable when one is missing or malformed."""
        if not env.get(NNODES_ENV, "").strip():
            return None
        nnodes = _whole(env, NNODES_ENV, minimum=1)
        node_rank = _whole(env, NODE_RANK_ENV, minimum=0)
        if node_rank >= nnodes:
            raise DistillError(f"{NODE_RANK_ENV}={node_rank} is not below {NNODES_ENV}={nnodes}")
        endpoint = env.get(RDZV_ENDPOINT_ENV, "").strip()
        if not _ENDPOINT.match(endpoint):
            raise DistillError(f"{RDZV_ENDPOINT_ENV}={endpoint!r}: expected HOST:PORT of node 0")
        rdzv_id = env.get(RDZV_ID_ENV, "").strip()
        if not _RDZV_ID.match(rdzv_id):
            raise DistillError(f"{RDZV_ID_ENV}={rdzv_id!r}: expected an id of letters, digits, '_', '.', '-'")
        return cls(nnodes=nnodes, node_rank=node_rank, endpoint=endpoint, rdzv_id=rdzv_id)

    def folder(self, home: Path) -> Path:
        """Where node 0 announces its launches to the others."""
        return home / RENDEZVOUS_FOLDER / self.rdzv_id

    def torchrun_arguments(self, launch: int) -> list[str]:
        """torchrun's arguments that place this node in launch `launch` of the group (node 0 hosts)."""
        return [
            "--nnodes",
            str(self.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            self.endpoint,
            "--rdzv-id",
            f"{self.rdzv_id}-{launch}",
            "--rdzv-conf",
            f"is_host={int(self.node_rank == 0)}",
        ]


def _whole(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw.isdigit() or int(raw) < minimum:
        raise DistillError(f"{name}={raw!r}: expected a whole number ≥ {minimum}")
    return int(raw)


def torchrun_command(nproc_per_node: int, spec: Path, node_arguments: list[str]) -> list[str]:
    """The torchrun command line that runs the worker on `spec` with `nproc_per_node` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc_per_node),
        *node_arguments,
        "-m",
        WORKER_MODULE,
        str(spec),
    ]


def announce_launch(folder: Path, spec: Path, nproc_per_node: int) -> int:
    """Node 0: record the next launch (its index i) for the other nodes; returns i."""
    folder.mkdir(parents=True, exist_ok=True)
    index = len(list(folder.glob("launch-*.json")))
    atomic_write_text(
        folder / f"launch-{index:04d}.json", json.dumps({"spec": str(spec), "nproc_per_node": nproc_per_node})
    )
    return index


def finish_group(folder: Path, exit_code: int) -> None:
    """Node 0: tell the other nodes that no further launch will come."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / DONE_FILE, json.dumps({"exit_code": exit_code}))


def follow(group: NodeGroup, folder: Path, poll_s: float = POLL_S) -> None:
    """Nodes 1…M−1: join every launch node 0 announces in `folder`, in order, until it is done. A failed
    launch is logged (node 0's stage reports it) and the node waits for the next one."""
    launch = 0
    while True:
        announced = folder / f"launch-{launch:04d}.json"
        if announced.is_file():
            entry = json.loads(announced.read_text(encoding="utf-8"))
            command = torchrun_command(
                entry["nproc_per_node"], Path(entry["spec"]), group.torchrun_arguments(launch)
            )
            LOG.info("node %d joins launch %d: %s", group.node_rank, launch, " ".join(command))
            code = subprocess.run(command, stdin=subprocess.DEVNULL).returncode
            if code != 0:
                LOG.error("launch %d exited with code %d on node %d", launch, code, group.node_rank)
            launch += 1
        elif (folder / DONE_FILE).is_file():
            return
        else:
            time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.distill_nodes -- COMMAND…` on every node of the group (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.distill_nodes", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="what node 0 runs (after `--`)")
    command = parser.parse_args(argv).command
    command = command[1:] if command[:1] == ["--"] else command
    group = NodeGroup.from_environment()
    if group is None:
        raise DistillError(f"{NNODES_ENV} is unset: this entry point runs on the nodes of a multi-node Job")
    folder = group.folder(Settings().home)
    if group.node_rank > 0:
        follow(group, folder)
        return 0
    if not command:
        parser.error("node 0 needs the COMMAND to run, after `--`")
    code = 1
    try:
        code = subprocess.run(command).returncode
    finally:
        finish_group(folder, code)
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
