"""Stage `teacher_logits` and `distill_task` in cached mode, through `.fn` in the embedded default (no
servers), on the tiny trained teacher: the cache is stored shard by shard with its size logged; training
from a full-vocabulary cache equals training online; the cached run never opens the teacher (its folder
is deleted first); a cache of another teacher, other data or other settings is refused naming the field;
the convert flow plans the stage right before `distill` when the recipe asks for a cached teacher.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from flows.convert import planned_stages
from moe2dense_core.distill.topk_cache import bytes_per_token
from moe2dense_core.errors import DistillError
from moe2dense_core.pretrained import load_causal_lm
from moe2dense_platform.runtime import Runtime
from moe2dense_platform.stored_topk_cache import SHARD_KIND, open_stored_topk_cache, shard_ref
from tasks.assemble import assemble_task
from tasks.calibrate import calibrate_task
from tasks.distill import distill_task
from tasks.plan import plan_task
from tasks.source import source_task
from tasks.teacher_logits import teacher_logits_task
from tests.flows.tiny_teacher import TINY_TEACHER, animal_paragraphs
from tests.tasks.stage_fixtures import parent_run_id, teacher  # noqa: F401 (fixtures)

VOCAB = TINY_TEACHER["vocab_size"]
EXACT = [f"distillation.teacher_cache.k={VOCAB}", "distillation.teacher_cache.logprob_dtype=float32"]


def small_data(path: Path, paragraphs: int) -> str:
    """A short distillation text (a few dozen rows of 64 tokens), as a recipe override value."""
    path.write_text("\n\n".join(animal_paragraphs(paragraphs)))
    return f"distillation.data={{source: files, paths: [{path}], heldout_fraction: 0.2}}"


@pytest.fixture(scope="module")
def chain(teacher, parent_run_id, tmp_path_factory):  # noqa: F811
    """(recipe with a cached teacher, source, assembled student); rows_per_shard 16 → several shards."""
    torch.set_num_threads(1)
    data = small_data(tmp_path_factory.mktemp("data") / "text.txt", 240)
    recipe = teacher.recipe(
        data,
        "distillation.teacher=cached",
        "distillation.teacher_cache.rows_per_shard=16",
        "distillation.teacher_cache.batch_size=8",
        "distillation.train.log_every=1",
        *EXACT,
    )
    source = source_task.fn(recipe.source)
    calibration = calibrate_task.fn(source, recipe.calibration, recipe.statistics, parent_run_id)
    plan = plan_task.fn(source, calibration, recipe.plan, parent_run_id)
    assembled = assemble_task.fn(source, plan, recipe.storage, parent_run_id)
    return recipe, source, assembled


@pytest.fixture(scope="module")
def logits(chain, parent_run_id):  # noqa: F811
    recipe, source, _ = chain
    return teacher_logits_task.fn(source, recipe.distillation, parent_run_id)


def test_the_cache_is_stored_shard_by_shard_and_its_size_logged(chain, logits):
    recipe, source, _ = chain
    runtime = Runtime.from_environment()
    cache = open_stored_topk_cache(runtime.store, logits.manifest_uri)
    manifest = cache.manifest
    assert len(manifest.shards) > 1 and manifest.teacher_digest == source.snapshot_digest
    assert (manifest.k, manifest.vocab_size, manifest.logprob_dtype) == (VOCAB, VOCAB, "float32")
    for shard in manifest.shards:  # each shard its own artifact, addressed by the sha256 the manifest holds
        stored = runtime.store.manifest(shard_ref(shard))
        assert stored.kind == SHARD_KIND and stored.sha256 == shard.sha256
    assert logits.cache_digest == runtime.store.ref_from_uri(logits.manifest_uri).sha256
    assert logits.num_tokens == manifest.num_sequences * manifest.seq_len
    assert logits.bytes_per_token == bytes_per_token(VOCAB, "float32") == VOCAB * 8 + 8
    headers = logits.stored_bytes - logits.num_tokens * logits.bytes_per_token
    assert 0 < headers < 1024 * len(manifest.shards)  # the rest is one small safetensors header per shard
    run = MlflowClient(runtime.settings.resolved_mlflow_tracking_uri).get_run(logits.mlflow_run_id)
    assert run.data.params["teacher_logits.bytes_per_position"] == str(logits.bytes_per_token)
    assert run.data.metrics["teacher_logits/bytes_per_token"] == logits.bytes_per_token
    assert run.data.metrics["teacher_logits/stored_bytes"] == logits.stored_bytes
    assert run.data.tags["moe2dense.output.teacher-logits.uri"] == logits.manifest_uri


def distilled_run(distilled) -> tuple[dict[str, torch.Tensor], list[float]]:
    """(state dict of the distilled student, its logged loss curve)."""
    runtime = Runtime.from_environment()
    model = load_causal_lm(runtime.fetch_uri(distilled.checkpoint_uri))
    client = MlflowClient(runtime.settings.resolved_mlflow_tracking_uri)
    curve = sorted((m.step, m.value) for m in client.get_metric_history(distilled.mlflow_run_id, "loss"))
    return model.state_dict(), [value for _, value in curve]


def test_distilling_from_a_full_vocabulary_cache_equals_distilling_online(chain, logits, parent_run_id):  # noqa: F811
    recipe, source, assembled = chain
    online = recipe.distillation.model_copy(update={"teacher": "online"})
    weights_online, loss_online = distilled_run(distill_task.fn(source, assembled, online, parent_run_id))
    cached = distill_task.fn(source, assembled, recipe.distillation, parent_run_id, teacher_logits=logits)
    weights_cached, loss_cached = distilled_run(cached)
    assert len(loss_cached) == recipe.distillation.train.max_steps
    assert loss_cached == pytest.approx(loss_online, rel=1e-5)
    # AdamW divides by sqrt(v): an entry whose tiny gradient differs in its last bits (another summation
    # order) moves by up to ~lr per step; 4 steps at lr 5e-4: allow 10% of one step.
    for name, tensor in weights_online.items():
        assert torch.allclose(weights_cached[name], tensor, rtol=0, atol=5e-5), name
    tags = Runtime.from_environment().client.get_run(cached.mlflow_run_id).data.tags
    assert tags["moe2dense.input.teacher_logits.uri"] == logits.manifest_uri


def test_a_cached_run_never_opens_the_teacher(chain, logits, parent_run_id, tmp_path):  # noqa: F811
    """A copy of the teacher, its cache written, then deleted: the cached run still distills; online fails."""
    recipe, source, assembled = chain
    copy = Path(shutil.copytree(source.local_path, tmp_path / "teacher-copy"))
    copied = source_task.fn(recipe.source.model_copy(update={"model": str(copy)}))
    assert copied.snapshot_digest == source.snapshot_digest and copied.local_path != source.local_path
    copied_logits = teacher_logits_task.fn(copied, recipe.distillation, parent_run_id)
    assert copied_logits.cache_digest == logits.cache_digest  # the same teacher and data: the same cache
    shutil.rmtree(copy)
    distilled = distill_task.fn(
        copied, assembled, recipe.distillation, parent_run_id, teacher_logits=copied_logits
    )
    assert distilled.checkpoint_digest != assembled.checkpoint_digest
    online = recipe.distillation.model_copy(update={"teacher": "online"})
    with pytest.raises(OSError, match="teacher-copy"):
        distill_task.fn(copied, assembled, online, parent_run_id)  # the deletion is real: online cannot load


def test_a_cache_of_another_teacher_data_or_setting_is_refused(chain, logits, parent_run_id, tmp_path):  # noqa: F811
    recipe, source, assembled = chain
    other_teacher = source.model_copy(update={"snapshot_digest": "f" * 64})
    with pytest.raises(
        DistillError, match=f"teacher_digest: cache '{source.snapshot_digest}', run '{'f' * 64}'"
    ):
        distill_task.fn(other_teacher, assembled, recipe.distillation, parent_run_id, teacher_logits=logits)
    other_text = recipe.distillation.model_copy(
        update={"data": recipe.distillation.data.model_copy(update={"heldout_fraction": 0.3})}
    )
    with pytest.raises(DistillError, match=r"written for other data\): data_digest: cache '[0-9a-f]{64}'"):
        distill_task.fn(source, assembled, other_text, parent_run_id, teacher_logits=logits)
    other_k = recipe.distillation.model_copy(
        update={"teacher_cache": recipe.distillation.teacher_cache.model_copy(update={"k": 32})}
    )
    with pytest.raises(DistillError, match=f"k: cache {VOCAB}, run 32"):
        distill_task.fn(source, assembled, other_k, parent_run_id, teacher_logits=logits)
    with pytest.raises(ValueError, match="distillation.teacher is 'cached': a teacher_logits result"):
        distill_task.fn(source, assembled, recipe.distillation, parent_run_id)
    too_wide = other_k.teacher_cache.model_copy(update={"k": VOCAB + 1})
    with pytest.raises(DistillError, match=f"distillation.teacher_cache.k = {VOCAB + 1} exceeds"):
        teacher_logits_task.fn(source, other_k.model_copy(update={"teacher_cache": too_wide}), parent_run_id)


def test_the_cache_key_follows_the_teacher_and_data_not_the_student(chain):
    """Every student (and optimiser setting) shares one cache; T, k, dtype and the teacher each make another."""
    from tasks.stage import STAGES

    recipe, source, _ = chain
    key = STAGES["teacher_logits"].key
    distillation = recipe.distillation

    def key_of(source=source, **changes):
        train_changes = {
            name: changes.pop(name) for name in ("lr", "max_steps", "temperature") if name in changes
        }
        cache_changes = {name: changes.pop(name) for name in ("k", "logprob_dtype") if name in changes}
        changed = distillation.model_copy(
            update={
                "train": distillation.train.model_copy(update=train_changes),
                "teacher_cache": distillation.teacher_cache.model_copy(update=cache_changes),
            }
        )
        return key(None, {"source": source, "distillation": changed, "parent_run_id": "any"})

    assert key_of() == key_of(lr=1e-3, max_steps=99)
    others = [
        key_of(temperature=2.0),
        key_of(k=8),
        key_of(logprob_dtype="float16"),
        key_of(source=source.model_copy(update={"snapshot_digest": "e" * 64})),
    ]
    assert len({key_of(), *others}) == 5


def test_the_convert_flow_plans_the_teacher_pass_before_distill_only_when_cached(chain):
    recipe = chain[0]
    cached = planned_stages(recipe)
    assert cached[cached.index("distill") - 1] == "teacher_logits" and cached.count("teacher_logits") == 1
    online = recipe.model_copy(
        update={"distillation": recipe.distillation.model_copy(update={"teacher": "online"})}
    )
    assert planned_stages(online) == [stage for stage in cached if stage != "teacher_logits"]
