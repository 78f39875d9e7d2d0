"""Coverage-guided fuzzing (atheris / libFuzzer) of mobiledeploy's input parsers.

    python tests/fuzz/fuzz_inputs.py TARGET [CORPUS_DIR] -max_total_time=60

Targets: image (decode + preprocess), array (.npy / .npz calibration arrays), manifest
(manifest.json + the file checks that follow), model_config (a Keras model config as an .h5
file carries it: parsed, checked, translated and sized, before Keras builds anything),
baseline (gate baseline JSON + rule
evaluation), labels (labels files + labelled folders). A target may raise MobiledeployError —
that is the clear error users see; any other exception is a crash: libFuzzer stops, saves the
input as crash-*, and that input becomes a regression test in tests/test_fuzz.py.

When CORPUS_DIR is empty it is seeded with valid inputs generated here (PNG, JPEG, GIF, .npy,
.npz, a real manifest and baseline), so mutation starts from the formats themselves.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import numpy as np
    from PIL import Image

    from mobiledeploy import manifest

    from mobiledeploy.data import calibration, images

    from mobiledeploy.data import datasets

    from mobiledeploy.evaluation import gate
    from mobiledeploy.options import GateRules
    from mobiledeploy.errors import MobiledeployError
    from mobiledeploy.reports import EvalReport, Preprocessing

PREP = Preprocessing(24, 24, 3, "mobilenet")
# the seed corpus of model_config: configs tf-keras wrote (the reference MobileNet v1, MobileNetV3Small
# with its TFOpLambda hard-swish and "/" names, a MobileNetV2 with default layer names)
MODEL_CONFIGS = {p.name: p for p in (Path(__file__).parent / "configs").glob("*.json")}
SCRATCH = Path(tempfile.mkdtemp(prefix="mobiledeploy-fuzz-"))
_AT_EXIT = []  # keeps the C callback alive until the process ends
REPORT = EvalReport("build", "data", "d" * 64, None, 10, True, "model_folded.keras", (
    {"artifact": "model_folded.keras", "format": "keras", "precision": "float32", "top1": 0.9, "top5": 1.0,
     "agreement": 1.0, "sqnr_db": float("inf")},
    {"artifact": "model_int8.tflite", "format": "tflite", "precision": "int8", "top1": 0.88, "top5": 1.0,
     "agreement": 0.97, "sqnr_db": 30.0},
), PREP.to_dict())


def remove_scratch_at_exit() -> None:
    """libFuzzer ends the process with C's exit(), which skips Python's atexit, so the scratch
    folder is removed by a handler registered with the C library (glibc's on_exit; where there is
    none, the folder stays in the temporary directory)."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "on_exit"):
        return
    handler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p)(
        lambda status, arg: shutil.rmtree(SCRATCH, ignore_errors=True))
    _AT_EXIT.append(handler)
    libc.on_exit(handler, None)


def fuzz_image(data: bytes) -> None:
    path = SCRATCH / "input.img"
    path.write_bytes(data)
    pixels = images.load_image(path, PREP)
    assert pixels.shape == (24, 24, 3) and pixels.dtype == np.float32


def fuzz_array(data: bytes) -> None:
    for suffix in (".npy", ".npz"):
        path = SCRATCH / f"input{suffix}"
        path.write_bytes(data)
        try:
            cset = calibration.scan(path, PREP, num_calib=2)
            batch = next(calibration.iter_batches(cset, "calib", 2))
            assert batch.shape[1:] == (24, 24, 3) and np.isfinite(batch).all()
        except MobiledeployError:
            pass


def fuzz_manifest(data: bytes) -> None:
    build = SCRATCH / "build"
    build.mkdir(exist_ok=True)
    (build / "model_int8.tflite").write_bytes(b"tflite")
    (build / manifest.MANIFEST).write_bytes(data)
    manifest.open_build(build).verified_files()


