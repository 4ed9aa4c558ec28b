"""Publishing a stage's output: ONE copy in the artifact store, MLflow records where it is.

    uri = publish_dir(runtime, run, folder, kind="dense-model", name="dense_model")
    uri = publish_text(runtime, run, plan_json, kind="plan", name="plan.json")
    record_inputs(run, runtime, stats=calibration.stats_uri)
    finish(run, "plan", result)

- every output is scanned for credentials once (Redactor.check_file / contains_secret: the copy that is
  uploaded is the copy that is scanned), hashed once and stored once, content-addressed
  (`<kind>/<sha256>/<name>`, moe2dense_platform/artifact_manifest.py); a second put of identical bytes stores nothing;
- the stage's MLflow run gets tags `moe2dense.output.<kind>.uri` and `moe2dense.output.<kind>.sha256`
  = the store's content address (so a tag value finds the object in the bucket), and inputs as
  `moe2dense.input.<name>.uri` / `.sha256`; large payloads (statistics, checkpoints) are never copied
  into MLflow; small text (plan JSON, evaluation JSON) is also logged as an MLflow artifact for browsing;
- `finish` sets the stage's declared lineage tags (tasks/stage.py) from its result.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from moe2dense_platform.artifact_manifest import ArtifactRef
from moe2dense_platform.redaction import CredentialLeakError
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.tracking import TAG_INPUT, TAG_OUTPUT, MLflowLogger
from tasks.stage import STAGES


def address_tags(prefix: str, name: str, uri: str, ref: ArtifactRef) -> dict[str, str]:
    """{`<prefix>.<name>.uri`: uri, `<prefix>.<name>.sha256`: the store's content address}."""
    return {f"{prefix}.{name}.uri": uri, f"{prefix}.{name}.sha256": ref.sha256}


def publish_dir(runtime: Runtime, run: MLflowLogger, path: Path, kind: str, name: str | None = None) -> str:
    """Scan, store once and record a folder (statistics, a checkpoint, a report); returns its store URI."""
    runtime.redactor.check_file(path)
    ref = runtime.store.put_dir(path, kind=kind, name=name)
    uri = runtime.store.uri_for(ref)
    run.set_tags(address_tags(TAG_OUTPUT, kind, uri, ref))
    return uri


def publish_text(runtime: Runtime, run: MLflowLogger, text: str, kind: str, name: str) -> str:
    """Scan, store once and record a small text document, also browsable in MLflow as `<kind>/<name>`."""
    if runtime.redactor.contains_secret(text):
        raise CredentialLeakError(f"{kind}/{name} contains a credential; refusing to store it")
    ref = runtime.store.put_bytes(text.encode(), kind=kind, name=name)
    uri = runtime.store.uri_for(ref)
    run.log_text(text, f"{kind}/{name}")
    run.set_tags(address_tags(TAG_OUTPUT, kind, uri, ref))
    return uri


def record_inputs(run: MLflowLogger, runtime: Runtime, **uris: str) -> None:
    """Tag the stage run with each input artifact's URI and store content address (`name=uri`)."""
    tags: dict[str, str] = {}
    for name, uri in uris.items():
        tags.update(address_tags(TAG_INPUT, name, uri, runtime.store.ref_from_uri(uri)))
    run.set_tags(tags)


def finish(run: MLflowLogger, stage_name: str, result: BaseModel) -> None:
    """Set stage `stage_name`'s declared lineage tags (tasks/stage.py) from its result on its MLflow run."""
    run.set_tags(STAGES[stage_name].lineage_tags(result))
