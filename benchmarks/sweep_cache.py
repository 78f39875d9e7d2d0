"""mobiledeploy sweep: the first run against an unchanged rerun (everything from the cache), and a
rerun after one setting was added (only its tasks run), side by side in one run.

    python benchmarks/sweep_cache.py [--work /tmp/md-sweep] [--screenshot docs/images/sweep.png]

The sweep: the shared ImageNet MobileNet v1 0.25 when ../shared/data is there (calibrated and
evaluated on disjoint halves of its 500 dev images), else the bundled reference model, with the
"default" and "plain" settings, on this CPU, with latency. Prints each run's wall time (a
fresh process each) and its tasks run / cached. With --screenshot, Chromium renders the last
run's sweep.html to that PNG (the one in docs/commands/sweep.md). ~4 minutes with the shared model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def sweep_file(work: Path, extra_setting: bool) -> Path:
    """The shared ImageNet model on disjoint halves of its images when ../shared/data is there, else
    the bundled reference model on its own calibration and evaluation folders."""
    shared = SHARED / "models" / "mobilenet_v1_0.25_224.h5"
    if shared.is_file():
        source = SHARED / "imagenet-dev" / "images"
        images = sorted(p for p in source.rglob("*") if p.is_file())
        for half, chosen in (("calib", images[::2]), ("eval", images[1::2])):
            folder = work / f"shared-{half}"
            if not folder.is_dir():
                for image in chosen:
                    target = folder / image.relative_to(source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(image, target)
        model = f'[[models]]\npath = "{shared}"\nname = "imagenet-v1-0.25"\n'
        data = f'[data]\ncalib = "{work / "shared-calib"}"\neval = "{work / "shared-eval"}"\n'
    else:
        model = f'[[models]]\npath = "{ROOT / "models" / "mnist_mobilenet_v1_0.25_32.h5"}"\nname = "reference"\n'
        data = f'[data]\ncalib = "{ROOT / "calibration_data"}"\neval = "{ROOT / "eval_data"}"\n'
    settings = '[settings.default]\n[settings.plain]\npreset = "plain"\n'
    if extra_setting:
        settings += '[settings.bias-only]\nrefine = "bias"\n'
    path = work / "sweep.toml"
    path.write_text(model + data + settings + "[bench]\nnum_runs = 20\n")
    return path


def run(toml: Path, out: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mobiledeploy", "sweep", str(toml), "-o", str(out), "--json"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          check=False)
    if done.returncode != 0:
        sys.exit(f"sweep failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - started, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/md-sweep"))
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    toml = sweep_file(args.work, extra_setting=False)
    runs = [("first run", *run(toml, out)), ("unchanged rerun", *run(toml, out))]
    toml = sweep_file(args.work, extra_setting=True)
    runs.append(("rerun with a setting added", *run(toml, out)))
    for name, seconds, report in runs:
        print(f"{name}: {seconds:.1f} s (tasks run {report['tasks_run']}, from the cache {report['tasks_cached']})")
    print(f"unchanged rerun / first run: {runs[1][1] / runs[0][1]:.3f}x")
    if args.screenshot:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={args.screenshot}",
                        "--window-size=1420,400", (out / "sweep.html").as_uri()], capture_output=True, check=True)
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
