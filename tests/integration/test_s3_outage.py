"""The S3 endpoint goes down in the middle of a flow: the stage fails after a bounded number of tries
with an error naming the endpoint and the artifact; once the endpoint is back, running the stages
again completes, and the bucket holds what it held plus the new artifact once (nothing lost, nothing
duplicated, content addresses unchanged).

The outage is real: the stages talk to moto through the faulty proxy (tests/integration/faulty_proxy.py),
which from the first request for the assembled checkpoint on closes every connection unanswered until
the test brings it back. Stages run in this process (`.fn`, as tests/integration/test_distill_sigkill.py
runs them) under an MLflow parent run in a SQLite file.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from moe2dense_platform.artifact_manifest import MANIFEST_SUFFIX, StorageError
from moe2dense_platform.local_stack import SERVER_PREFIXES
from tests.integration.faulty_proxy import DROP, PASS, FaultyProxy
from tests.integration.test_upload_sigkill import keys

pytestmark = pytest.mark.slow

ATTEMPTS = 3  # MOE2DENSE_STORAGE_MAX_ATTEMPTS below, each one request (botocore: 1 attempt)


def run_stages(recipe) -> dict:
    """source → calibrate → plan → assemble under one MLflow parent run; their results by stage name."""
    from moe2dense_platform.runtime import Runtime
    from moe2dense_platform.tracking import parent_run
    from tasks.assemble import assemble_task
    from tasks.calibrate import calibrate_task
    from tasks.plan import plan_task
    from tasks.source import source_task

    runtime = Runtime.from_environment()
    location = runtime.settings.resolved_mlflow_artifact_location
    with parent_run(runtime.client, recipe, runtime.redactor, artifact_location=location) as parent:
        source = source_task.fn(recipe.source)
        calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent.run_id)
        plan = plan_task.fn(source, calibration, recipe.plan, parent.run_id)
        results = {"calibrate": calibration, "plan": plan}
        results["assemble"] = assemble_task.fn(source, plan, recipe.storage, parent.run_id)
    return results


def test_s3_down_mid_flow_fails_bounded_and_named_then_the_rerun_completes_with_nothing_lost_or_doubled(
    s3_server, random_teacher, tmp_path: Path, monkeypatch
) -> None:
    from tests.flows.tiny_teacher import TinyTeacher

    down = threading.Event()

    def outage(n: int, method: str, path: str) -> str:
        if "/dense-model/" in path:
            down.set()
        return DROP if down.is_set() else PASS

    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    recipe = TinyTeacher(*random_teacher).recipe()
    with FaultyProxy(s3_server.endpoint_url, outage) as proxy:
        for name in [n for n in os.environ if n.startswith(SERVER_PREFIXES)]:
            monkeypatch.delenv(name)
        for name, value in {
            "MOE2DENSE_HOME": str(tmp_path / "home"),
            "MOE2DENSE_ARTIFACT_ROOT": f"s3://{s3_server.bucket}/{prefix}",
            "MOE2DENSE_S3_ENDPOINT_URL": proxy.url,
            "MOE2DENSE_AWS_ACCESS_KEY_ID": s3_server.access_key_id,
            "MOE2DENSE_AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
            "MOE2DENSE_S3_BOTOCORE_TOTAL_ATTEMPTS": "1",
            "MOE2DENSE_STORAGE_MAX_ATTEMPTS": str(ATTEMPTS),
            "MOE2DENSE_STORAGE_BACKOFF_S": "0.05",
        }.items():
            monkeypatch.setenv(name, value)

        with pytest.raises(StorageError) as failure:
            run_stages(recipe)
        before = keys(s3_server, prefix)
        dropped = [path for _, path, action in proxy.requests if action == DROP]
        assert len(dropped) == ATTEMPTS and all("/dense-model/" in path for path in dropped), dropped
        assert proxy.url in str(failure.value) and "/dense-model/" in str(failure.value), failure.value
        assert not any("/dense-model/" in key for key in before)
        assert any("/plan/" in key for key in before) and any("/stats/" in key for key in before), before

        proxy.fault = lambda n, method, path: PASS  # the endpoint is back
        first_plan_keys = [key for key in before if "/plan/" in key]
        rerun = run_stages(recipe)

    after = keys(s3_server, prefix)
    assert set(before) < set(after)  # nothing lost
    added = sorted(set(after) - set(before))
    assert all("/dense-model/" in key for key in added), added  # the only new artifact, once
    assert [key for key in added if key.endswith(MANIFEST_SUFFIX)] == [
        f"{prefix}/{rerun['assemble'].checkpoint_uri.split(f'{prefix}/', 1)[1]}{MANIFEST_SUFFIX}"
    ]
    assert [key for key in after if "/plan/" in key] == first_plan_keys  # content address unchanged
    assert rerun["plan"].plan_uri.split(f"{prefix}/", 1)[1] in first_plan_keys[0]
