"""Where quantize spends its time: each stage of the default pipeline beside the plain one.

    python benchmarks/quantize_stages.py [--work /tmp/md-stages] [--model shared|v1_100 ...] [--num-calib 200]
                                         [--search] [--repeat N] [--against CHECKOUT]

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

--repeat N runs every build N times (the machine's speed drifts by 20% between runs) and prints
each run's ratio and the mean stage seconds. --against CHECKOUT also runs every build with the
mobiledeploy of another checkout (a git worktree of an earlier commit), alternately first and
second: before and after a change, side by side in one run.
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


def quantize(model: Path, out: Path, num_calib: int, preset: str, *extra: str,
             code: Path = ROOT) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mobiledeploy", "quantize", str(model), "--calib", str(IMAGES),
                          "-o", str(out), "--overwrite", "--num-calib", str(num_calib), "--preset", preset, *extra,
                          "--json"], capture_output=True, text=True, cwd=code,
                         env={**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - started
    if run.returncode not in (0, 3):  # 3: a --max-disagreement budget not met, the files written
        sys.exit(f"quantize {model.name} --preset {preset} failed: {run.stderr.strip().splitlines()[-1]}")
    return wall, {s["step"]: s["seconds"] for s in json.loads(run.stdout)["stages"]}


def side_by_side_arguments(description: str, work: str) -> argparse.ArgumentParser:
    """--work, --model, --repeat and --against, as this benchmark and refine_layers.py take them."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--model", action="append", choices=("shared", "v1_100"))
    parser.add_argument("--repeat", type=int, default=1, help="run every build this many times")
    parser.add_argument("--against", type=Path, help="another checkout of mobiledeploy to time alternately")
    return parser


def checkouts(parser: argparse.ArgumentParser, args) -> dict[str, Path]:
    """{'this': this checkout, 'against': --against's} once --repeat and --against are checked, and
    --work made."""
    if args.repeat < 1:
        parser.error(f"--repeat must be 1 or more, not {args.repeat}")
    if args.against is not None and not (args.against / "mobiledeploy" / "__init__.py").is_file():
        parser.error(f"--against {args.against}: expected a checkout of mobiledeploy (no mobiledeploy/__init__.py)")
    args.work.mkdir(parents=True, exist_ok=True)
    return {"this": ROOT, **({"against": args.against.resolve()} if args.against else {})}


def main() -> None:
    parser = side_by_side_arguments(__doc__.splitlines()[0], "/tmp/md-stages")
    parser.add_argument("--num-calib", type=int, default=200)
    parser.add_argument("--search", action="store_true", help="also time a --max-disagreement 1 build")
    args = parser.parse_args()
    codes = checkouts(parser, args)
    builds = {"plain": ("plain",), "default": ("default",),
              **({"search": ("default", "--max-disagreement", "1")} if args.search else {})}
    for name in args.model or ("shared", "v1_100"):
        model = model_path(name, args.work)
        runs: dict[tuple[str, str], list[tuple[float, dict[str, float]]]] = {}
        for repeat in range(args.repeat):
            for build, options in builds.items():
                for code in list(codes) if repeat % 2 == 0 else list(codes)[::-1]:  # who goes first alternates
                    runs.setdefault((code, build), []).append(quantize(
                        model, args.work / f"{name}-{code}-{build}", args.num_calib, *options, code=codes[code]))
        columns = [(code, build) for code in codes for build in builds]

        def title(code: str, build: str) -> str:
            return f"{build} ({code})" if len(codes) > 1 else build

        def mean(column: tuple[str, str], step: str) -> float:
            return sum(stages.get(step, 0) for _, stages in runs[column]) / args.repeat

        print(f"\n{model.name}, {args.num_calib} calibration images, mean of {args.repeat} run(s)\n")
        print("| stage | " + " | ".join(f"{title(*c)} s" for c in columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for step in dict.fromkeys(step for column in columns for _, stages in runs[column] for step in stages):
            print(f"| {step} | " + " | ".join(f"{mean(c, step):.1f}" for c in columns) + " |")
        print("| process (with imports) | " + " | ".join(f"{sum(w for w, _ in runs[c]) / args.repeat:.1f}"
                                                      for c in columns) + " |")
        for code in codes:
            walls = {build: [w for w, _ in runs[code, build]] for build in builds}
            for top, bottom in (("default", "plain"), ("search", "default")):
                if top in walls:
                    ratios = ", ".join(f"{t / b:.2f}x" for t, b in zip(walls[top], walls[bottom]))
                    print(f"{title(code, top)} / {bottom}: {ratios} (process); "
                          f"mean {sum(walls[top]) / sum(walls[bottom]):.2f}x", flush=True)


if __name__ == "__main__":
    main()
