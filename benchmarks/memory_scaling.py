"""Peak memory of quantize and eval from 100 to 10,000 images: it must stay flat (streaming).

    python benchmarks/memory_scaling.py [--work /tmp/md-memory] [--counts 100 1000 10000]

Builds image folders of the requested sizes from the bundled eval_data digits (hard links, so
the disk cost is nil), then runs each command in a fresh process and reports that process's
peak resident memory (VmHWM). Calibration uses every image (--num-calib N), evaluation reads
every image; both stream batches, so the peak should not grow with N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time
from pathlib import Path
import mobiledeploy
from mobiledeploy.evaluation.builds import evaluate_build
what, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
count = int(sys.argv[4])
if what == "quantize":
    mobiledeploy.quantize(sys.argv[5], data, out, num_calib=count, num_holdout=0, overwrite=True)
else:
    evaluate_build(out, data)
peak = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(peak)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mobiledeploy-memory"))
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    sources = sorted((ROOT / "eval_data").rglob("*.png"))
    model = ROOT / "models" / "mnist_mobilenet_v1_0.25_32.h5"
    print(f"{'images':>8} {'quantize peak MB':>17} {'s':>6} {'eval peak MB':>13} {'s':>6}")
    for count in args.counts:
        folder = args.work / f"images_{count}" / "all"
        if not folder.exists():
            folder.mkdir(parents=True)
            for i in range(count):
                os.link(sources[i % len(sources)], folder / f"{i:05d}.png")
        out = args.work / f"build_{count}"
        row = [count]
        for what in ("quantize", "eval"):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD, what, str(folder.parent), str(out), str(count),
                                   str(model)], capture_output=True, text=True, check=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            row += [int(done.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - started]
        print(f"{row[0]:>8} {row[1]:>17.0f} {row[2]:>6.0f} {row[3]:>13.0f} {row[4]:>6.0f}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
