"""Shared fixtures: tiny real Keras models built with fixed seeds, and small image folders."""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_MODEL = ROOT / "models" / "mnist_mobilenet_v1_0.25_32.h5"
SHARED_DATA = Path(os.environ.get("MOBILEDEPLOY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


PROGRESS_LINE = re.compile(r"^\[ *\d+\.\d s\] ")  # what Progress logs when stderr is not a terminal


def messages(output: str) -> list[str]:
    """The lines of a command's output other than its progress log."""
    return [line for line in output.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


def strict_json(text: str, kind: str) -> dict:
    """``text`` parsed as JavaScript's JSON.parse would (Infinity and NaN are errors), checked against
    its published schema, docs/schemas/KIND.schema.json."""
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert data["schema"] == {"kind": kind, "version": 1}
    jsonschema = pytest.importorskip("jsonschema")  # a dev dependency
    jsonschema.validate(data, json.loads((ROOT / "docs" / "schemas" / f"{kind}.schema.json").read_text()))
    return data


@contextmanager
def killing_first(find: Callable[[], list[int]], within: float = 120.0):
    """While the block runs, SIGKILL the first process ``find()`` names (polled every 10 ms, for
    at most ``within`` seconds); yields the list that then holds its pid."""
    import signal
    import threading
    import time

    killed: list[int] = []

    def watch():
        deadline = time.monotonic() + within
        while not killed and time.monotonic() < deadline:
            for pid in find()[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield killed
    finally:
        watcher.join()


def cli(*args):
    """The real CLI, in this process (exceptions that are not user errors propagate)."""
    from click.testing import CliRunner

    from mobiledeploy.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics, so folding has something to prove."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([
                rng.uniform(0.5, 2.0, gamma), rng.normal(0, 0.3, beta),
                rng.normal(0, 0.3, mean), rng.uniform(0.3, 2.0, var),
            ])


def build_tiny_mobilenet(input_size: int = 24, classes: int = 6, seed: int = 0):
    """A hand-built Functional MobileNet-style CNN: every layer type the pipeline folds."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(6.0, name="dw_relu")(x)
    x = layers.Conv2D(16, 1, use_bias=True, name="pw")(x)
    x = layers.BatchNormalization(name="pw_bn")(x)
    y = layers.Activation("relu", name="pw_relu")(x)
    z = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep")(y)
    z = layers.BatchNormalization(name="sep_bn")(z)
    x = layers.Add(name="residual")([y, z])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    x = layers.Dense(classes, name="logits")(x)
    outputs = layers.Softmax(name="probs")(x)
    model = keras.Model(inputs, outputs, name="tiny_mobilenet")
    randomize_batchnorm(model, seed)
    return model


def write_images(folder: Path, count: int, size: int = 32, seed: int = 0, mode: str = "RGB") -> list[Path]:
    """Smooth random colour images (gradients plus blobs), written as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(count):
        channels = []
        for _ in range(3):
            a, b, c = rng.uniform(-1, 1, 3)
            cx, cy = rng.uniform(0, 1, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * rng.uniform(5, 30))
            channels.append(127 + 60 * (a * xx + b * yy) + 120 * c * blob)
        pixels = np.clip(np.stack(channels, -1) + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if mode != "RGB":
            image = image.convert(mode)
        path = folder / f"img_{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_mobilenet()


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="session")
def calib_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    write_images(folder / "a", 30, seed=1)
    write_images(folder / "b" / "nested", 20, seed=2)
    return folder


def eval_sqnr(build: Path) -> dict[str, float]:
    """Output SQNR of each int8 file of a reference-model build against its float model on the
    2,000 images of eval_data/ (the model's evaluation split, never calibrated on). The 100
    calibration-folder images quantize holds out move by +-1 dB between near-identical builds:
    too few to rank two levers that differ by one."""
    from mobiledeploy.evaluation.builds import evaluate_build

    report = evaluate_build(build, ROOT / "eval_data")
    return {row["artifact"]: row["sqnr_db"] for row in report.rows if row["precision"] == "int8"}


def shared_data() -> Path:
    if not (SHARED_DATA / "models" / "mobilenet_v1_0.25_224.h5").exists():
        pytest.skip(f"shared real data not found at {SHARED_DATA} (set MOBILEDEPLOY_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def eval_subset(tmp_path_factory) -> Path:
    """The first 20 images of each class of the reference model's evaluation split (200 images)."""
    import shutil

    dst = tmp_path_factory.mktemp("eval_subset")
    for folder in sorted(p for p in (ROOT / "eval_data").iterdir() if p.is_dir()):
        (dst / folder.name).mkdir()
        for f in sorted(folder.iterdir())[:20]:
            shutil.copy(f, dst / folder.name / f.name)
    return dst


@pytest.fixture(scope="session")
def reference_build(tmp_path_factory) -> Path:
    """The committed reference model quantized once per test session (read-only for tests)."""
    from click.testing import CliRunner

    from mobiledeploy.cli.main import main

    out = tmp_path_factory.mktemp("ref") / "build"
    args = ["quantize", str(REFERENCE_MODEL), "--calib", str(ROOT / "calibration_data"), "-o", str(out),
            "--num-holdout", "0"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out
