"""eval with --workers: wall time of 1 and 2 worker processes, side by side in one run.

    python benchmarks/sharded_eval.py [--work /tmp/md-sharded] [--device arm:cortex-a76] [--rounds 2]

Quantizes the shared ImageNet MobileNet v1 0.25 once (defaults, into --work), then runs
``mobiledeploy eval BUILD --data IMAGES --device DEVICE --workers N --json`` on its 500 dev images
with N = 1 and 2, alternated over --rounds rounds (1, 2, 2, 1, ...: this machine is shared and
its speed drifts), each in a fresh process. Prints each run's seconds, the median time of each N,
their ratio, and whether the reports' rows are identical (they must be). Under ARM emulation each
worker is one qemu process on one core; on this CPU (--device cpu) the runtimes already use every
core, so more workers mostly add process start-up. ~25 minutes for arm:cortex-a76 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODEL = SHARED / "models" / "mobilenet_v1_0.25_224.h5"
IMAGES = SHARED / "imagenet-dev" / "images"


def mobiledeploy(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mobiledeploy", *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if run.returncode != 0:
        sys.exit(f"mobiledeploy {args[0]} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - started, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/md-sharded"))
    parser.add_argument("--device", default="arm:cortex-a76")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not MODEL.is_file():
        sys.exit(f"no shared model at {MODEL}")
    args.work.mkdir(parents=True, exist_ok=True)
    build = args.work / "build"
    if not (build / "manifest.json").is_file():
        mobiledeploy("quantize", str(MODEL), "--calib", str(IMAGES), "-o", str(build), "--overwrite")
    times: dict[int, list[float]] = {1: [], 2: []}
    rows: dict[int, list] = {}
    order = [n for r in range(args.rounds) for n in ((1, 2) if r % 2 == 0 else (2, 1))]
    for workers in order:
        seconds, run = mobiledeploy("eval", str(build), "--data", str(IMAGES), "--device", args.device,
                                    "--workers", str(workers), "--json")
        times[workers].append(seconds)
        rows.setdefault(workers, json.loads(run.stdout)["rows"])
        print(f"--workers {workers}: {seconds:.1f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"\n{args.device}, 500 images: --workers 1 {one:.1f} s, --workers 2 {two:.1f} s (medians); "
          f"1 / 2 workers: {one / two:.2f}x; rows identical: {rows[1] == rows[2]}")


if __name__ == "__main__":
    main()
