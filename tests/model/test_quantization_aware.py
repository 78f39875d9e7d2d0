"""A model trained with quantization-aware training (TensorFlow Model Optimization's quantize
wrappers, saved by tf-keras as .h5): read without running code, quantized with the ranges its
training learned, its trained weights left as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import cli, messages, write_images

# tf-keras and TensorFlow Model Optimization in a process of their own (this one runs Keras 3):
# a tiny MobileNet-style model, wrapped for quantization-aware training and trained two epochs
TRAIN = textwrap.dedent("""
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot

    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(16, 1, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    model = tfmot.quantization.keras.quantize_model(keras.Model(inputs, outputs))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (256, 24, 24, 3)).astype("float32")
    labels = (images[:, :12].mean(axis=(1, 2, 3)) > images[:, 12:].mean(axis=(1, 2, 3))).astype("int64") * 2
    model.fit(images, labels, epochs=2, batch_size=32, verbose=0)
    model.save(sys.argv[1])
""")


@pytest.fixture(scope="module")
def qat_model(tmp_path_factory):
    pytest.importorskip("tensorflow_model_optimization")
    folder = tmp_path_factory.mktemp("qat")
    path = folder / "qat.h5"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", TRAIN, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    write_images(folder / "images", 48, size=24, seed=3)
    return path, folder / "images"


def _learned(path) -> dict[str, tuple[float, float]]:
    """Each wrapper's learned output range, read straight from the file's datasets."""
    import h5py

    ranges = {}
    with h5py.File(path) as handle:
        weights = handle["model_weights"]
        for layer in weights:
            own = weights[layer].get(f"{layer}/{layer}") or weights[layer].get(layer)
            if own is not None and "output_min:0" in own:
                ranges[layer] = (float(own["output_min:0"][()]), float(own["output_max:0"][()]))
            if own is not None and "quantize_layer_min:0" in own:
                ranges["(input)"] = (float(own["quantize_layer_min:0"][()]), float(own["quantize_layer_max:0"][()]))
    return ranges


@pytest.mark.slow
def test_learned_ranges_replace_calibration_and_the_weights_stay_as_trained(qat_model, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from mobiledeploy import manifest

    model, images = qat_model
    out = tmp_path / "build"
    result = cli("quantize", model, "--calib", images, "-o", out, "--preprocess", "unit", "--num-holdout", "8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    learned = _learned(model)
    assert len(learned) >= 4 and "(input)" in learned  # three ReLU6 outputs, the pooled features, the input
    recorded = manifest.read(out)
    qat = recorded.records["quantization_aware"]
    assert qat["input_range"] == pytest.approx(list(learned.pop("(input)")))
    assert sorted(qat["layers"]) == sorted(learned)
    assert all(qat["layers"][layer] == pytest.approx(list(pair)) for layer, pair in learned.items())
    assert data["quantization_aware"] == qat and data["refinement"] is None  # the trained weights as they are
    assert recorded.records["settings"]["refine"] == "none" and recorded.records["dither"] is None

    # the int8 files hold the learned ranges, not calibrated ones: TFLite's scales ...
    tflite = recorded.entry("model_int8.tflite")
    interpreter = Interpreter(model_path=str(out / tflite.file))
    tensors = {d["name"]: d for d in interpreter.get_tensor_details()}
    for layer, (low, high) in learned.items():
        scale, _ = tensors[tflite.details["tensor_map"][layer]]["quantization"]
        assert scale == pytest.approx((high - min(low, 0.0)) / 255, rel=1e-4), layer
    low, high = qat["input_range"]
    assert interpreter.get_input_details()[0]["quantization"][0] == pytest.approx((high - low) / 255, rel=1e-4)
    # ... and ONNX's
    import onnx
    from onnx import numpy_helper

    onnx_file = recorded.entry("model_int8.onnx")
    graph = onnx.load(str(out / onnx_file.file)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    scales = {n.input[0]: float(constants[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}
    for layer, (low, high) in learned.items():
        tensor = onnx_file.details["tensor_map"].get(layer)
        if tensor in scales:
            assert scales[tensor] == pytest.approx((high - min(low, 0.0)) / 255, rel=1e-4), layer
    # drift is reported as for any build (the toy model's classes are near-ties: SQNR, not agreement, says it is close)
    assert all(d["sqnr_db"] > 15 for d in data["drift"]), data["drift"]


@pytest.mark.slow
def test_an_unknown_quantize_config_is_refused_as_code(qat_model, tmp_path):
    import h5py

    model, images = qat_model
    edited = tmp_path / "edited.h5"
    edited.write_bytes(model.read_bytes())
    with h5py.File(edited, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        wrapper = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "QuantizeWrapperV2")
        wrapper["config"]["quantize_config"]["class_name"] = "MyQuantizeConfig"
        handle.attrs["model_config"] = json.dumps(config)
    result = cli("quantize", edited, "--calib", images, "-o", tmp_path / "b")
    assert result.exit_code == 1
    (line,) = messages(result.output)
    assert "MyQuantizeConfig" in line and "refused" in line
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_another_precision_is_refused_for_a_model_trained_for_int8(qat_model, tmp_path):
    model, images = qat_model
    result = cli("quantize", model, "--calib", images, "-o", tmp_path / "b", "--precision", "int16x8")
    assert result.exit_code == 1
    (line,) = messages(result.output)
    assert "trained for int8" in line
