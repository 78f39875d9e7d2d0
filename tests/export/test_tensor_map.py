"""Per-tensor settings reach the right tensors whatever the layers are called: the converters'
graphs are matched to the Keras layers by what they compute (export/tensor_map.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobiledeploy.export.tensor_map import ConvertedGraph, Op, build_map


def _bottleneck_model(named: bool):
    """A MobileNetV2-style net with two residual Adds and linear 1x1 projections: with Keras'
    default names (``add``, ``add_1``, ``conv2d_3``: what tf-keras files carry and what the
    converters rename) or with names of our own."""
    import keras
    from keras import layers

    from conftest import randomize_batchnorm

    keras.utils.set_random_seed(3)

    def name(text):
        return text if named else None

    inputs = keras.Input((24, 24, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name=name("stem"))(inputs)
    x = layers.BatchNormalization(name=name("stem_bn"))(x)
    x = layers.ReLU(6.0, name=name("stem_relu"))(x)
    for block in range(2):
        h = layers.Conv2D(24, 1, use_bias=False, name=name(f"expand{block}"))(x)
        h = layers.BatchNormalization(name=name(f"expand{block}_bn"))(h)
        h = layers.ReLU(6.0, name=name(f"expand{block}_relu"))(h)
        h = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=name(f"dw{block}"))(h)
        h = layers.BatchNormalization(name=name(f"dw{block}_bn"))(h)
        h = layers.ReLU(6.0, name=name(f"dw{block}_relu"))(h)
        h = layers.Conv2D(8, 1, use_bias=False, name=name(f"project{block}"))(h)
        h = layers.BatchNormalization(name=name(f"project{block}_bn"))(h)
        x = layers.Add(name=name(f"residual{block}"))([x, h])
    x = layers.GlobalAveragePooling2D(name=name("pool"))(x)
    x = layers.Dense(4, name=name("logits"))(x)
    outputs = layers.Softmax(name=name("probs"))(x)
    model = keras.Model(inputs, outputs)
    randomize_batchnorm(model, 3)
    return model


@pytest.mark.parametrize("named", [False, True], ids=["keras default names", "own names"])
def test_ranges_reach_every_add_and_projection_in_both_files(named, calib_folder, tmp_path):
    """Every unbounded tensor (linear projections, residual Adds) gets the range it was given in
    the int8 TFLite and ONNX files; with Keras' default names this failed ('no tensor found for
    add') because the converters call those layers add_1, add_2."""
    from mobiledeploy.data import calibration
    from mobiledeploy.export import onnx as onnx_export
    from mobiledeploy.export import tflite as tflite_export
    from mobiledeploy.options import ExportSettings
    from mobiledeploy.passes.folding import fold_batchnorm
    from mobiledeploy.passes.ranges import unbounded_tensors
    from int8_scales import onnx_scales as _onnx_scales
    from int8_scales import tflite_scales as _tflite_scales

    folded, _ = fold_batchnorm(_bottleneck_model(named))
    unbounded = unbounded_tensors(folded)
    kinds = sorted(type(folded.get_layer(n)).__name__ for n in unbounded)
    assert kinds == ["Add", "Add", "Conv2D", "Conv2D", "Dense"]
    ranges = tuple((layer, -0.5 - i / 8, 1.0 + i / 4) for i, layer in enumerate(unbounded))
    cset = calibration.scan(calib_folder, calibration.preprocessing_for(folded), 20, 0)
    for export, scales, file in ((tflite_export, _tflite_scales, "model_int8.tflite"),
                                 (onnx_export, _onnx_scales, "model_int8.onnx")):
        artifacts = export.export(folded, lambda: calibration.iter_batches(cset, "calib", 10), tmp_path,
                                  ExportSettings(tensor_ranges=ranges))
        details = next(a.details for a in artifacts if a.file == file)
        assert details["fallbacks"] == [], file
        found = scales(tmp_path / file, details["tensor_map"])
        for layer, low, high in ranges:
            assert found[layer] == pytest.approx((high - low) / 255, rel=1e-4), (file, layer)


