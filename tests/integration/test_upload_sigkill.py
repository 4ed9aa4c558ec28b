"""SIGKILL during an artifact upload and during the assemble stage's upload: no reader (the store's
`exists` / `manifest` / `ref_from_uri` / `fetch`) and no Prefect result cache ever sees a partial
artifact, and the re-run completes with one verified copy.

Each writer is a real child process, frozen (SIGSTOP) at a moment it is provably mid-write, inspected
from outside, then SIGKILLed:
- local store: `put_dir` of 96 MiB, stopped once its staging folder holds a file;
- S3 (moto), multipart: the faulty proxy holds the child's request for part 2, so part 1 is uploaded
  and the multipart upload is in progress;
- the stage tasks source → calibrate → plan → assemble as Prefect tasks (real Prefect server, results
  in the S3 store): the proxy holds the first payload PUT of the `dense-model` artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

from moe2dense_platform.artifact_manifest import MANIFEST_SUFFIX, ArtifactNotFoundError, ArtifactRef
from moe2dense_platform.local_store import LocalArtifactStore
from moe2dense_platform.result_storage import RESULTS_FOLDER
from moe2dense_platform.s3_store import S3ArtifactStore
from tests.integration.faulty_proxy import DROP, PASS, FaultyProxy
from tests.integration.servers import DUMMY_AWS

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
PART = 5 * MIB  # the smallest multipart part S3 accepts


# ---- child processes -------------------------------------------------------------------------------
def s3_store(endpoint_url: str, bucket: str, prefix: str, cache_dir: str) -> S3ArtifactStore:
    """An S3 store on `endpoint_url` that goes multipart above one 5 MiB part, one part at a time."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=DUMMY_AWS["AWS_DEFAULT_REGION"],
        config=BotoConfig(s3={"addressing_style": "path"}),
    )
    transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=1)
    return S3ArtifactStore(bucket, prefix, client, cache_dir, transfer)


def put_local(root: str, folder: str) -> None:
    LocalArtifactStore(root).put_dir(folder, kind="blob")


def put_s3(endpoint_url: str, bucket: str, prefix: str, cache_dir: str, file: str) -> None:
    s3_store(endpoint_url, bucket, prefix, cache_dir).put_file(file, kind="blob")


def start_child(function: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = (
        f"import sys; from tests.integration.test_upload_sigkill import {function}; {function}(*sys.argv[1:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def freeze_when(child: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """SIGSTOP `child` as soon as `ready()`; fails with the child's stderr if it ends first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(
                f"the child never reached the moment to stop it (exit {child.poll()}): "
                f"{child.stderr.read()[-4000:]}"
            )
        time.sleep(0.001)
    os.killpg(child.pid, signal.SIGSTOP)


def kill(child: subprocess.Popen) -> None:
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


def hold_request(
    matches: Callable[[str, str], bool],
) -> tuple[Callable[[int, str, str], str], threading.Event, threading.Event]:
    """A proxy fault that holds the first request `matches(method, path)` until `release` is set, then
    drops it (its client is dead by then); `held` is set while it waits."""
    held, release = threading.Event(), threading.Event()

    def fault(n: int, method: str, path: str) -> str:
        if held.is_set() or not matches(method, path):
            return PASS
        held.set()
        release.wait(timeout=300)
        return DROP

    return fault, held, release


def wait_or_fail(
    event: threading.Event, child: subprocess.Popen, what: str, timeout_s: float = 240.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not event.wait(0.1):
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"{what} never happened (child exit {child.poll()}): {child.stderr.read()[-4000:]}")


def keys(s3_server, prefix: str) -> list[str]:
    pages = (
        s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=prefix)
    )
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


# ---- local store -----------------------------------------------------------------------------------
def staged_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / ".staging").glob("*/payload/*"))


