"""The floor under the softmax's logits: where it applies, what it chooses, and that the
converters give the int8 logits the finer step it promises, measured on tiny real models."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mobiledeploy.cli.main import main
from mobiledeploy.passes.logit_floor import apply_floor, choose_floor, floor_logits, softmax_logits


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def int8_softmax_error(logits, floor):
    """Squared error of the softmax when relu(logits - floor) is rounded to 256 levels."""
    high = logits.max()
    step = (high - floor) / 255
    grid = np.clip(np.round((logits - floor) / step), 0, 255) * step + floor
    return np.sum((softmax(grid) - softmax(logits)) ** 2)


def imagenet_like_logits(images=200, classes=1000, seed=0):
    """A broad bulk of low logits and a few confident classes on top, as a real classifier has."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-2.0, 3.0, (images, classes))
    top = rng.integers(0, classes, (images, 3))
    logits[np.arange(images)[:, None], top] += rng.uniform(8, 18, (images, 3))
    return logits


def test_the_chosen_floor_beats_no_floor_and_every_other_candidate_range():
    logits = imagenet_like_logits()
    floor = choose_floor(logits)
    assert floor is not None and floor > logits.min() + 5
    chosen = int8_softmax_error(logits, floor)
    assert chosen < 0.7 * int8_softmax_error(logits, logits.min())
    for other in (floor - 3, floor + 3, np.median(logits.max(axis=1))):  # the search stops where clipping costs
        assert chosen <= int8_softmax_error(logits, other)
    # what the floor changes in float is negligible next to what it saves on the int8 grid
    assert np.sum((softmax(np.maximum(logits, floor)) - softmax(logits)) ** 2) < 0.2 * chosen


def test_the_floor_stays_well_below_every_calibration_images_top_class():
    logits = imagenet_like_logits()
    unsure = logits[0] - logits[0].max() - 1.0  # one image whose top logit is -1
    floor = choose_floor(np.vstack([logits, unsure]))
    assert floor is None or floor <= unsure.max() - 5.0
    assert choose_floor(logits) > unsure.max() - 5.0  # without that image the floor is higher


def test_no_floor_when_every_logit_matters():
    rng = np.random.default_rng(1)
    logits = rng.uniform(-1, 1, (300, 3))  # three close classes: the grid is already fine
    assert choose_floor(logits) is None


def _classifier(head: str, classes: int = 50, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(16, 3, activation="relu", name="features")(inputs)
    x = layers.GlobalAveragePooling2D(keepdims=head == "conv", name="pool")(x)
    if head == "conv":  # Keras' MobileNet v1: 1x1 conv -> reshape -> softmax activation
        x = layers.Conv2D(classes, 1, name="conv_preds")(x)
        x = layers.Reshape((classes,), name="flat")(x)
        outputs = layers.Activation("softmax", name="predictions")(x)
    elif head == "fused":  # Keras' MobileNet v2: Dense(activation='softmax')
        outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    elif head == "relu":
        outputs = layers.Softmax(name="probs")(layers.Dense(classes, activation="relu", name="logits")(x))
    elif head == "branch":  # the logits are also an output of their own
        logits = layers.Dense(classes, name="logits")(x)
        outputs = [layers.Softmax(name="probs")(logits), logits]
    else:  # logits out, no softmax
        outputs = layers.Dense(classes, name="logits")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # like a trained classifier: wide logits, and class priors in the biases
        if layer.name in ("conv_preds", "predictions", "logits") and layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 20, rng.normal(-4, 4, bias.shape).astype(np.float32)])
    return model


@pytest.mark.parametrize("head, found", [("conv", ("conv_preds", False)), ("fused", ("predictions", True)),
                                         ("relu", None), ("branch", None), ("logits", None)])
def test_floor_applies_only_to_a_linear_layer_feeding_the_softmax(head, found):
    assert softmax_logits(_classifier(head)) == found


@pytest.mark.parametrize("head", ["conv", "fused"])
def test_the_logits_read_are_handed_over_only_when_they_are_the_layers_own_output(head):
    import keras

    model = _classifier(head)
    images = np.random.default_rng(3).uniform(-1, 1, (40, 8, 8, 3)).astype(np.float32)
    read: dict = {}
    floor_logits(model, images, read=read)
    if head == "fused":  # the layer's output is the softmax: its logits are no tensor of the model
        assert read == {}
    else:
        expected = np.asarray(keras.Model(model.inputs[0], model.get_layer("conv_preds").output)(images))
        assert list(read) == ["conv_preds"] and np.array_equal(read["conv_preds"], expected.reshape(40, -1))


