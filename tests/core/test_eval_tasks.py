"""Local task definitions and EvalConfig: formats, YAML contents, and refusals before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from moe2dense_core.errors import Moe2DenseError
from moe2dense_core.evaluate import (
    PAPER_HUB_TASKS,
    SHARED_EVAL_FORMATS,
    EvalConfig,
    TaskSpec,
    shared_eval_tasks,
)
from moe2dense_core.evaluate.lm_eval_tasks import validate_local_task, write_task_yamls


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MC_ROWS = [{"query": f"q{i}", "choices": ["a", "b", "c"], "gold": i % 3} for i in range(4)]


def test_default_config_is_the_papers_hub_suite() -> None:
    config = EvalConfig()
    assert config.tasks == PAPER_HUB_TASKS
    assert {t.name: t.num_fewshot for t in config.tasks} == {
        "winogrande": 5,
        "hellaswag": 10,
        "arc_easy": 25,
        "arc_challenge": 25,
        "mmlu": 5,
    }
    assert not any(t.is_local for t in config.tasks)


def test_shared_sets_map_to_their_formats(shared_data: Path) -> None:
    specs = shared_eval_tasks(shared_data / "eval", num_fewshot={"winogrande": 5})
    assert [s.name for s in specs] == list(SHARED_EVAL_FORMATS)
    for spec in specs:
        assert spec.format == SHARED_EVAL_FORMATS[spec.name]
        assert spec.data_file.is_absolute() and spec.data_file.is_file()
        assert spec.num_fewshot == (5 if spec.name == "winogrande" else 0)
        assert validate_local_task(spec) > 0
    with pytest.raises(Moe2DenseError, match="unknown shared eval sets.*hellaswag"):
        shared_eval_tasks(shared_data / "eval", names=["hellaswag"])


def test_yamls_use_absolute_paths_and_never_shadow_hub_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jsonl(tmp_path / "mc.jsonl", MC_ROWS)
    shots = _jsonl(tmp_path / "shots.jsonl", MC_ROWS)
    monkeypatch.chdir(tmp_path)
    specs = [
        TaskSpec(name="mine", format="multiple_choice", data_file=Path("mc.jsonl"), num_fewshot=3),
        TaskSpec(
            name="mine_shots", format="multiple_choice", data_file=data, fewshot_file=Path("shots.jsonl")
        ),
        TaskSpec(name="hellaswag", num_fewshot=10),
    ]
    paths = write_task_yamls(specs, tmp_path / "out", datasets_cache="cache")
    assert [p.name for p in paths] == ["moe2dense_mine.yaml", "moe2dense_mine_shots.yaml"]
    first, second = (yaml.safe_load(p.read_text()) for p in paths)
    assert first["task"] == "moe2dense_mine"
    assert first["dataset_kwargs"]["data_files"] == {"test": str(data)}
    assert first["dataset_kwargs"]["cache_dir"] == str(tmp_path / "cache")
    assert first["fewshot_split"] == "test" and first["num_fewshot"] == 3
    assert second["dataset_kwargs"]["data_files"]["train"] == str(shots)
    assert second["fewshot_split"] == "train"
    assert [m["metric"] for m in first["metric_list"]] == ["acc", "acc_norm"]


def test_formats_score_the_right_metrics(tmp_path: Path) -> None:
    wino = _jsonl(
        tmp_path / "w.jsonl", [{"context_options": ["A x", "B x"], "continuation": "y.", "gold": 0}] * 2
    )
    cloze = _jsonl(tmp_path / "c.jsonl", [{"context": "a b", "continuation": "c"}])
    specs = [
        TaskSpec(name="w", format="partial_context", data_file=wino),
        TaskSpec(name="c", format="cloze", data_file=cloze),
    ]
    w, c = (
        yaml.safe_load(p.read_text())
        for p in write_task_yamls(specs, tmp_path / "out", datasets_cache=tmp_path)
    )
    assert (w["doc_to_text"], w["doc_to_choice"], w["doc_to_target"]) == (
        "gold",
        "context_options",
        "continuation",
    )
    assert [m["metric"] for m in w["metric_list"]] == ["acc"]
    assert c["output_type"] == "loglikelihood"
    assert [m["metric"] for m in c["metric_list"]] == ["acc", "perplexity"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"choices": ["a", "b"], "gold": 0}], r"mc\.jsonl:1: missing field 'query'"),
        (
            [MC_ROWS[0], {"query": "q", "choices": ["a", "b"], "gold": 2}],
            r"mc\.jsonl:2: field 'gold'=2 is outside \[0, 2\)",
        ),
        ([{"query": "q", "choices": ["a"], "gold": 0}], "at least 2 strings"),
        ([{"query": "q", "choices": ["a", "b"], "gold": "1"}], "'gold' must be int, got str"),
        ([{"query": "q", "choices": ["a", "b"], "gold": True}], "'gold' must be int, got bool"),
    ],
)
def test_bad_rows_are_refused_with_file_line_and_field(
    tmp_path: Path, rows: list[dict], message: str
) -> None:
    spec = TaskSpec(name="t", format="multiple_choice", data_file=_jsonl(tmp_path / "mc.jsonl", rows))
    with pytest.raises(Moe2DenseError, match=message):
        validate_local_task(spec)


def test_a_line_that_is_not_utf8_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(MC_ROWS[0]).encode() + b"\n" + '{"query": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(Moe2DenseError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        validate_local_task(TaskSpec(name="t", format="multiple_choice", data_file=path))


HELLASWAG_STYLE = [
    {"query": "He opened the door", "choices": [", then left.", "; then slept."], "gold": 0}
] * 2
WINO_ROWS = [{"context_options": ["Ann saw Bo", "Bo saw Ann"], "continuation": ", who waved.", "gold": 0}] * 2


@pytest.mark.parametrize(("delimiter", "joined"), [(None, " "), ("", ""), ("\n", "\n")])
def test_lm_eval_scores_query_delimiter_choice_with_the_tasks_delimiter(
    tmp_path: Path, delimiter: str | None, joined: str
) -> None:
    """The requests lm-eval itself builds from the generated YAMLs (no model needed): the default
    stays one space; a task may choose its own (e.g. "" for choices that bring their punctuation)."""
    from lm_eval.tasks import TaskManager

    chosen = {} if delimiter is None else {"target_delimiter": delimiter}
    specs = [
        TaskSpec(
            name="hs",
            format="multiple_choice",
            data_file=_jsonl(tmp_path / "hs.jsonl", HELLASWAG_STYLE),
            **chosen,
        ),
        TaskSpec(
            name="wino", format="partial_context", data_file=_jsonl(tmp_path / "w.jsonl", WINO_ROWS), **chosen
        ),
    ]
    write_task_yamls(specs, tmp_path / "yamls", datasets_cache=tmp_path / "datasets")
    manager = TaskManager(include_path=str(tmp_path / "yamls"), include_defaults=False)
    requests = {}
    for name, task in manager.load(["moe2dense_hs", "moe2dense_wino"])["tasks"].items():
        task.build_all_requests(limit=1, rank=0, world_size=1)
        requests[name] = [instance.arguments for instance in task.instances]
    assert requests["moe2dense_hs"] == [
        ("He opened the door", f"{joined}, then left."),
        ("He opened the door", f"{joined}; then slept."),
    ]
    assert requests["moe2dense_wino"] == [
        ("Ann saw Bo", f"{joined}, who waved."),
        ("Bo saw Ann", f"{joined}, who waved."),
    ]


def test_bad_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Moe2DenseError, match="does not exist"):
        validate_local_task(TaskSpec(name="t", format="cloze", data_file=tmp_path / "absent.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"context": "a",\n')
    with pytest.raises(Moe2DenseError, match=r"broken\.jsonl:1: not valid JSON"):
        validate_local_task(TaskSpec(name="t", format="cloze", data_file=tmp_path / "broken.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(Moe2DenseError, match="holds no examples"):
        validate_local_task(TaskSpec(name="t", format="cloze", data_file=tmp_path / "empty.jsonl"))


def test_more_shots_than_the_pool_offers_is_refused(tmp_path: Path) -> None:
    spec = TaskSpec(
        name="t", format="multiple_choice", data_file=_jsonl(tmp_path / "mc.jsonl", MC_ROWS), num_fewshot=4
    )
    with pytest.raises(Moe2DenseError, match="num_fewshot=4 but .*mc.jsonl offers only 3"):
        validate_local_task(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "format": "cloze"}, "needs both format and data_file"),
        ({"name": "x", "data_file": "a.jsonl"}, "needs both format and data_file"),
        ({"name": "x", "fewshot_file": "a.jsonl"}, "local tasks only"),
        ({"name": "has space"}, "must match"),
        ({"name": "x", "num_fewshot": -1}, "greater than or equal to 0"),
        ({"name": "x", "format": "free_text", "data_file": "a.jsonl"}, "format"),
        (
            {"name": "x", "format": "cloze", "data_file": "a.jsonl", "target_delimiter": ""},
            "target_delimiter",
        ),
        ({"name": "hellaswag", "target_delimiter": ""}, "target_delimiter applies to local"),
    ],
)
def test_task_spec_refuses_inconsistent_fields(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TaskSpec(**kwargs)


def test_eval_config_refuses_duplicates_unknown_fields_and_empty_task_lists() -> None:
    with pytest.raises(ValidationError, match="repeated: \\['arc_easy'\\]"):
        EvalConfig(tasks=(TaskSpec(name="arc_easy"), TaskSpec(name="arc_easy", num_fewshot=3)))
    with pytest.raises(ValidationError, match="at least one task"):
        EvalConfig(tasks=())
    with pytest.raises(ValidationError, match="extra"):
        EvalConfig(shots=5)
