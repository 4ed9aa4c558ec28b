"""Local lm-eval task definitions, written as YAML at run time with absolute data paths.

lm-eval resolves relative `data_files` against the working directory, not the YAML's folder, so
the YAMLs are generated into a (temporary) folder for each run and handed to
`TaskManager(include_path=...)`. Each local task is registered as `moe2dense_<name>` so it never
shadows a hub task of the same name (e.g. the local `winogrande` vs lm-eval's own).

Formats (see config.py) and their lm-eval mapping [defined here]:
  multiple_choice  doc_to_text=query, doc_to_choice=choices, doc_to_target=gold; acc and acc_norm
                   (acc_norm: log-likelihood divided by the choice's length in characters);
                   scored text: query + target_delimiter + choice.
  partial_context  doc_to_text=gold (an int: lm-eval's "multiple inputs" mode), doc_to_choice=
                   context_options, doc_to_target=continuation; acc only (every option scores the
                   same continuation, so there is nothing to length-normalise); scored text:
                   context option + target_delimiter + continuation.
  cloze            loglikelihood of " " + continuation after context; acc (= continuation is the
                   greedy completion) and perplexity of the continuation.
Few-shot examples come from fewshot_file when given, else from data_file with the question being
asked excluded (lm-eval's `fewshot_split` equal to the test split).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate.config import DELIMITED_FORMATS, LocalFormat, TaskSpec
from moe2dense_core.io.atomic import atomic_write_text
from moe2dense_core.shared_data import shared_data_dir

LOCAL_TASK_VERSION = 1.0
"""Bump when the generated YAML changes what is scored; recorded as the task version in results."""

REGISTERED_PREFIX = "moe2dense_"

SHARED_EVAL_FORMATS: dict[str, LocalFormat] = {
    "piqa": "multiple_choice",
    "openbook_qa": "multiple_choice",
    "copa": "multiple_choice",
    "boolq": "multiple_choice",
    "arc_easy": "multiple_choice",
    "arc_challenge": "multiple_choice",
    "winogrande": "partial_context",
    "lambada_openai": "cloze",
}
"""The eight sets in the shared data folder's eval/ (file `<name>.jsonl`) and their formats."""

_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
_PERPLEXITY = {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}

_FORMAT_FIELDS: dict[LocalFormat, dict[str, Any]] = {
    "multiple_choice": {
        "output_type": "multiple_choice",
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "metric_list": [_ACC, _ACC_NORM],
    },
    "partial_context": {
        "output_type": "multiple_choice",
        "doc_to_text": "gold",
        "doc_to_choice": "context_options",
        "doc_to_target": "continuation",
        "metric_list": [_ACC],
    },
    "cloze": {
        "output_type": "loglikelihood",
        "doc_to_text": "context",
        "doc_to_target": "{{' ' + continuation}}",
        "metric_list": [_ACC, _PERPLEXITY],
    },
}


def shared_eval_tasks(
    eval_dir: str | Path | None = None,
    *,
    num_fewshot: int | Mapping[str, int] = 0,
    names: Iterable[str] | None = None,
) -> tuple[TaskSpec, ...]:
    """TaskSpecs for the shared eval sets (default: all eight, in SHARED_EVAL_FORMATS order).

    eval_dir: folder holding `<name>.jsonl` (default: `<shared data>/eval`). num_fewshot: one
    count for every task, or per task name (missing names get 0).
    """
    folder = Path(eval_dir) if eval_dir is not None else shared_data_dir() / "eval"
    chosen = list(SHARED_EVAL_FORMATS) if names is None else list(names)
    unknown = [n for n in chosen if n not in SHARED_EVAL_FORMATS]
    if unknown:
        raise Moe2DenseError(f"unknown shared eval sets {unknown}; known: {sorted(SHARED_EVAL_FORMATS)}")
    shots = num_fewshot if isinstance(num_fewshot, Mapping) else dict.fromkeys(chosen, num_fewshot)
    return tuple(
        TaskSpec(
            name=n,
            num_fewshot=shots.get(n, 0),
            format=SHARED_EVAL_FORMATS[n],
            data_file=(folder / f"{n}.jsonl").resolve(),
        )
        for n in chosen
    )


def registered_name(spec: TaskSpec) -> str:
    """The name lm-eval knows the task by: moe2dense_<name> for local tasks, the name itself for hub tasks."""
    return f"{REGISTERED_PREFIX}{spec.name}" if spec.is_local else spec.name


