"""The family table: every MobileNet family the conformance suite builds, in every save format and
with Keras' default names or names of its own, quantized with the defaults.

    python benchmarks/conformance_table.py [--work /tmp/md-conformance] [--family v2 ...] [--names keras]

Builds and trains the zoo with tests/conformance/families.py (real MNIST digits from eval_data/,
four epochs, fixed seed), then runs ``mobiledeploy quantize MODEL --calib calibration_data/
--num-calib 64 --num-holdout 100 --json`` on each file in a fresh process and prints, per file:
exit code, the fold's relative error, float operators left in the int8 TFLite file and float
compute nodes in the int8 ONNX file, each int8 file's top-1 agreement with float on the 100
held-out digits, fallbacks, and the quantize time. ~25 minutes for the whole zoo on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))


def main() -> None:
    from families import FAMILIES, FORMATS, save, trained

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/md-conformance"))
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--format", action="append", choices=FORMATS)
    parser.add_argument("--names", action="append", choices=("keras", "own"))
    args = parser.parse_args()
    zoo, builds = args.work / "zoo", args.work / "builds"
    zoo.mkdir(parents=True, exist_ok=True)
    builds.mkdir(parents=True, exist_ok=True)
    print("| family | format | names | exit | fold rel. error | float ops TFLite / ONNX | agreement TFLite / ONNX "
          "| fallbacks | quantize s |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    for family in args.family or FAMILIES:
        model = trained(family)
        for fmt in args.format or FORMATS:
            for names in args.names or ("keras", "own"):
                path = save(model, family, fmt, names, zoo)
                out = builds / path.name.replace(".", "_")
                started = time.perf_counter()
                run = subprocess.run([sys.executable, "-m", "mobiledeploy", "quantize", str(path), "--calib",
                                      str(ROOT / "calibration_data"), "-o", str(out), "--overwrite", "--num-calib", "64",
                                      "--num-holdout", "100", "--json"], capture_output=True, text=True, cwd=ROOT)
                seconds = time.perf_counter() - started
                if run.returncode != 0:
                    last = (run.stderr.strip().splitlines() or ["?"])[-1][:120]
                    print(f"| {family} | {fmt} | {names} | {run.returncode} | {last} | | | | {seconds:.0f} |", flush=True)
                    continue
                result = json.loads(run.stdout)
                files = {a["file"]: a["details"] for a in result["artifacts"]}
                agreement = {d["artifact"]: d["agreement"] for d in result["drift"]}
                print(f"| {family} | {fmt} | {names} | 0 | {result['folding']['rel_diff']:.1e} | "
                      f"{files['model_int8.tflite']['float_ops']} / {files['model_int8.onnx']['float_nodes']} | "
                      f"{agreement['model_int8.tflite']:.0%} / {agreement['model_int8.onnx']:.0%} | "
                      f"{len(result['fallbacks'])} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
