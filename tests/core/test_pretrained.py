"""Remote code is off everywhere: one setting (moe2dense_core/pretrained.py), used by every load.

A checkpoint whose config.json names its own Python code (`auto_map`) is the attack: transformers'
default asks on the terminal and runs the code on "y". Each loader runs in a fresh interpreter whose
stdin answers "y"; the probe code would write a marker file when executed.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import moe2dense_core

PROJECT_ROOT = Path(moe2dense_core.__file__).resolve().parents[1]
LOADER_FILE = PROJECT_ROOT / "moe2dense_core" / "pretrained.py"
AUTO_CLASSES = {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModel"}


@pytest.fixture
def remote_code_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(folder, marker): config and tokenizer config whose `auto_map` names code writing `marker` when run."""
    folder, marker = tmp_path / "custom", tmp_path / "EXECUTED"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "moe2dense_probe", "auto_map": {"AutoConfig": "probe_code.ProbeConfig"}})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["probe_code.ProbeTokenizer", None]}})
    )
    (folder / "probe_code.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
        "from transformers import PretrainedConfig, PreTrainedTokenizerFast\n\n\n"
        "class ProbeConfig(PretrainedConfig):\n    model_type = 'moe2dense_probe'\n\n\n"
        "class ProbeTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    return folder, marker


def load_answering_yes(statement: str, folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", statement.format(folder=str(folder))],
        input="y\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        timeout=120,
    )


def test_transformers_default_runs_remote_code_when_the_terminal_says_yes(remote_code_checkpoint, tmp_path):
    """The danger the loaders exist for (if this stops holding, transformers changed its default)."""
    folder, marker = remote_code_checkpoint
    done = load_answering_yes(
        "from transformers import AutoConfig; AutoConfig.from_pretrained({folder!r})", folder, tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert marker.read_text() == "remote code ran"


@pytest.mark.parametrize("loader", ["load_config", "load_tokenizer", "load_causal_lm"])
def test_every_loader_refuses_remote_code_even_when_the_terminal_says_yes(
    remote_code_checkpoint, tmp_path: Path, loader: str
) -> None:
    folder, marker = remote_code_checkpoint
    done = load_answering_yes(
        f"from moe2dense_core.pretrained import {loader}; {loader}({{folder!r}})", folder, tmp_path
    )
    assert done.returncode != 0 and "contains custom code" in done.stderr, done.stderr[-2000:]
    assert not marker.exists()


def test_no_source_file_loads_a_pretrained_object_around_the_loaders() -> None:
    """`Auto*.from_pretrained(...)` appears only in moe2dense_core/pretrained.py (one setting)."""
    offenders = []
    for folder in ("moe2dense_core", "tasks", "flows", "bench"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            if path == LOADER_FILE:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in AUTO_CLASSES
                ):
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}")
    assert offenders == []
