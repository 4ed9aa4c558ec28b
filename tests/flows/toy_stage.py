"""A toy stage in one file, as README "Add a stage" says: declare it, publish its output, finish.
Importing this module is the one import that adds it (tests/flows/test_toy_stage.py)."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict

from moe2dense_platform.runtime import Runtime
from tasks.publish import finish, publish_text
from tasks.stage import stage

TAG_TOY_DIGEST = "moe2dense.toy_digest"


class ToyResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    text_uri: str
    text_digest: str
    mlflow_run_id: str


@stage("toy", result=ToyResult, key=lambda p: [p["text"]], lineage={TAG_TOY_DIGEST: "text_digest"})
def toy_task(text: str, parent_run_id: str) -> ToyResult:
    runtime = Runtime.from_environment()
    with runtime.stage(parent_run_id, "toy") as run:
        uri = publish_text(runtime, run, text, kind="toy", name="text.txt")
        result = ToyResult(
            text_uri=uri, text_digest=hashlib.sha256(text.encode()).hexdigest(), mlflow_run_id=run.run_id
        )
        finish(run, "toy", result)
        return result
