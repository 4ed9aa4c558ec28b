"""moe2dense_platform/caching.py: keys change exactly when what a stage's output depends on changes — the library
code, the data's content (never its path), upstream digests, parameters and the artifact store."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from moe2dense_core.distill.config import DistillConfig
from moe2dense_core.evaluate.config import EvalConfig, TaskSpec
from moe2dense_core.plan import PlanConfig
from moe2dense_platform import caching
from moe2dense_platform.caching import LIBRARY_FOLDERS, library_digest
from moe2dense_platform.corpus import CorpusSpec
from moe2dense_platform.recipe import (
    CalibrationConfig,
    DistillationConfig,
    EvaluationConfig,
    SourceConfig,
    StatisticsConfig,
    StorageConfig,
)
from tests.tasks.declared_stages import STAGES

source_key, calibrate_key, plan_key, assemble_key = (
    STAGES[n].key for n in ("source", "calibrate", "plan", "assemble")
)
distill_key, evaluate_key, report_key, register_key = (
    STAGES[n].key for n in ("distill", "evaluate", "report", "register")
)

ANIMAL_TEXT = "\n\n".join(f"The cat number {i} sat near the dog and looked at the bird." for i in range(200))


@pytest.fixture(autouse=True)
def local_settings(tmp_path, monkeypatch):
    """Keys read the artifact store from the settings: a temporary home, no other store configured."""
    monkeypatch.setenv("MOE2DENSE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOE2DENSE_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("MOE2DENSE_SETTINGS_FILE", raising=False)


def write_text(path, text=ANIMAL_TEXT):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def data_keys(text, task_file=None):
    """{stage: key} of the stages that read data, for a corpus file and a local downstream task file."""
    data = CorpusSpec(source="files", paths=(text,), heldout_fraction=0.2)
    source = SimpleNamespace(snapshot_digest="a" * 64)
    downstream = None
    if task_file is not None:
        downstream = EvalConfig(tasks=(TaskSpec(name="toy", format="cloze", data_file=task_file),), limit=4)
    parameters = {
        "calibrate": (
            calibrate_key,
            {"source": source, "calibration": CalibrationConfig(data=data), "statistics": StatisticsConfig()},
        ),
        "distill": (
            distill_key,
            {
                "source": source,
                "student": SimpleNamespace(checkpoint_digest="b" * 64),
                "distillation": DistillationConfig(data=data, train=DistillConfig(max_steps=4)),
            },
        ),
        "evaluate": (
            evaluate_key,
            {
                "checkpoint": SimpleNamespace(checkpoint_digest="b" * 64),
                "evaluation": EvaluationConfig(perplexity_data=data, downstream=downstream),
            },
        ),
    }
    return {stage: (key(None, p), key.payload(p)) for stage, (key, p) in parameters.items()}


def all_keys(text):
    """{stage: key} of every stage key, for realistic parameters."""
    keys = {stage: key for stage, (key, _) in data_keys(text).items()}
    source = SimpleNamespace(snapshot_digest="a" * 64)
    checkpoint = SimpleNamespace(checkpoint_digest="c" * 64)
    keys["source"] = source_key(None, {"source": SourceConfig(model="org/name", revision="d" * 40)})
    keys["plan"] = plan_key(
        None, {"source": source, "calibration": SimpleNamespace(stats_digest="e" * 64), "plan": PlanConfig()}
    )
    keys["assemble"] = assemble_key(
        None, {"source": source, "plan": SimpleNamespace(plan_digest="f" * 64), "storage": StorageConfig()}
    )
    keys["report"] = report_key(None, {"recipe_digest": "0" * 64, "results": {"ppl": 12.5}})
    registered = SimpleNamespace(model="org/name", revision="d" * 40, snapshot_digest="a" * 64)
    keys["register"] = register_key(
        None, {"source": registered, "checkpoint": checkpoint, "model_name": "dense"}
    )
    return keys


def test_plan_key_depends_on_stats_snapshot_and_config_only():
    stats, source = SimpleNamespace(stats_digest="s" * 64), SimpleNamespace(snapshot_digest="a" * 64)

    def key(**changes):
        parameters = {"source": source, "calibration": stats, "plan": PlanConfig(), "parent_run_id": "a"}
        return plan_key(None, {**parameters, **changes})

    assert key() == key(parent_run_id="b")
    assert key() != key(plan=PlanConfig(scoring="sf"))
    assert key() != key(calibration=SimpleNamespace(stats_digest="t" * 64))
    assert key() != key(source=SimpleNamespace(snapshot_digest="b" * 64))  # weight_cluster reads weights


def test_source_key_follows_hub_commits_and_local_file_edits(tmp_path):
    def hub(revision):
        return source_key(None, {"source": SourceConfig(model="org/name", revision=revision)})

    assert hub("a" * 40) != hub("b" * 40)
    assert hub("main") is None  # a branch moves: resolved and hashed on every run, never cached
    (tmp_path / "config.json").write_text("{}")
    local = SourceConfig(model=str(tmp_path))
    first = source_key(None, {"source": local})
    assert first == source_key(None, {"source": local})
    (tmp_path / "config.json").write_text('{"edited": true}')
    assert first != source_key(None, {"source": local})


def test_a_library_code_change_changes_every_stage_key(tmp_path, monkeypatch):
    text = write_text(tmp_path / "data" / "text.txt")
    before = all_keys(text)
    assert None not in before.values()
    monkeypatch.setattr(caching, "code_digest", lambda: "9" * 64)
    after = all_keys(text)
    assert {stage for stage in before if before[stage] == after[stage]} == set()


def test_the_library_digest_covers_every_python_file_of_the_core_platform_and_tasks(tmp_path):
    assert {folder.name for folder in LIBRARY_FOLDERS} == {"moe2dense_core", "moe2dense_platform", "tasks"}
    copies = [shutil.copytree(folder, tmp_path / folder.name) for folder in LIBRARY_FOLDERS]
    versions = {"moe2dense": "0.1.0"}
    original = library_digest(copies, versions)
    assert original == library_digest(LIBRARY_FOLDERS, versions)
    scorer = tmp_path / "moe2dense_core" / "scoring" / "sf.py"
    scorer.write_bytes(scorer.read_bytes() + b"\n")  # a one-byte fix in a core scorer
    edited = library_digest(copies, versions)
    assert edited != original
    (tmp_path / "tasks" / "toy.py").write_text("X = 1\n")  # a new stage module
    with_stage = library_digest(copies, versions)
    assert with_stage != edited
    (tmp_path / "moe2dense_platform" / "toy.py").write_text("X = 1\n")  # a new platform module
    assert library_digest(copies, versions) != with_stage
    assert library_digest(LIBRARY_FOLDERS, {"moe2dense": "0.2.0"}) != original  # the project version


def test_data_enters_keys_by_content_never_by_path(tmp_path):
    one = data_keys(
        write_text(tmp_path / "one" / "text.txt"), write_text(tmp_path / "one" / "task.jsonl", "{}")
    )
    two = data_keys(write_text(tmp_path / "two" / "copy.txt"), write_text(tmp_path / "two" / "t.jsonl", "{}"))
    assert {stage: key for stage, (key, _) in one.items()} == {stage: key for stage, (key, _) in two.items()}
    for stage, (_, payload) in one.items():
        assert str(tmp_path / "one") not in payload and "text.txt" not in payload, stage
        assert "task.jsonl" not in payload, stage
    edited = data_keys(
        write_text(tmp_path / "one" / "text.txt", ANIMAL_TEXT.replace("cat", "cot", 1)),
        tmp_path / "one" / "task.jsonl",
    )
    assert {stage for stage in one if one[stage][0] == edited[stage][0]} == set()
    write_text(tmp_path / "two" / "t.jsonl", '{"context": "a", "continuation": "b"}')
    assert (
        data_keys(tmp_path / "two" / "copy.txt", tmp_path / "two" / "t.jsonl")["evaluate"][0]
        != two["evaluate"][0]
    )


def test_the_artifact_store_is_in_every_key(tmp_path, monkeypatch):
    text = write_text(tmp_path / "data" / "text.txt")
    default = all_keys(text)
    monkeypatch.setenv("MOE2DENSE_ARTIFACT_ROOT", str(tmp_path / "other-store"))
    other = all_keys(text)
    monkeypatch.setenv("MOE2DENSE_ARTIFACT_ROOT", "s3://bucket-a/prefix")
    bucket_a = all_keys(text)
    monkeypatch.setenv("MOE2DENSE_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    endpoint = all_keys(text)
    for stage in default:
        assert len({default[stage], other[stage], bucket_a[stage], endpoint[stage]}) == 4, stage
