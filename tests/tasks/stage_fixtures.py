"""Shared by the stage-task unit tests: a tiny trained teacher and an embedded-default home (local
artifact folder, MLflow SQLite) with an open parent run, for calling tasks through `.fn`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.flows.tiny_teacher import TinyTeacher, make_tiny_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> TinyTeacher:
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def parent_run_id(tmp_path_factory):
    """Embedded settings in a temporary home and an MLflow parent run to nest stage runs under."""
    from moe2dense_platform.recipe_io import load_recipe
    from moe2dense_platform.runtime import Runtime
    from moe2dense_platform.tracking import parent_run

    home = tmp_path_factory.mktemp("home")
    previous = os.environ.get("MOE2DENSE_HOME")
    os.environ["MOE2DENSE_HOME"] = str(home)
    runtime = Runtime.from_environment()
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    try:
        with parent_run(
            runtime.client,
            recipe,
            runtime.redactor,
            artifact_location=runtime.settings.resolved_mlflow_artifact_location,
        ) as run:
            yield run.run_id
    finally:
        if previous is None:
            os.environ.pop("MOE2DENSE_HOME", None)
        else:
            os.environ["MOE2DENSE_HOME"] = previous
