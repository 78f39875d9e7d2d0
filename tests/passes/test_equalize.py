"""Cross-layer equalization: the function is kept, the channel ranges are evened out, ReLU6
clipping is respected, and per-tensor int8 gets usable."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mobiledeploy.cli.main import main
from mobiledeploy.passes.equalize import equalize, find_pairs


def _model():
    """conv -> ReLU6 -> depthwise -> ReLU -> pointwise, with channel ranges 1000x apart, a
    channel that reaches the ReLU6 cap and one that never turns on."""
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="a")(inputs)
    x = keras.layers.ReLU(6.0, name="a_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.DepthwiseConv2D(3, name="b")(x)
    x = keras.layers.ReLU(name="b_relu")(x)
    outputs = keras.layers.Conv2D(4, 1, name="c")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.3, (3, 3, 3, 6)).astype(np.float32)
    bias = rng.normal(0, 0.1, 6).astype(np.float32)
    kernel[..., 1] *= 0.001  # a tiny channel: per-tensor int8 would round it to zero
    bias[1] = 0.05  # ... that is active
    kernel[..., 2] *= 20.0  # reaches the cap of 6: must not be rescaled
    bias[3] = -100.0  # never turns on
    model.get_layer("a").set_weights([kernel, bias])
    model.get_layer("b").set_weights([rng.normal(0, 1, (3, 3, 6, 1)).astype(np.float32),
                                      rng.normal(0, 0.1, 6).astype(np.float32)])
    model.get_layer("c").set_weights([rng.normal(0, 1, (1, 1, 6, 4)).astype(np.float32), np.zeros(4, np.float32)])
    return model


def _ranges(layer):
    kernel = layer.get_weights()[0]
    if type(layer).__name__ == "DepthwiseConv2D":
        return np.abs(kernel).max(axis=(0, 1, 3))
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)


def test_pairs_are_found_through_relu_and_padding():
    assert find_pairs(_model()) == [("a", "b", 6.0), ("b", "c", None)]


def test_equalization_keeps_the_function_and_evens_the_ranges():
    model = _model()
    calib = np.random.default_rng(1).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    equalized, report = equalize(model, calib)
    before, after = np.asarray(model(calib)), np.asarray(equalized(calib))
    assert np.max(np.abs(after - before)) <= 1e-4 * np.max(np.abs(before))
    assert report.pairs == 2 and report.dead_channels == 1 and report.max_scale > 10

    old, new = _ranges(model.get_layer("a")), _ranges(equalized.get_layer("a"))
    assert new[1] > 10 * old[1]  # the tiny channel grew towards the others
    assert new[2] == pytest.approx(old[2])  # the channel that hits the ReLU6 cap kept its scale
    assert new[3] == 0 and np.all(equalized.get_layer("b").get_weights()[0][:, :, 3] == 0)  # dead: zeroed
    live = [0, 1, 4, 5]
    assert np.ptp(np.log(new[live])) < np.ptp(np.log(old[live]))  # spread across channels shrank


def test_equalized_activations_stay_under_the_cap():
    model = _model()
    calib = np.random.default_rng(1).uniform(-1, 1, (32, 8, 8, 3)).astype(np.float32)
    equalized, _ = equalize(model, calib)
    import keras

    pre = np.asarray(keras.Model(equalized.inputs[0], equalized.get_layer("a").output)(calib))
    original = np.asarray(keras.Model(model.inputs[0], model.get_layer("a").output)(calib))
    clipped = original.reshape(-1, 6).max(axis=0) >= 6
    scaled = pre.reshape(-1, 6).max(axis=0)
    assert np.all(scaled[~clipped] < 6.0)  # no channel that was unclipped is clipped now
    # after the unbounded ReLU the tensor's int8 range (its largest value) must not grow
    before = np.asarray(keras.Model(model.inputs[0], model.get_layer("b").output)(calib)).max()
    after = np.asarray(keras.Model(equalized.inputs[0], equalized.get_layer("b").output)(calib)).max()
    assert after <= before * 1.0001


@pytest.fixture(scope="module")
def per_tensor_builds(tmp_path_factory):
    from conftest import REFERENCE_MODEL, ROOT

    builds = {}
    for equalize_setting in ("off", "auto"):
        out = tmp_path_factory.mktemp(equalize_setting) / "build"
        result = CliRunner().invoke(main, [str(a) for a in (
            "quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out, "--num-calib", 200,
            "--num-holdout", 100, "--per-tensor", "--equalize", equalize_setting, "--json",
            "--logit-floor", "off")],  # equalization alone; the floor is measured in test_logit_floor
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        builds[equalize_setting] = (out, json.loads(result.output))
    return builds


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_equalization_rescues_per_tensor_int8(per_tensor_builds):
    from conftest import eval_sqnr

    sqnr = {k: eval_sqnr(out) for k, (out, _) in per_tensor_builds.items()}
    for artifact in ("model_int8.tflite", "model_int8.onnx"):
        assert sqnr["auto"][artifact] > sqnr["off"][artifact] + 0.5  # measured 28.5 -> 31.5 dB
    manifest = json.loads((per_tensor_builds["auto"][0] / "manifest.json").read_text())
    assert manifest["settings"]["equalize"] == "auto" and manifest["equalization"]["pairs"] == 26
    assert json.loads((per_tensor_builds["off"][0] / "manifest.json").read_text())["equalization"] is None


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_analyze_compares_the_int8_tensors_with_the_equalized_model(per_tensor_builds, tmp_path):
    import shutil

    from conftest import ROOT

    from mobiledeploy.errors import MobiledeployError
    from mobiledeploy.evaluation.layers import analyze_build

    out = per_tensor_builds["auto"][0]
    reference = json.loads((out / "manifest.json").read_text())["equalization"]["reference"]
    assert reference["file"] == "model_equalized.keras" and (out / reference["file"]).is_file()
    report = analyze_build(out, ROOT / "eval_data" / "3", max_images=24)
    for rows in report.layers.values():
        assert len(rows) >= 27
        # measured 30.6 dB at worst; against the folded model, whose channels are not rescaled,
        # conv1_relu reads 3.3 dB and conv_pw_12_relu -0.5 dB although the int8 files are fine
        assert min(r.sqnr_db for r in rows) > 20
    changed = tmp_path / "build"
    shutil.copytree(out, changed)
    (changed / "model_equalized.keras").write_bytes(b"not a model")
    with pytest.raises(MobiledeployError, match="model_equalized.keras: contents differ from the manifest"):
        analyze_build(changed, ROOT / "eval_data" / "3", max_images=24)
