"""The deployment files (infra/, docker/) read as data, for the tests in this folder: no Docker engine and
no cluster here, so each file is checked by parsing it and by the real tools that run without one."""

from __future__ import annotations

import os
import re
import shutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from moe2dense_platform.ecosystem_env import ECOSYSTEM_VARIABLES
from moe2dense_platform.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "infra" / "compose.yaml"
ENV_EXAMPLE = ROOT / "infra" / ".env.example"
INFRA_README = ROOT / "infra" / "README.md"
WATCH_WORKER = ROOT / "infra" / "kubernetes" / "watch-worker.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile.worker"
DOCKERIGNORE = ROOT / ".dockerignore"
TEST_SCRIPT = ROOT / "scripts" / "test.sh"

IMAGE = f"moe2dense-worker:{version('moe2dense')}"
"""The GPU variant of docker/Dockerfile.worker, as the Docker and Kubernetes job templates name it."""
CPU_IMAGE = f"{IMAGE}-cpu"
IMAGE_HOME_IN_PROJECT = Path("/opt/moe2dense")
"""Where the Dockerfile puts the project (its WORKDIR)."""

HUGGINGFACE_VARIABLES = {"HF_TOKEN"}
"""Read by huggingface_hub in the flow runs, not by the settings."""

# ${NAME}, ${NAME:-default}, ${NAME:?error} as compose interpolates them; `$$` is a literal `$`.
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def env_example() -> dict[str, str]:
    """infra/.env.example as {variable: placeholder value}."""
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose_variables() -> set[str]:
    """Every variable infra/compose.yaml interpolates."""
    return {m["name"] for m in INTERPOLATION.finditer(COMPOSE.read_text(encoding="utf-8")) if m["name"]}


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """`node` with compose's variable syntax replaced from `env` (an unset required variable raises)."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return INTERPOLATION.sub(value, node)


def compose_model(env: dict[str, str] | None = None) -> dict[str, Any]:
    """infra/compose.yaml as compose resolves it with `env` (default: infra/.env.example)."""
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return interpolate(raw, env_example() if env is None else env)


def program(name: str) -> Path | None:
    """An executable installed beside this Python (the test setup's .venv/bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    return Path(found) if found else None


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("#")
        ),
    )
    pairs = [line.strip().split(None, 1) for line in joined.splitlines() if line.strip()]
    return [(pair[0].upper(), pair[1] if len(pair) > 1 else "") for pair in pairs]


def copied_sources() -> dict[str, str]:
    """{source: destination} of the Dockerfile's COPY instructions (destinations relative to WORKDIR)."""
    copies = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "COPY":
            *sources, destination = arguments.split()
            for source in sources:
                copies[source] = (
                    str(Path(destination) / Path(source).name) if len(sources) > 1 else destination
                )
    return copies


def settings_variables() -> set[str]:
    """Every variable moe2dense_platform/settings.py reads: MOE2DENSE_<FIELD> and the ecosystem's own (ecosystem_env)."""
    own = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    return own | {name for names in ECOSYSTEM_VARIABLES.values() for name in names}