def test_a_put_killed_mid_copy_is_invisible_and_the_rerun_stores_one_verified_copy(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.mkdir()
    for i in range(24):
        (payload / f"part-{i:02d}.bin").write_bytes(os.urandom(4 * MIB))
    root = tmp_path / "store"
    writer = start_child("put_local", str(root), str(payload))
    freeze_when(writer, lambda: staged_bytes(root) > 0)

    reader = LocalArtifactStore(root)
    assert staged_bytes(root) < 96 * MIB  # provably mid-copy
    assert not list(root.glob(f"blob/*/*{MANIFEST_SUFFIX}"))  # nothing a reader could find
    assert reader.remove_staging_leftovers() == []  # its writer is alive (stopped): its staging stays
    kill(writer)
    assert not list(root.glob(f"blob/*/*{MANIFEST_SUFFIX}"))
    assert staged_bytes(root) > 0  # the killed writer's partial copy …

    ref = reader.put_dir(payload, kind="blob")  # the re-run
    assert list((root / ".staging").iterdir()) == []  # … is gone with the re-run's first step
    reader.verify(ref)
    assert reader.exists(ref) and reader.ref_from_uri(reader.uri_for(ref)) == ref
    assert [p.name for p in root.glob("blob/*/*")] == ["payload", f"payload{MANIFEST_SUFFIX}"]


# ---- S3, multipart -----------------------------------------------------------------------------------
def test_a_multipart_upload_killed_between_parts_is_invisible_and_the_rerun_stores_one_copy(
    s3_server, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * PART + MIB))  # three parts
    prefix = f"sigkill-{uuid.uuid4().hex[:8]}"
    fault, held, release = hold_request(lambda method, path: method == "PUT" and "partNumber=2" in path)
    with FaultyProxy(s3_server.endpoint_url, fault) as proxy:
        writer = start_child(
            "put_s3", proxy.url, s3_server.bucket, prefix, str(tmp_path / "cache-w"), str(big)
        )
        wait_or_fail(held, writer, "the upload of part 2")
        os.killpg(writer.pid, signal.SIGSTOP)

        client = s3_server.client()
        uploads = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix).get("Uploads", [])
        assert len(uploads) == 1  # in progress: part 1 stored, part 2 on its way
        assert keys(s3_server, prefix) == []  # no object, no manifest: S3 shows nothing before completion
        reader = s3_store(s3_server.endpoint_url, s3_server.bucket, prefix, str(tmp_path / "cache-r"))
        expected = ArtifactRef("blob", hashlib.sha256(big.read_bytes()).hexdigest(), "big.bin")
        assert not reader.exists(expected)
        with pytest.raises(ArtifactNotFoundError):
            reader.fetch(expected)
        kill(writer)
        release.set()

    ref = reader.put_file(big, kind="blob")  # the re-run, straight to the server
    assert ref == expected
    # moto reports every upload as initiated in 2010, so the killed one is past the 24 h age: aborted
    assert client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix).get("Uploads", []) == []
    assert keys(s3_server, prefix) == [f"{prefix}/{ref.key}", f"{prefix}/{ref.manifest_key}"]
    assert reader.fetch(ref, verify=True).read_bytes() == big.read_bytes()


# ---- the assemble stage, as Prefect tasks with their result cache in the S3 store ----------------------
def run_until_assemble(teacher: str, text: str, out: str) -> None:
    """Child process: the flow `until_assemble` on the tiny teacher; writes its outcome's JSON to `out`."""
    from tests.flows.tiny_teacher import TinyTeacher

    recipe = TinyTeacher(Path(teacher), Path(text)).recipe()
    Path(out).write_text(json.dumps(until_assemble(recipe)))


