"""keras.applications models at their real size, saved by Keras 3 and by tf-keras: quantize,
bench and inspect each with the defaults.

    python benchmarks/keras_applications.py [--work /tmp/md-applications] [--model v2_140 ...]

MobileNetV2 α 1.4, MobileNetV3 Small and Large, and EfficientNetB0, at 224x224 with 1,000
classes, as keras.applications and tf_keras.applications build them (ImageNet weights are out of
this machine's reach, so weights are random with a fixed seed; BatchNorm statistics are set
from a pass over the calibration images so the activations have real ranges). Each is saved as
.keras by Keras 3 and as .h5 by tf-keras, then in a fresh process: ``quantize --calib IMAGES
--num-calib 32 --num-holdout 32 --json``, ``bench --num-runs 5 --json`` and ``inspect MODEL``. Prints, per
file: each command's exit code, float operators left in the int8 TFLite file and float compute
nodes in the int8 ONNX file, the quantize time and the int8 files' median latency. Agreement of
random-weight models says little and is not printed. ~20 minutes on 2 cores.
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
SHARED = ROOT.parent / "shared" / "data" / "imagenet-dev" / "images"
MODELS = {
    "v2_140": ("MobileNetV2", {"alpha": 1.4}),
    "v3small": ("MobileNetV3Small", {}),
    "v3large": ("MobileNetV3Large", {}),
    "effb0": ("EfficientNetB0", {}),
}


def build(lib, name: str):
    """The model with random weights, its BatchNorm statistics from 64 real images."""
    import numpy as np
    from PIL import Image

    kind, extra = MODELS[name]
    lib.utils.set_random_seed(0)
    model = getattr(lib.applications, kind)(input_shape=(224, 224, 3), weights=None, **extra)
    files = sorted(p for p in SHARED.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:64]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224)), np.float32) for p in files])
    scaled = images if kind.startswith(("MobileNetV3", "EfficientNet")) else images / 127.5 - 1
    for layer in model.layers:  # momentum 0: the moving statistics become the batch's
        if layer.__class__.__name__ == "BatchNormalization":
            layer.momentum = 0.0
    model.compile(optimizer=lib.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    model.fit(scaled, np.zeros(len(scaled), int), batch_size=64, epochs=1, verbose=0)
    return model


def save(name: str, library: str, folder: Path) -> Path:
    """Build in a child process of its own (Keras 3 and tf-keras do not share one)."""
    path = folder / (f"{name}-keras3.keras" if library == "keras" else f"{name}-tfkeras.h5")
    if not path.exists():
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import keras_applications as k; "
                f"import {'keras' if library == 'keras' else 'tf_keras'} as lib; "
                f"k.build(lib, {name!r}).save({str(path)!r})")
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return path


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobiledeploy", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/md-applications"))
    parser.add_argument("--model", action="append", choices=list(MODELS))
    parser.add_argument("--library", action="append", choices=("keras", "tf_keras"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print("| model | file | quantize | bench | inspect | float ops TFLite / ONNX | quantize s "
          "| int8 median ms TFLite / ONNX |\n|---|---|---|---|---|---|---|---|", flush=True)
    for name in args.model or MODELS:
        for library in args.library or ("keras", "tf_keras"):
            path = save(name, library, args.work)
            out = args.work / (path.stem + "-build")
            started = time.perf_counter()
            quantized = run("quantize", path, "--calib", SHARED, "-o", out, "--overwrite", "--num-calib", 32,
                            "--num-holdout", 32, "--json")
            seconds = time.perf_counter() - started
            if quantized.returncode != 0:
                last = (quantized.stderr.strip().splitlines() or ["?"])[-1][:150]
                print(f"| {name} | {path.name} | {quantized.returncode}: {last} | | | | {seconds:.0f} | |", flush=True)
                continue
            files = {a["file"]: a["details"] for a in json.loads(quantized.stdout)["artifacts"]}
            benched = run("bench", out, "--num-runs", 5, "--min-secs", 0, "--json")
            medians = {r["artifact"]: r["median_ms"] for r in json.loads(benched.stdout)["rows"]} \
                if benched.returncode == 0 else {}
            inspected = run("inspect", path)
            print(f"| {name} | {path.name} | 0 | {benched.returncode} | {inspected.returncode} | "
                  f"{files['model_int8.tflite']['float_ops']} / {files['model_int8.onnx']['float_nodes']} | "
                  f"{seconds:.0f} | {medians.get('model_int8.tflite', float('nan')):.1f} / "
                  f"{medians.get('model_int8.onnx', float('nan')):.1f} |", flush=True)


if __name__ == "__main__":
    main()
