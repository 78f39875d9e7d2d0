"""--activation-ranges mse: tensors no ReLU bounds get the int8 range with the least rounding +
clipping error, and both int8 files use it instead of the calibration min/max."""

from __future__ import annotations

import json

import numpy as np
import pytest
from int8_scales import onnx_scales as _onnx_scales
from int8_scales import tflite_scales as _tflite_scales

from mobiledeploy.passes.ranges import mse_ranges, narrowest_error, unbounded_tensors
from mobiledeploy.passes.refine import fake_quantize


def test_long_tails_get_a_narrower_range_and_flat_values_keep_theirs():
    rng = np.random.default_rng(0)
    tailed = rng.laplace(0, 1, 200_000)  # a bottleneck-like tensor: most values near 0, a few far out
    low, high = float(tailed.min()), float(tailed.max())
    found = narrowest_error(tailed, low, high)
    assert found is not None and low < found[0] < 0 < found[1] < high

    def error(a, b):
        return np.mean((tailed - fake_quantize(np.clip(tailed, a, b), a, b)) ** 2)

    assert error(*found) < 0.95 * error(low, high)
    flat = rng.uniform(-3, 3, 200_000)  # every level is used: clipping only hurts
    assert narrowest_error(flat, float(flat.min()), float(flat.max())) is None


def test_only_tensors_without_a_relu_are_candidates(tiny_model):
    from mobiledeploy.passes.folding import fold_batchnorm

    folded, _ = fold_batchnorm(tiny_model)
    # stem, dw and pw outputs go through a ReLU; the separable conv, the Add and the logits do not
    assert unbounded_tensors(folded) == ["sep", "residual", "logits"]


def test_outputs_already_read_are_taken_as_given_and_the_rest_computed():
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((24, 24, 3))
    model = keras.Model(image, keras.layers.Conv2D(4, 1, name="logits")(keras.layers.Conv2D(8, 1, name="proj")(image)))
    calib = np.random.default_rng(1).laplace(0, 1, (40, 24, 24, 3)).astype(np.float32)  # long tails in both
    computed = mse_ranges(model, calib)
    assert set(computed) == {"proj", "logits"}
    logits = np.asarray(keras.Model(image, model.get_layer("logits").output)(calib))
    # the logits as the floor hands them over: the same ranges as computing them
    assert mse_ranges(model, calib, known={"logits": logits}) == computed
    # other values are taken as they are (their own min/max), and the rest is computed
    given = mse_ranges(model, calib, known={"logits": 3 * logits})
    assert given["logits"][2:] == (float((3 * logits).min()), float((3 * logits).max()))
    assert given["proj"] == computed["proj"]
    # values for another number of images than calib's are not taken
    assert mse_ranges(model, calib, known={"logits": 3 * logits[:10]}) == computed


def _tensor_map(folder, name) -> dict[str, str]:
    files = json.loads((folder / "manifest.json").read_text())["files"]
    return next(f["details"]["tensor_map"] for f in files if f["file"] == name)


def test_both_exporters_use_the_ranges_they_are_given(tiny_model, calib_folder, tmp_path):
    from mobiledeploy.data import calibration
    from mobiledeploy.export import onnx as onnx_export
    from mobiledeploy.export import tflite as tflite_export
    from mobiledeploy.passes.folding import fold_batchnorm
    from mobiledeploy.options import ExportSettings

    folded, _ = fold_batchnorm(tiny_model)
    cset = calibration.scan(calib_folder, calibration.preprocessing_for(folded), 40, 0)
    settings = ExportSettings(tensor_ranges=(("sep", -0.5, 0.75), ("residual", -0.25, 2.0)))
    for export, scales, name in ((tflite_export, _tflite_scales, "model_int8.tflite"),
                                 (onnx_export, _onnx_scales, "model_int8.onnx")):
        artifacts = export.export(folded, lambda: calibration.iter_batches(cset, "calib", 20), tmp_path, settings)
        tensors = next(a.details["tensor_map"] for a in artifacts if a.file == name)
        found = scales(tmp_path / name, tensors)
        assert found["sep"] == pytest.approx(1.25 / 255, rel=1e-4), name
        assert found["residual"] == pytest.approx(2.25 / 255, rel=1e-4), name
        assert found["logits"] != pytest.approx(1.25 / 255, rel=0.05)  # the others keep their calibration


def test_a_build_records_and_uses_its_narrower_ranges(tiny_model_file, calib_folder, tmp_path):
    import mobiledeploy

    result = mobiledeploy.quantize(tiny_model_file, calib_folder, tmp_path / "mse", activation_ranges="mse",
                                   num_holdout=20)
    mobiledeploy.quantize(tiny_model_file, calib_folder, tmp_path / "minmax", activation_ranges="minmax",
                          num_holdout=20)
    chosen = json.loads((tmp_path / "mse" / "manifest.json").read_text())["activation_ranges"]
    assert chosen, "no tensor of the tiny model got a narrower range: the test would check nothing"
    assert [r[0] for r in result.activation_ranges] == sorted(chosen)
    assert all(r[1:3] == tuple(chosen[r[0]]["range"]) for r in result.activation_ranges)
    assert json.loads((tmp_path / "minmax" / "manifest.json").read_text())["activation_ranges"] is None
    for scales, name in ((_tflite_scales, "model_int8.tflite"), (_onnx_scales, "model_int8.onnx")):
        found = scales(tmp_path / "mse" / name, _tensor_map(tmp_path / "mse", name))
        for layer, entry in chosen.items():
            low, high = entry["range"]
            assert found[layer] == pytest.approx((high - low) / 255, rel=1e-4), (name, layer)
            cal_low, cal_high = entry["calibrated"]
            assert high - low < max(cal_high, 0) - min(cal_low, 0)