def until_assemble(recipe) -> dict:
    """source → calibrate → plan → assemble as the convert flow runs them (cached Prefect tasks);
    returns each stage's Prefect state name and the checkpoint result."""
    from prefect import flow

    from moe2dense_platform.result_storage import ensure_result_storage
    from moe2dense_platform.runtime import Runtime
    from moe2dense_platform.tracking import parent_run
    from tasks.assemble import assemble_task
    from tasks.calibrate import calibrate_task
    from tasks.plan import plan_task
    from tasks.source import source_task

    @flow(name="until-assemble")
    def stages() -> dict:
        ensure_result_storage()
        runtime = Runtime.from_environment()
        location = runtime.settings.resolved_mlflow_artifact_location
        with parent_run(runtime.client, recipe, runtime.redactor, artifact_location=location) as parent:
            source = source_task(recipe.source, parent.run_id)
            calibration = calibrate_task(
                source, recipe.calibration, recipe.statistics, parent.run_id, return_state=True
            )
            plan = plan_task(source, calibration.result(), recipe.plan, parent.run_id, return_state=True)
            assembled = assemble_task(source, plan.result(), recipe.storage, parent.run_id, return_state=True)
            return {
                "states": {"calibrate": calibration.name, "plan": plan.name, "assemble": assembled.name},
                "checkpoint": assembled.result().model_dump(mode="json"),
            }

    return stages()


def stack_environment(
    home: Path, s3_server, endpoint_url: str, prefix: str, prefect_api_url: str
) -> dict[str, str]:
    from moe2dense_platform.local_stack import isolated_environment

    return isolated_environment(
        MOE2DENSE_HOME=str(home),
        MOE2DENSE_ARTIFACT_ROOT=f"s3://{s3_server.bucket}/{prefix}",
        MOE2DENSE_S3_ENDPOINT_URL=endpoint_url,
        MOE2DENSE_AWS_ACCESS_KEY_ID=s3_server.access_key_id,
        MOE2DENSE_AWS_SECRET_ACCESS_KEY=s3_server.secret_access_key,
        MOE2DENSE_PREFECT_API_URL=prefect_api_url,
        PREFECT_API_URL=prefect_api_url,
        PREFECT_HOME=str(home / "prefect"),
    )


def test_assemble_killed_during_its_upload_leaves_no_artifact_and_no_cache_entry_and_the_rerun_completes(
    s3_server, prefect_server, random_teacher, tmp_path: Path
) -> None:
    teacher, text = random_teacher
    prefix = f"assemble-kill-{uuid.uuid4().hex[:8]}"
    home, out = tmp_path / "home", tmp_path / "outcome.json"
    args = (str(teacher), str(text), str(out))
    fault, held, release = hold_request(lambda method, path: method == "PUT" and "/dense-model/" in path)
    with FaultyProxy(s3_server.endpoint_url, fault) as proxy:  # the endpoint is part of the cache keys
        env = stack_environment(home, s3_server, proxy.url, prefix, prefect_server)
        victim = start_child("run_until_assemble", *args, env=env)
        wait_or_fail(held, victim, "the upload of the assembled checkpoint")
        os.killpg(victim.pid, signal.SIGSTOP)
        frozen = keys(s3_server, prefix)
        kill(victim)
        release.set()
        results = f"{prefix}/{RESULTS_FOLDER}/"
        assert any("/plan/" in key for key in frozen)  # upstream stages are stored …
        assert not any(
            key.endswith(MANIFEST_SUFFIX) and "/dense-model/" in key for key in frozen
        )  # … not this
        assert not any(
            key.startswith(f"{results}moe2dense-assemble-") for key in frozen
        )  # nor its cache entry
        assert keys(s3_server, prefix) == frozen

        rerun = start_child("run_until_assemble", *args, env=env)  # the proxy passes everything now
        _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-4000:]
    outcome = json.loads(out.read_text())
    assert outcome["states"] == {"calibrate": "Cached", "plan": "Cached", "assemble": "Completed"}
    after = keys(s3_server, prefix)
    assert [k for k in after if k.startswith(f"{results}moe2dense-assemble-")] != []
    assert [k for k in after if k.endswith(MANIFEST_SUFFIX) and "/dense-model/" in k] == [
        f"{prefix}/dense-model/{outcome['checkpoint']['checkpoint_uri'].split('/dense-model/')[1]}{MANIFEST_SUFFIX}"
    ]
    store = s3_store(s3_server.endpoint_url, s3_server.bucket, prefix, str(tmp_path / "cache-r"))
    store.fetch(store.ref_from_uri(outcome["checkpoint"]["checkpoint_uri"]), verify=True)