def validate_local_task(spec: TaskSpec) -> int:
    """Check every row of the task's data (and few-shot) file against its format; return the row count.

    Raises Moe2DenseError naming the file, line and field at fault: missing file, bad JSON, a
    missing or mistyped field, gold out of range, an empty file, or too few rows for the shots.
    """
    if spec.format is None or spec.data_file is None:
        raise Moe2DenseError(f"task {spec.name!r} is a hub task; only local tasks have files to validate")
    rows = _validate_file(spec.data_file, spec.format, spec.name)
    pool = (
        rows - 1 if spec.fewshot_file is None else _validate_file(spec.fewshot_file, spec.format, spec.name)
    )
    if spec.num_fewshot > pool:
        source = spec.fewshot_file or spec.data_file
        raise Moe2DenseError(
            f"task {spec.name!r}: num_fewshot={spec.num_fewshot} but {source} offers only {pool} few-shot examples"
        )
    return rows


def write_task_yamls(
    specs: Iterable[TaskSpec], out_dir: str | Path, *, datasets_cache: str | Path
) -> list[Path]:
    """Write one lm-eval YAML per local task into out_dir (atomically); return their paths.

    datasets_cache: the `datasets` cache folder lm-eval's `load_dataset` uses for these files
    (pass a per-run temporary folder to leave the user's Hugging Face cache untouched).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in specs:
        if not spec.is_local:
            continue
        path = out / f"{registered_name(spec)}.yaml"
        atomic_write_text(
            path, yaml.safe_dump(task_yaml(spec, datasets_cache=datasets_cache), sort_keys=False)
        )
        written.append(path)
    return written


def task_yaml(spec: TaskSpec, *, datasets_cache: str | Path) -> dict[str, Any]:
    """The lm-eval task definition of one local task, as a YAML-ready dict with absolute paths."""
    if spec.format is None or spec.data_file is None:
        raise Moe2DenseError(f"task {spec.name!r} is a hub task; lm-eval already defines it")
    data_files = {"test": str(Path(spec.data_file).resolve())}
    definition: dict[str, Any] = {
        "task": registered_name(spec),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files, "cache_dir": str(Path(datasets_cache).resolve())},
        "test_split": "test",
    }
    if spec.fewshot_file is not None:
        data_files["train"] = str(Path(spec.fewshot_file).resolve())
        definition["training_split"] = "train"
        definition["fewshot_split"] = "train"
    else:
        definition["fewshot_split"] = "test"
    definition["num_fewshot"] = spec.num_fewshot
    definition.update(_FORMAT_FIELDS[spec.format])
    if spec.format in DELIMITED_FORMATS:
        definition["target_delimiter"] = spec.target_delimiter
    definition["metadata"] = {"version": LOCAL_TASK_VERSION}
    return definition


def _validate_file(path: Path, fmt: LocalFormat, task: str) -> int:
    path = Path(path)
    if not path.is_file():
        raise Moe2DenseError(f"task {task!r}: data file {path} does not exist")
    rows = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Moe2DenseError(
                    f"{path}:{line_no}: not valid UTF-8 ({exc.reason} at byte {exc.start} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise Moe2DenseError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise Moe2DenseError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            _check_row(row, fmt, f"{path}:{line_no}")
            rows += 1
    if rows == 0:
        raise Moe2DenseError(f"task {task!r}: data file {path} holds no examples")
    return rows


def _check_row(row: dict[str, Any], fmt: LocalFormat, where: str) -> None:
    def field(name: str, kind: type) -> Any:
        if name not in row:
            raise Moe2DenseError(f"{where}: missing field {name!r} required by the {fmt} format")
        value = row[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Moe2DenseError(
                f"{where}: field {name!r} must be {kind.__name__}, got {type(value).__name__}"
            )
        return value

    if fmt == "cloze":
        field("context", str)
        field("continuation", str)
        return
    options_field = "choices" if fmt == "multiple_choice" else "context_options"
    field("query" if fmt == "multiple_choice" else "continuation", str)
    options = field(options_field, list)
    if len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise Moe2DenseError(f"{where}: field {options_field!r} must be a list of at least 2 strings")
    gold = field("gold", int)
    if not 0 <= gold < len(options):
        raise Moe2DenseError(
            f"{where}: field 'gold'={gold} is outside [0, {len(options)}) for {options_field!r}"
        )
