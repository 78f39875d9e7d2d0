"""The real ImageNet MobileNet v1 0.25 saved by Keras 2.8 (../shared/data); skipped when absent."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import shared_data
from mobiledeploy.export.tflite import float_ops
from mobiledeploy.passes import mixed
from mobiledeploy.data.calibration import iter_batches, preprocessing_for, scan
from mobiledeploy.cli.main import main
from mobiledeploy.model.loading import load_model

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def data():
    return shared_data()


def _labels(data, files):
    index = {}
    for line in (data / "imagenet-dev" / "classes.txt").read_text().splitlines():
        i, wnid, _ = line.split("\t", 2)
        index[wnid] = int(i)
    return np.array([index[f.rsplit("/", 1)[-1].split("_", 1)[0]] for f in files])


def test_keras2_file_loads_with_its_imagenet_accuracy(data):
    loaded = load_model(data / "models" / "mobilenet_v1_0.25_224.h5")
    assert loaded.saved_by == "2.8.0" and loaded.model.count_params() == 475_544
    pre = preprocessing_for(loaded.model)
    cset = scan(data / "imagenet-dev" / "images", pre, num_calib=100, seed=123)
    probs = np.concatenate([np.asarray(loaded.model(b)) for b in iter_batches(cset, "calib", 25)])
    top1 = float(np.mean(probs.argmax(1) == _labels(data, cset.calib)))
    assert top1 > 0.45  # ~60% on these images; random weights would give 0.1%


@pytest.fixture(scope="module")
def real_build(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "build"
    result = CliRunner().invoke(main, [
        "quantize", str(data / "models" / "mobilenet_v1_0.25_224.h5"),
        "--calib", str(data / "imagenet-dev" / "images"), "-o", str(out),
        "--num-calib", "100", "--num-holdout", "60", "--json",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


def test_quantize_real_model(real_build):
    out, report = real_build
    assert len(report["folding"]["folded"]) == 27 and report["folding"]["passed"]
    for row in report["drift"]:
        assert row["samples"] == 60
        assert 0.5 < row["agreement"] <= 1.0 and row["sqnr_db"] > 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["saved_by_keras"] == "2.8.0"


def test_max_drop_search_keeps_layers_in_float_on_real_model(data, tmp_path):
    """The budget search on a real model: plain converters (78% agreement on these images), so
    a budget of 0 cannot be met by full int8; each round keeps one more layer in float, and the
    build holds the last round's files (its float layers run in float)."""
    out = tmp_path / "build"
    result = CliRunner().invoke(main, [
        "quantize", str(data / "models" / "mobilenet_v1_0.25_224.h5"),
        "--calib", str(data / "imagenet-dev" / "images"), "-o", str(out),
        "--num-calib", "40", "--num-holdout", "25", "--refine", "none", "--dither", "off", "--max-disagreement", "0",
    ])
    assert result.exit_code in (0, 3), result.output
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = manifest["mixed_precision"]
    weighted = {"Conv2D", "DepthwiseConv2D"}
    model = load_model(data / "models" / "mobilenet_v1_0.25_224.h5").model
    assert chosen["float_layers"] and all(type(model.get_layer(n)).__name__ in weighted for n in chosen["float_layers"])
    worst = max(100 * (1 - row["agreement"]) for row in manifest["drift"]["rows"])
    assert chosen["agreement_loss"] == pytest.approx(worst, abs=0.01)
    assert chosen["met"] == (result.exit_code == 0) == (worst <= 0)
    if result.exit_code == 3:
        assert len(chosen["float_layers"]) == 8 and "--max-disagreement 0 not met" in result.output
    files = {f["file"]: f["details"] for f in manifest["files"]}
    layer_of = {name: layer for layer, name in files["model_int8.tflite"]["tensor_map"].items()}
    in_float = {layer_of.get(name) for name in float_ops(out / "model_int8.tflite")} - {None}
    owners = {name.removesuffix("_relu") for name in in_float}  # a conv's op computes its ReLU6's tensor
    assert set(chosen["float_layers"]) <= owners <= mixed.float_layers(model, chosen["float_layers"])


def test_analyze_reads_the_onnx_tensors_the_file_computes(real_build):
    """analyze's ONNX tensors are those ONNX Runtime computes when it runs the file (fused int8
    kernels): the last pointwise layer's codes, fed to the rest of the file, give the whole
    file's outputs exactly. Read from the graph with the tensors as extra outputs instead (its
    QDQ units unfused: float between Q and DQ), 0.7% of these output values differ."""
    import onnx
    import onnxruntime as ort

    from mobiledeploy.evaluation.layers import OnnxTaps
    from mobiledeploy.runtime.onnx_session import ORT_DISABLED_OPTIMIZERS
    from mobiledeploy.runtime.runners import open_runner

    out, _ = real_build
    path = out / "model_int8.onnx"
    recorded = json.loads((out / "manifest.json").read_text())["files"]
    taps = OnnxTaps(path, next(f["details"]["tensor_map"] for f in recorded if f["file"] == "model_int8.onnx"))
    x = np.random.default_rng(0).uniform(-1, 1, (16, 224, 224, 3)).astype("float32")
    codes = np.transpose(taps.run(x)["conv_pw_13_relu"][1], (0, 3, 1, 2))  # the file's NCHW layout
    model = onnx.load(str(path))
    dequantize = next(n for n in model.graph.node if n.output[0] == taps.taps["conv_pw_13_relu"])
    rest = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model)).extract_model(
        [dequantize.input[0]], [model.graph.output[0].name])
    session = ort.InferenceSession(rest.SerializeToString(), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=ORT_DISABLED_OPTIMIZERS)
    composed = session.run(None, {session.get_inputs()[0].name: codes})[0]
    assert codes.shape == (16, 256, 7, 7) and codes.dtype == np.int8
    np.testing.assert_array_equal(composed, open_runner(path).run(x))
