"""infra/README.md says only true things: every command in it is a real command of the installed programs
(moe2dense, prefect and mlflow parsed by themselves; compose services, files and image tags that exist),
its watch file is valid, and its settings Secret holds only variables the code reads."""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import yaml

from flows.watch_config import WatchConfig
from tests.infra.commands import PROGRAMS, assert_real_command
from tests.infra.stack_files import (
    COMPOSE,
    CPU_IMAGE,
    HUGGINGFACE_VARIABLES,
    IMAGE,
    IMAGE_HOME_IN_PROJECT,
    INFRA_README,
    ROOT,
    compose_model,
    settings_variables,
)

COMPOSE_SUBCOMMANDS = {"up", "down", "ps", "build", "exec", "run", "logs", "cp"}
COMPOSE_GLOBAL_OPTIONS_WITH_VALUE = {"-f", "--file", "--profile", "--env-file", "-p", "--project-name"}
COMPOSE_OPTIONS_WITH_VALUE = {"-e", "--env", "-u", "--user", "-w", "--workdir"}  # of exec / run


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", INFRA_README.read_text(encoding="utf-8"), re.M | re.S)


def shell_commands() -> Iterator[list[str]]:
    """Each command of the README's bash blocks as argv: continuations joined, comments dropped, `&&`
    split, leading `NAME=value` assignments dropped."""
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                command = tokens[: tokens.index("&&")] if "&&" in tokens else tokens
                tokens = tokens[len(command) + 1 :]
                while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):
                    command = command[1:]
                if command:
                    yield command


def check_inner(argv: list[str]) -> bool:
    """Check a command a container or pod runs; True when it was one of ours."""
    name = Path(argv[0]).name
    if name in PROGRAMS:
        assert_real_command([name, *argv[1:]])
        return name == "moe2dense"
    if name == "python" and argv[1:2] == ["-c"]:
        ast.parse(argv[2])
    return False


def check_compose(argv: list[str], services: set[str]) -> bool:
    """`docker compose …`: the repository's compose file, a real subcommand, existing services."""
    args, files, position = argv[2:], [], 0
    while args[position].startswith("-"):
        if args[position] in ("-f", "--file"):
            files.append(ROOT / args[position + 1])
        position += 2 if args[position] in COMPOSE_GLOBAL_OPTIONS_WITH_VALUE else 1
    assert files == [COMPOSE], argv
    subcommand, rest = args[position], args[position + 1 :]
    assert subcommand in COMPOSE_SUBCOMMANDS, argv
    if subcommand == "cp":
        assert rest[-1].split(":", 1)[0] in services, argv
        return False
    operands = []
    position = 0
    while position < len(rest):
        if rest[position].startswith("-"):
            position += 2 if rest[position] in COMPOSE_OPTIONS_WITH_VALUE else 1
            continue
        operands = rest[position:]
        break
    if subcommand in ("exec", "run"):
        assert operands[0] in services, argv
        return check_inner(operands[1:])
    assert set(operands) <= services, argv
    return False


def test_every_command_is_real() -> None:
    services = set(compose_model()["services"])
    ours = 0
    for argv in shell_commands():
        for token in argv[:-1] if argv[0] == "cp" else argv:  # files of this repository it reads exist
            for path in re.findall(r"(?:^|=)((?:infra|docker|configs)/[\w./-]+)", token):
                assert (ROOT / path).exists(), f"{' '.join(argv)}: {path}"
        if argv[:2] == ["docker", "compose"]:
            ours += check_compose(argv, services)
        elif argv[0] == "kubectl" and "--" in argv:
            ours += check_inner(argv[argv.index("--") + 1 :])
        elif argv[:2] == ["docker", "build"]:
            variant = next(arg.split("=", 1)[1] for arg in argv if arg.startswith("VARIANT="))
            tag = argv[argv.index("-t") + 1].rsplit("/", 1)[-1]
            assert tag == {"gpu": IMAGE, "cpu": CPU_IMAGE}[variant], argv
        else:
            ours += check_inner(argv)
    assert ours >= 10  # the extraction found the moe2dense commands


def test_image_tags_named_anywhere_are_this_versions() -> None:
    tags = set(re.findall(r"moe2dense-worker:[\w.\-]+", INFRA_README.read_text(encoding="utf-8")))
    assert tags == {IMAGE, CPU_IMAGE}


def test_the_watch_file_is_valid_where_the_image_puts_the_recipes() -> None:
    (block,) = [block for block in code_blocks("yaml") if "entries:" in block]
    in_checkout = block.replace(f"{IMAGE_HOME_IN_PROJECT}/", f"{ROOT}/")
    config = WatchConfig.model_validate(yaml.safe_load(in_checkout))
    assert config.entries and all(Path(entry.recipe).is_file() for entry in config.entries)


def test_the_settings_secret_holds_only_variables_the_code_reads() -> None:
    (block,) = code_blocks("ini")
    keys = {line.split("=", 1)[0] for line in block.splitlines() if line.strip()}
    assert keys <= settings_variables() | HUGGINGFACE_VARIABLES
    assert {"MOE2DENSE_ARTIFACT_ROOT", "MOE2DENSE_MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID"} <= keys
