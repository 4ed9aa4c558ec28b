"""The distill stage's cache key holds `distillation.nproc_per_node` as resolved on the worker that runs it:
`auto` keys like the number of processes it means here (this machine's CUDA devices, 1 without) and
unlike any other count, which changes the global batch."""

from __future__ import annotations

from pathlib import Path

import torch

from moe2dense_platform.recipe_io import load_recipe
from tasks.distill import distill_task  # noqa: F401 (declares the stage)
from tasks.results import CheckpointResult, SourceResult
from tasks.stage import STAGES
from tests.flows.tiny_teacher import PROJECT_ROOT, animal_paragraphs


def test_auto_processes_key_as_the_count_they_resolve_to_on_this_worker(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(20)))
    recipe = load_recipe(
        PROJECT_ROOT / "configs" / "demo.yaml", [f"distillation.data={{source: files, paths: [{text}]}}"]
    )
    source = SourceResult(
        model="teacher",
        revision=None,
        local_path=str(tmp_path),
        model_type="qwen3_moe",
        num_experts=8,
        top_k=2,
        file_digests={},
        snapshot_digest="a" * 64,
    )
    student = CheckpointResult(
        checkpoint_uri="file:///student",
        checkpoint_digest="b" * 64,
        shard_digests={},
        num_parameters=1,
        plan_digest=None,
        mlflow_run_id="run",
        stage="assemble",
    )

    def key_of(nproc_per_node: int | str) -> str:
        distillation = recipe.distillation.model_copy(update={"nproc_per_node": nproc_per_node})
        return STAGES["distill"].key(
            None, {"source": source, "student": student, "distillation": distillation}
        )

    here = max(torch.cuda.device_count(), 1)  # 1 on a CPU machine
    assert key_of("auto") == key_of(here)
    assert key_of(here + 1) != key_of(here)
