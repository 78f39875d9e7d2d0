"""The input scaling read off the first BatchNorm's statistics (input_scaling.py), on tiny real
models whose BatchNorm statistics come from a forward pass in training mode over images scaled
one way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import build_tiny_mobilenet, write_images

from mobiledeploy.data.calibration import iter_batches, preprocessing_for, scan
from mobiledeploy.data.input_scaling import read_scaling


def _train_statistics(model, folder, scaling: str) -> None:
    """Set every BatchNorm's moving statistics from training-mode passes over the images in
    ``folder`` scaled by ``scaling``, as training on them would (momentum 0: the last batch's)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    cset = scan(folder, preprocessing_for(model, scaling), 40)
    images = np.concatenate(list(iter_batches(cset, "calib", 40)))
    model(images, training=True)


def _pixels(folder, model, count=32):
    cset = scan(folder, preprocessing_for(model, "raw"), count)
    return np.concatenate(list(iter_batches(cset, "calib", 16)))


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    write_images(folder, 40, size=24, seed=11)
    return folder


@pytest.mark.parametrize("trained_on", ["unit", "mobilenet"])
def test_auto_follows_the_statistics(trained_on, train_folder, calib_folder):
    model = build_tiny_mobilenet(seed=3)
    _train_statistics(model, train_folder, trained_on)
    report = read_scaling(model, _pixels(calib_folder, model), "auto", "mobilenet")
    assert report.batchnorm == "stem_bn" and report.decisive
    assert report.chosen == report.best == trained_on and report.warning is None
    scores = dict(report.mismatch)
    assert scores[trained_on] * 4 <= min(v for k, v in scores.items() if k != trained_on)


def test_an_explicit_scaling_is_kept_but_a_contradiction_is_reported(train_folder, calib_folder):
    model = build_tiny_mobilenet(seed=3)
    _train_statistics(model, train_folder, "unit")
    report = read_scaling(model, _pixels(calib_folder, model), "mobilenet", "mobilenet")
    assert report.chosen == "mobilenet" and report.best == "unit"
    assert "--preprocess mobilenet, but stem_bn's training statistics match unit" in report.warning


def test_statistics_that_fit_no_scaling_leave_the_fallback(calib_folder):
    model = build_tiny_mobilenet(seed=3)  # random BatchNorm statistics: no scaling produced them
    report = read_scaling(model, _pixels(calib_folder, model), "auto", "mobilenet")
    assert not report.decisive and report.chosen == "mobilenet"
    assert "no pixel scaling clearly reproduces stem_bn" in report.warning


def test_a_model_without_batchnorm_after_its_first_conv_keeps_the_rule(calib_folder):
    import keras

    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(x)))
    report = read_scaling(model, _pixels(calib_folder, model), "auto", "raw")
    assert (report.batchnorm, report.chosen, report.mismatch, report.warning) == (None, "raw", (), None)


def test_quantize_calibrates_a_unit_model_on_unit_pixels(tmp_path, train_folder, calib_folder):
    """End to end: auto picks x / 255 for a model trained on [0, 1], the manifest says so, and the
    int8 TFLite input is quantized over [0, 1] (over [-1, 1] it would waste half its levels)."""
    from ai_edge_litert.interpreter import Interpreter

    from mobiledeploy.cli.main import main

    model = build_tiny_mobilenet(seed=3)
    _train_statistics(model, train_folder, "unit")
    model.save(tmp_path / "unit.keras")
    out = tmp_path / "build"
    result = CliRunner().invoke(main, ["quantize", str(tmp_path / "unit.keras"), "--calib", str(calib_folder),
                                       "-o", str(out), "--num-holdout", "10", "--refine", "bias"])
    assert result.exit_code == 0, result.output
    assert "input scaling: unit, x / 255" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"]["scaling"] == "unit"
    assert manifest["input_scaling"]["chosen"] == "unit" and manifest["input_scaling"]["decisive"]
    scale, zero_point = Interpreter(str(out / "model_int8.tflite")).get_input_details()[0]["quantization"]
    low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
    assert low == pytest.approx(0.0, abs=scale) and 0.9 < high < 1.01