def test_a_setting_no_tensor_can_take_falls_back_and_says_so(tiny_model, calib_folder, tmp_path):
    """The stem convolution is fused with its ReLU6 in the TFLite file: no tensor holds its own
    output, so a range for it cannot apply there. The build goes on; the file says which layer
    and why. ONNX keeps the convolution's output as a tensor of its own, so it applies there."""
    from mobiledeploy.data import calibration
    from mobiledeploy.export import onnx as onnx_export
    from mobiledeploy.export import tflite as tflite_export
    from mobiledeploy.options import ExportSettings
    from mobiledeploy.passes.folding import fold_batchnorm

    folded, _ = fold_batchnorm(tiny_model)
    cset = calibration.scan(calib_folder, calibration.preprocessing_for(folded), 20, 0)
    settings = ExportSettings(tensor_ranges=(("stem", -1.0, 1.0),))
    tflite = tflite_export.export(folded, lambda: calibration.iter_batches(cset, "calib", 10), tmp_path, settings)
    details = tflite[1].details
    assert [(f["layer"], f["setting"]) for f in details["fallbacks"]] == [("stem", "activation range")]
    assert "fused" in details["fallbacks"][0]["reason"]
    assert "stem" not in details["tensor_map"] and "stem_relu" in details["tensor_map"]
    onnx_files = onnx_export.export(folded, lambda: calibration.iter_batches(cset, "calib", 10), tmp_path, settings)
    assert onnx_files[1].details["fallbacks"] == []


def _graph(*ops, values, source="in"):
    return ConvertedGraph(tuple(Op(name, kind, tuple(i), tuple(o)) for name, kind, i, o in ops), source, values)


def _chain_model(*kinds):
    """A Keras chain input -> the given layers, for matching against a hand-made graph."""
    import keras
    from keras import layers

    inputs = keras.Input((2, 2, 3), name="in")
    x = inputs
    for i, kind in enumerate(kinds):
        x = {"relu": layers.ReLU(name=f"l{i}"), "drop": layers.Dropout(0.5, name=f"l{i}"),
             "flat": layers.Flatten(name=f"l{i}"), "scale": layers.Rescaling(2.0, name=f"l{i}")}[kind](x)
    return keras.Model(inputs, x)


def test_matching_follows_values_not_names():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    model = _chain_model("scale", "drop", "relu")
    doubled, relu = 2 * image, np.maximum(2 * image, 0)
    # names that say nothing, a layout change (NCHW) and a decoy with the right size but other values
    graph = _graph(("x9", "TRANSPOSE", ["in"], ["t0"]), ("x7", "MUL", ["t0"], ["t1"]), ("x8", "ADD", ["t1"], ["decoy"]),
                   ("x5", "RELU", ["t1"], ["t2"]),
                   values={"t0": np.transpose(image, (0, 3, 1, 2)), "t1": np.transpose(doubled, (0, 3, 1, 2)),
                           "decoy": np.transpose(doubled + 1, (0, 3, 1, 2)), "t2": np.transpose(relu, (0, 3, 1, 2))})
    values = {"in": image, "l0": doubled, "l1": doubled, "l2": relu}
    mapping = build_map(model, values, graph)
    assert mapping.tensors == {"in": "in", "l0": "t1", "l1": "t1", "l2": "t2"}
    assert mapping.ops["l0"] == ("x9", "x7")  # the transpose tf2onnx inserted belongs to the first layer after it
    assert mapping.ops["l1"] == ()  # a Dropout passes its tensor on: no operator of its own
    assert mapping.ops["l2"] == ("x5",) and mapping.unmapped == ()


def test_a_layer_without_a_tensor_is_unmapped_and_its_operators_go_to_the_next():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    model = _chain_model("scale", "relu")
    relu = np.maximum(2 * image, 0)
    graph = _graph(("fused", "MUL_RELU", ["in"], ["t"]), values={"t": relu})
    mapping = build_map(model, {"in": image, "l0": 2 * image, "l1": relu}, graph)
    assert mapping.unmapped == ("l0",) and mapping.tensors["l1"] == "t"
    assert mapping.ops_of(["l1"]) == ["fused"] and mapping.ops_of(["l0"]) == []


def test_float_rounding_matches_but_a_relu_cut_does_not():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    model = _chain_model("scale")
    target = 2 * image
    rounded = target * (1 + rng.normal(0, 1e-3, target.shape)).astype(np.float32)
    assert build_map(model, {"in": image, "l0": target},
                     _graph(("a", "MUL", ["in"], ["t"]), values={"t": rounded})).tensors["l0"] == "t"
    cut = build_map(model, {"in": image, "l0": target},
                    _graph(("a", "MUL_RELU", ["in"], ["t"]), values={"t": np.maximum(target, 0)}))
    assert cut.unmapped == ("l0",)


def test_a_build_records_the_tensor_of_each_layer_it_analyzes(reference_build):
    files = {f["file"]: f["details"] for f in json.loads((reference_build / "manifest.json").read_text())["files"]}
    for name in ("model_int8.tflite", "model_int8.onnx"):
        tensors = files[name]["tensor_map"]
        relus = [layer for layer in tensors if layer.endswith("_relu")]
        assert len(relus) == 27, name  # conv1 and the 13 depthwise and 13 pointwise activations
        assert len(set(tensors.values())) == len(tensors)  # one layer per tensor
