"""What to evaluate downstream: TaskSpec (one lm-eval task) and EvalConfig (the whole run).

Hub tasks come from lm-eval's own registry by name and need the model hub (the online default:
the paper's suite, `PAPER_HUB_TASKS`). Local tasks are jsonl files in one of three formats, turned
into lm-eval task YAMLs at run time by `lm_eval_tasks.py`:
  multiple_choice   {"query": str, "choices": [str, ...], "gold": int}   score each choice after the query
  partial_context   {"context_options": [str, ...], "continuation": str, "gold": int}
                    score the shared continuation after each context (WinoGrande's partial scoring)
  cloze             {"context": str, "continuation": str}   is the continuation the greedy completion? (LAMBADA)
The first two score `query + target_delimiter + choice` (resp. `context + target_delimiter +
continuation`); `target_delimiter` is lm-eval's own task option, one space by default, set per task,
e.g. "" for HellaSwag-style choices that carry their own leading punctuation or space.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LocalFormat = Literal["multiple_choice", "partial_context", "cloze"]
DELIMITED_FORMATS: tuple[LocalFormat, ...] = ("multiple_choice", "partial_context")
DEFAULT_TARGET_DELIMITER = " "
_TASK_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class TaskSpec(BaseModel):
    """One task: a hub task (format None: lm-eval's task of that name) or a local jsonl file.

    num_fewshot: in-context examples before each question. Local tasks draw them from
    fewshot_file, or, when it is None, from data_file itself excluding the question being asked.
    Relative file paths resolve against the working directory of the process that evaluates.
    target_delimiter: the text between query and choice (multiple_choice) or context and
    continuation (partial_context); lm-eval's default, one space, unless the task sets it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    num_fewshot: int = Field(default=0, ge=0)
    format: LocalFormat | None = None
    data_file: Path | None = None
    fewshot_file: Path | None = None
    target_delimiter: str = DEFAULT_TARGET_DELIMITER

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not _TASK_NAME.match(name):
            raise ValueError(f"task name {name!r} must match {_TASK_NAME.pattern}")
        return name

    @model_validator(mode="after")
    def _local_or_hub(self) -> TaskSpec:
        if (self.format is None) != (self.data_file is None):
            raise ValueError(
                f"task {self.name!r}: a local task needs both format and data_file; a hub task neither"
            )
        if self.fewshot_file is not None and self.format is None:
            raise ValueError(f"task {self.name!r}: fewshot_file applies to local tasks only")
        if self.target_delimiter != DEFAULT_TARGET_DELIMITER and self.format not in DELIMITED_FORMATS:
            raise ValueError(
                f"task {self.name!r}: target_delimiter applies to local {' / '.join(DELIMITED_FORMATS)} tasks "
                f"only (a cloze continuation carries its own leading space; a hub task defines its own)"
            )
        return self

    @property
    def is_local(self) -> bool:
        return self.format is not None


PAPER_HUB_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(name="winogrande", num_fewshot=5),
    TaskSpec(name="hellaswag", num_fewshot=10),
    TaskSpec(name="arc_easy", num_fewshot=25),
    TaskSpec(name="arc_challenge", num_fewshot=25),
    TaskSpec(name="mmlu", num_fewshot=5),
)
"""The paper's downstream suite [paper]: WinoGrande 5-shot, HellaSwag 10, ARC-Easy/Challenge 25, MMLU 5."""


class EvalConfig(BaseModel):
    """A downstream evaluation run. The defaults are the paper's hub suite over every example.

    limit: examples per task (None = all). batch_size: lm-eval loglikelihood batch size.
    max_length: context tokens (None = the model's maximum positions); longer prompts are
    left-truncated by lm-eval. Seeds are lm-eval's four (python, numpy, torch, few-shot sampling),
    defaulting to lm-eval's own defaults. bootstrap_iters: resamples for the standard errors of
    non-mean metrics (LAMBADA perplexity); acc / acc_norm errors are closed-form whenever > 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[TaskSpec, ...] = PAPER_HUB_TASKS
    limit: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=8, ge=1)
    max_length: int | None = Field(default=None, ge=2)
    random_seed: int = 0
    numpy_seed: int = 1234
    torch_seed: int = 1234
    fewshot_seed: int = 1234
    bootstrap_iters: int = Field(default=1000, ge=0)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
        if not tasks:
            raise ValueError("tasks must name at least one task")
        names = [t.name for t in tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")
        return tasks