@pytest.mark.parametrize("head", ["conv", "fused"])
def test_the_floored_model_computes_softmax_of_the_floored_logits_and_leaves_the_original_alone(head):
    import keras

    model = _classifier(head)
    images = np.random.default_rng(0).uniform(-1, 1, (64, 8, 8, 3)).astype(np.float32)
    before = model.predict(images, verbose=0)
    name, fused = softmax_logits(model)
    floored = apply_floor(model, name, fused, floor=0.5)
    pooled = keras.Model(model.inputs, model.get_layer("pool").output).predict(images, verbose=0).reshape(64, -1)
    kernel, bias = model.get_layer(name).get_weights()
    logits = pooled @ kernel.reshape(-1, kernel.shape[-1]) + bias
    assert logits.min() < 0.5 < logits.max()  # the floor really lifts some logits
    assert floored.get_layer(name).get_config()["activation"] == "relu"
    assert [layer.name for layer in floored.layers][-1] == (f"{name}_softmax" if fused else "predictions")
    assert np.allclose(floored.predict(images, verbose=0), softmax(np.maximum(logits, 0.5)), atol=1e-5)
    assert np.array_equal(model.predict(images, verbose=0), before)  # a copy: the original is untouched
    assert np.allclose(before, softmax(logits), atol=1e-5)


def _int8_logit_scale(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    ops = interpreter._get_ops_details()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    softmax_op = next(op for op in ops if op["op_name"] == "SOFTMAX")
    return details[softmax_op["inputs"][0]]["quantization"][0]


@pytest.mark.parametrize("head, layer", [("conv", "conv_preds"), ("fused", "predictions")])
def test_the_int8_files_get_the_finer_logit_step_and_a_closer_softmax(tmp_path, calib_folder, head, layer):
    model = _classifier(head, classes=100)
    model.save(tmp_path / "classifier.keras")

    def build(name, *extra):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["quantize", str(tmp_path / "classifier.keras"), "--calib", str(calib_folder),
                                           "-o", str(out), "--num-holdout", "20", "--preprocess", "unit", "--json",
                                           *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return out, json.loads(result.output)

    floored, result = build("auto")
    plain, plain_result = build("off", "--logit-floor", "off")
    floor = json.loads((floored / "manifest.json").read_text())["logit_floor"]
    assert floor == result["logit_floor"] and floor["layer"] == layer and floor["step_ratio"] > 1.2
    assert floor["split_softmax"] == (head == "fused")
    assert json.loads((plain / "manifest.json").read_text())["logit_floor"] is None
    ratio = _int8_logit_scale(plain / "model_int8.tflite") / _int8_logit_scale(floored / "model_int8.tflite")
    assert ratio == pytest.approx(floor["step_ratio"], rel=0.05)
    sqnr = {row["artifact"]: row["sqnr_db"] for row in result["drift"]}
    plain_sqnr = {row["artifact"]: row["sqnr_db"] for row in plain_result["drift"]}
    for artifact in ("model_int8.tflite", "model_int8.onnx"):
        assert sqnr[artifact] > plain_sqnr[artifact] + 1.0, (sqnr, plain_sqnr)
    # analyze compares the int8 logits with the float logits under the same floor, not with raw ones
    import mobiledeploy

    report = mobiledeploy.analyze_build(floored, calib_folder, max_images=20)
    for artifact, rows in report.layers.items():
        logits = next(row for row in rows if row.layer == layer)
        assert logits.sqnr_db > 20, (artifact, logits)


def test_the_floored_copy_of_a_series_of_models_is_built_once_and_refilled_with_the_same_values():
    """The search's rounds floor a refined model of the same configuration each round
    (``FlooredCopies``): a later model's weights go into the copy made for the first, the values
    of a fresh copy; a model of another configuration, or another floor, gets a copy of its own."""
    import keras

    from mobiledeploy.passes.logit_floor import FlooredCopies, floored
    from mobiledeploy.reports import LogitFloorReport

    first = _classifier("conv", seed=0)
    second = keras.Model.from_config(first.get_config())  # the same configuration, other weights
    second.set_weights(_classifier("conv", seed=1).get_weights())
    report = LogitFloorReport("conv_preds", False, 0.5, (-3.0, 9.0), 1.2, 0.3)
    copies = FlooredCopies()
    copy = copies.of(first, report)
    assert copies.of(second, report) is copy
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), floored(second, report).get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), floored(first, report).get_weights()))
    lower = LogitFloorReport("conv_preds", False, 0.25, (-3.0, 9.0), 1.2, 0.3)
    other = copies.of(second, lower)
    assert other is not copy and np.array_equal(other.get_layer("conv_preds").get_weights()[1],
                                                second.get_layer("conv_preds").get_weights()[1] - np.float32(0.25))
    assert copies.of(_classifier("fused"), None) is not other  # no floor: the model itself
