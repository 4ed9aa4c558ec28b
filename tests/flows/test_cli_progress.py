"""Issue 8 defect 9: run non-interactively (stdout piped, as in CI logs or on a Prefect worker), the
CLI's real path prints progress while a long stage runs, not only at the end: the teacher task logs
plain lines with step/total, tokens/s and ETA through Prefect's task-run logger, and the CLI prints
one line per finished stage. A subprocess on the session's Prefect server, tiny teacher."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.flows.tiny_teacher import animal_paragraphs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
SCRIPT = f"""
import sys
from pathlib import Path

from flows.cli import configure, stage_progress

home, text = Path(sys.argv[1]), Path(sys.argv[2])
configure(home)
from flows.teacher import TeacherRecipe, planned_stages, teacher_flow
from moe2dense_core.teacher import TeacherModelConfig
from moe2dense_platform.corpus import CorpusSpec
from tests.flows.tiny_teacher import TINY_TEACHER

corpus = CorpusSpec(source="files", paths=(text,), heldout_fraction=0.2)
model = TeacherModelConfig(**{{**TINY_TEACHER, "steps": {STEPS}}})
recipe = TeacherRecipe(corpus=corpus, model=model, output_dir=home / "teachers")
with stage_progress("teacher", len(planned_stages(recipe))):
    teacher_flow(recipe)
"""
STEP_LINE = re.compile(
    r"Task run 'teacher-\w+' - teacher-moe: step (\d+)/6 \(\d+\.\d%\), [\d,]+ tokens/s, "
    r"elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d"
)


def test_a_piped_run_prints_step_lines_with_eta_and_stage_lines(prefect_server, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(animal_paragraphs(1500)))
    env = {
        **os.environ,
        "MOE2DENSE_PREFECT_API_URL": prefect_server,
        "MOE2DENSE_PROGRESS_INTERVAL_S": "0",
        "MOE2DENSE_DISABLE_BF16": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "home"), str(text)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert [int(m[1]) for m in STEP_LINE.finditer(output)] == list(range(1, STEPS + 1)), output[-4000:]
    assert re.search(r"teacher: 1/2 stages done \(corpus-\w+\), elapsed", output), output[-4000:]
    assert re.search(r"teacher: 2/2 stages done \(teacher-\w+\), elapsed", output), output[-4000:]
