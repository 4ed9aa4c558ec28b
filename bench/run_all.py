"""Every benchmark in one command, summarised in one table of the lines that state a goal (not a test).

Each benchmark runs as its own process, one after the other (they measure ratios side by side inside
themselves, so running them apart keeps one from slowing the other); its full output is kept under
`--log-dir`. The table lists, per benchmark, every printed line that names a goal ("goal ≥ 0.5", …) and
the benchmark's wall time and exit code.

    PYTHONPATH=. .venv/bin/python bench/run_all.py            # CPU set, full sizes (≥ 4 GB checkpoint)
    PYTHONPATH=. .venv/bin/python bench/run_all.py --quick    # smoke sizes: minutes
    PYTHONPATH=. .venv/bin/python bench/run_all.py --gpu      # + the GPU runs (KD tokens/s and MFU on cuda)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def benchmarks(quick: bool, gpu: bool) -> dict[str, list[str]]:
    """name → arguments of `python bench/<file>`."""
    runs = {
        "streaming_convert": ["streaming_convert.py", *(["--quick"] if quick else [])],
        "calibration_overhead": ["calibration_overhead.py", *(["--quick"] if quick else [])],
        "distill_throughput": [
            "distill_throughput.py",
            *(["--steps", "4", "--repeats", "1"] if quick else []),
        ],
        "cache_rerun": [
            "cache_rerun.py",
            *(["--teacher-steps", "20", "--distill-steps", "4"] if quick else []),
        ],
        "hash_snapshot": ["hash_snapshot.py", *(["--size-mb", "64"] if quick else [])],
    }
    if gpu:
        runs["distill_throughput (cuda)"] = ["distill_throughput.py", "--device", "cuda"]
        runs["distill_mfu (cuda)"] = ["distill_mfu.py", "--device", "cuda"]
    return runs


def goal_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if "goal" in line]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke sizes")
    parser.add_argument("--gpu", action="store_true", help="also the CUDA benchmarks")
    parser.add_argument("--only", nargs="*", default=None, help="names of the benchmarks to run")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()) / "moe2dense-bench")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")])),
    }
    rows: list[tuple[str, str, str, list[str]]] = []
    for name, argv in benchmarks(args.quick, args.gpu).items():
        if args.only is not None and name not in args.only:
            continue
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(BENCH / argv[0]), *argv[1:]],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
        log = args.log_dir / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.log"
        log.write_text(done.stdout + done.stderr)
        rows.append(
            (
                name,
                f"{seconds:,.0f} s",
                str(done.returncode),
                goal_lines(done.stdout) or [f"(no goal line; see {log})"],
            )
        )
    print(f"{'benchmark':<28} {'wall':>8} {'rc':>3}  result")
    for name, wall, rc, lines in rows:
        print(f"{name:<28} {wall:>8} {rc:>3}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<28} {'':>8} {'':>3}  {line}")
    print(f"full outputs: {args.log_dir}")
    return max((int(rc) for _, _, rc, _ in rows), default=0)


if __name__ == "__main__":
    sys.exit(main())
