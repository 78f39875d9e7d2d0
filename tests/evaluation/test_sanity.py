"""Warnings for results that mean little: a one-answer float model, int8 noise, evaluating on the
calibration images."""

import json
from pathlib import Path

import numpy as np

from conftest import ROOT, cli
from mobiledeploy.evaluation import sanity
from mobiledeploy.evaluation.metrics import drift
from mobiledeploy.reports import Head

CLASSES = Head()


def test_a_model_that_answers_one_class_is_flagged():
    rng = np.random.default_rng(0)
    varied = rng.normal(size=(100, 10))
    assert sanity.float_model(varied, CLASSES, "images") == []
    constant = np.tile(rng.normal(size=(1, 10)), (100, 1))
    assert "same output for all 100 images" in sanity.float_model(constant, CLASSES, "images")[0]
    one_class = varied.copy()
    one_class[:, 3] += 100  # different outputs, one answer
    assert "class 3 for 100 of 100 images" in sanity.float_model(one_class, CLASSES, "images")[0]
    assert sanity.float_model(one_class[:10], CLASSES, "images") == []  # too few images to say


def test_int8_outputs_that_are_mostly_noise_are_flagged():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(50, 10))
    close = drift("close.tflite", reference, reference + 0.01 * rng.normal(size=reference.shape))
    noise = drift("noise.tflite", reference, rng.normal(size=reference.shape))
    warnings = sanity.int8_files((close, noise))
    assert len(warnings) == 1 and warnings[0].startswith("noise.tflite: output SQNR")


def test_evaluation_images_that_were_calibration_images_are_flagged(tmp_path):
    calibration = ("cat/001.jpg", "dog/007.jpg", "002.jpg")
    same = [tmp_path / "calib" / "cat" / "001.jpg", tmp_path / "calib" / "dog" / "008.jpg"]
    assert "1 of the 2 evaluation images" in sanity.calibrated_on(tuple(same), calibration)[0]
    other_class = [tmp_path / "val" / "dog" / "001.jpg"]  # the same name in another class folder
    assert sanity.calibrated_on(tuple(other_class), calibration) == []
    assert sanity.calibrated_on((0, 1, 2), calibration) == []  # rows of an array have no names


def test_eval_on_the_calibration_folder_warns(reference_build, tmp_path):
    # the reference build was calibrated on calibration_data/ (no holdout): evaluate on ten of them
    names = json.loads((reference_build / "manifest.json").read_text())["calibration"]["calib_items"]
    folder = tmp_path / "again"
    folder.mkdir()
    for name in names[:10]:
        (folder / Path(name).name).write_bytes((ROOT / "calibration_data" / name).read_bytes())
    result = cli("eval", reference_build, "--data", folder, "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert any("10 of the 10 evaluation images are calibration images" in w for w in warnings), warnings
    fresh = cli("eval", reference_build, "--data", ROOT / "eval_data" / "3", "--json")
    assert json.loads(fresh.stdout)["warnings"] == []


def test_quantizing_a_model_that_ignores_its_input_warns(tmp_path, calib_folder):
    from conftest import build_tiny_mobilenet

    model = build_tiny_mobilenet()
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), np.arange(len(bias), dtype=bias.dtype)])  # one answer, always
    model.save(tmp_path / "blind.keras")
    result = cli("quantize", tmp_path / "blind.keras", "--calib", calib_folder, "-o", tmp_path / "out",
                 "--num-holdout", 20, "--refine", "none", "--json")
    assert result.exit_code == 0, result.output
    warnings = json.loads(result.stdout)["warnings"]
    assert any(w.startswith("the float model gives the same output for all") for w in warnings), warnings
