"""Where quantize spends its time: each stage of the default pipeline beside the plain one.

    python benchmarks/quantize_stages.py [--work /tmp/md-stages] [--model shared|v1_100 ...] [--num-calib 200] [--search]

Runs ``mobiledeploy quantize MODEL --calib IMAGES --num-calib N --json`` with ``--preset plain``
(the converters alone: no refinement, logit floor, narrowed ranges or dither) and with the
defaults, one after the other in fresh processes, on the shared ImageNet MobileNet v1 0.25-224
and on keras.applications' MobileNet v1 1.0-224 (random weights, BatchNorm statistics from real
images: ``keras_applications.build``). Prints, per model, each stage's seconds in both runs
(``QuantizeResult.stages``), the totals and their ratio. Calibration images are decoded once, in
the first stage that reads a set whole (fold verification for the calibration images, drift for
the held-out ones), not in "read calibration images", which only lists and checks them. About 5
minutes on 2 cores; 15 with --search.

--search also builds with ``--max-disagreement 1`` (the mixed-precision search: one more layer in
float per round while an int8 file disagrees with float on more than 1% of the held-out images)
and prints its stages and its time against the default build's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
IMAGES = SHARED / "imagenet-dev" / "images"


def model_path(name: str, work: Path) -> Path:
    if name == "shared":
        return SHARED / "models" / "mobilenet_v1_0.25_224.h5"
    path = work / "mobilenet_v1_1.0_224.keras"
    if not path.exists():
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import keras_applications as k; "
                "import keras; k.MODELS['v1_100'] = ('MobileNet', {'alpha': 1.0}); "
                f"k.build(keras, 'v1_100').save({str(path)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return path


def quantize(model: Path, out: Path, num_calib: int, preset: str, *extra: str) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mobiledeploy", "quantize", str(model), "--calib", str(IMAGES),
                          "-o", str(out), "--overwrite", "--num-calib", str(num_calib), "--preset", preset, *extra,
                          "--json"], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if run.returncode not in (0, 3):  # 3: a --max-disagreement budget not met, the files written
        sys.exit(f"quantize {model.name} --preset {preset} failed: {run.stderr.strip().splitlines()[-1]}")
    return wall, {s["step"]: s["seconds"] for s in json.loads(run.stdout)["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/md-stages"))
    parser.add_argument("--model", action="append", choices=("shared", "v1_100"))
    parser.add_argument("--num-calib", type=int, default=200)
    parser.add_argument("--search", action="store_true", help="also time a --max-disagreement 1 build")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.model or ("shared", "v1_100"):
        model = model_path(name, args.work)
        plain_wall, plain = quantize(model, args.work / f"{name}-plain", args.num_calib, "plain")
        default_wall, default = quantize(model, args.work / f"{name}-default", args.num_calib, "default")
        print(f"\n{model.name}, {args.num_calib} calibration images\n\n| stage | plain s | default s |\n|---|---|---|")
        for step in dict.fromkeys([*default, *plain]):
            print(f"| {step} | {plain.get(step, 0):.1f} | {default.get(step, 0):.1f} |")
        print(f"| **stages** | **{sum(plain.values()):.1f}** | **{sum(default.values()):.1f}** |")
        print(f"| process (with imports) | {plain_wall:.1f} | {default_wall:.1f} |")
        print(f"\ndefault / plain: {default_wall / plain_wall:.2f}x (process), "
              f"{sum(default.values()) / sum(plain.values()):.2f}x (stages)", flush=True)
        if args.search:
            search_wall, search = quantize(model, args.work / f"{name}-search", args.num_calib, "default",
                                           "--max-disagreement", "1")
            print(f"\n--max-disagreement 1\n\n| stage | default s | search s |\n|---|---|---|")
            for step in dict.fromkeys([*default, *search]):
                print(f"| {step} | {default.get(step, 0):.1f} | {search.get(step, 0):.1f} |")
            print(f"| process (with imports) | {default_wall:.1f} | {search_wall:.1f} |")
            print(f"\nsearch / default: {search_wall / default_wall:.2f}x (process)", flush=True)


if __name__ == "__main__":
    main()