def fuzz_model_config(data: bytes) -> None:
    from mobiledeploy.model.loading import _parse_json, checked_keras2_config

    path = SCRATCH / "model.h5"
    checked_keras2_config(_parse_json(data, path), path)


def fuzz_baseline(data: bytes) -> None:
    path = SCRATCH / "baseline.json"
    path.write_bytes(data)
    stored = gate.read_baseline(path, REPORT)
    gate.evaluate_rules(REPORT, GateRules(), stored)


def fuzz_labels(data: bytes) -> None:
    folder = SCRATCH / "labelled"
    if not folder.exists():
        for name in ("cat", "dog"):
            (folder / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(folder / name / "a.png")
    labels = SCRATCH / "labels.txt"
    labels.write_bytes(data)
    datasets.open_data(folder, labels)


TARGETS = {"image": fuzz_image, "array": fuzz_array, "manifest": fuzz_manifest, "model_config": fuzz_model_config,
           "baseline": fuzz_baseline, "labels": fuzz_labels}


def seeds(target: str) -> dict[str, bytes]:
    """Valid inputs of each format, generated (seeded), as the starting corpus."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    if target == "image":
        out = {}
        for fmt, mode in (("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("PNG", "RGBA"), ("BMP", "L")):
            buffer = io.BytesIO()
            Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
            out[f"{fmt}_{mode}"] = buffer.getvalue()
        return out
    if target == "array":
        out = {}
        for name, array in (("uint8", rng.integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)),
                            ("float", rng.uniform(0, 255, (2, 24, 24, 3)).astype(np.float32))):
            buffer = io.BytesIO()
            np.save(buffer, array)
            out[f"{name}.npy"] = buffer.getvalue()
            buffer = io.BytesIO()
            np.savez(buffer, x=array)
            out[f"{name}.npz"] = buffer.getvalue()
        return out
    if target == "manifest":
        digest = "f4c0af5a8d1b4d2ed5a9d5e4f6f34a6c1a8e2c0d7b8f9a0b1c2d3e4f5a6b7c8d"
        return {"manifest.json": json.dumps({
            "schema": manifest.SCHEMA, "created_by": "mobiledeploy quantize",
            "model": {"source": "m.h5", "sha256": None, "format": "h5", "saved_by_keras": "2.8.0",
                      "trusted_code": False, "name": "m", "input_shape": [None, 8, 8, 3], "output_shape": [None, 2]},
            "preprocessing": PREP.to_dict(), "head": {"kind": "classes"},
            "equalization": {"pairs": 1, "reference": {"file": "model_int8.tflite", "format": "keras",
                                                       "precision": "float32", "sha256": digest, "size": 6}},
            "logit_floor": {"layer": "logits", "split_softmax": True, "floor": -3.5},
            "fallbacks": [{"layer": "conv1", "setting": "activation range", "reason": "fused"}],
            "files": [{"file": "model_int8.tflite", "format": "tflite", "precision": "int8", "sha256": digest,
                       "size": 6, "details": {"tensor_map": {"conv1": "t0"}}}]}).encode()}
    if target == "model_config":
        return {name: path.read_bytes() for name, path in MODEL_CONFIGS.items() if path.is_file()}
    if target == "baseline":
        return {"baseline.json": json.dumps(gate.make_baseline(REPORT, GateRules())).encode()}
    return {"labels.txt": b"cat\ndog\n", "reversed.txt": b"dog\ncat\nbird\n"}


def main() -> None:
    target = sys.argv[1]
    args = [sys.argv[0], *sys.argv[2:]]
    corpus = next((Path(a) for a in args[1:] if not a.startswith("-")), None)
    if corpus is not None and not corpus.is_file():  # a file: one input to run again
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for name, data in seeds(target).items():
                (corpus / name).write_bytes(data)
    function = TARGETS[target]

    def one_input(data: bytes) -> None:
        try:
            function(data)
        except MobiledeployError:
            pass

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    remove_scratch_at_exit()
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
