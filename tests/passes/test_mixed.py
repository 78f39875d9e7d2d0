"""Mixed precision: layers kept in float really run in float in both files, help accuracy,
are chosen by measured sensitivity, and bad requests get clear errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mobiledeploy.passes import mixed
from mobiledeploy.cli.main import main
from mobiledeploy.runtime.onnx_session import float_compute_nodes
from mobiledeploy.export.tflite import float_ops
from mobiledeploy.reports import LayerDrift
from mobiledeploy.reports import Drift
from conftest import cli


KEPT = ["conv1", "conv_dw_1", "conv_pw_1", "conv_dw_2"]


@pytest.fixture(scope="module")
def mixed_builds(tmp_path_factory):
    """The reference model from the plain converters, full int8 and with its first four weighted
    layers in float (the layers that lose most SQNR in it, per mobiledeploy analyze)."""
    from conftest import REFERENCE_MODEL, ROOT

    builds = {}
    for name, extra in (("int8", []), ("mixed", [arg for layer in KEPT for arg in ("--keep-float", layer)])):
        out = tmp_path_factory.mktemp(name) / "build"
        result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out,
                     "--num-holdout", 100, "--refine", "none", "--logit-floor", "off", "--json", *extra)
        assert result.exit_code == 0, result.output
        builds[name] = (out, json.loads(result.output))
    return builds


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_kept_layers_run_in_float_in_both_files(mixed_builds):
    import keras

    out, data = mixed_builds["mixed"]
    model = keras.saving.load_model(out / "model_folded.keras")
    files = {f["file"]: f["details"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    layer_of = {name: layer for layer, name in files["model_int8.tflite"]["tensor_map"].items()}
    in_float = {layer_of.get(name) for name in float_ops(out / "model_int8.tflite")} - {None}
    # each convolution is fused with its ReLU6: the operator that computes the ReLU's tensor
    assert in_float == {f"{layer}_relu" for layer in KEPT}
    region = mixed.float_layers(model, KEPT)  # also the zero padding between conv_pw_1 and conv_dw_2
    assert region == set(KEPT) | in_float | {"conv_pad_2"}
    onnx_float = float_compute_nodes(out / "model_int8.onnx")
    kept_nodes = set(files["model_int8.onnx"]["kept_nodes"])
    assert len(onnx_float) == len(KEPT) and set(onnx_float) <= kept_nodes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mixed_precision"]["float_layers"] == KEPT
    assert 0 < manifest["mixed_precision"]["float_mac_share"] < 0.2
    assert json.loads((mixed_builds["int8"][0] / "manifest.json").read_text())["mixed_precision"] is None


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_float_layers_lower_the_drift(mixed_builds):
    sqnr = {k: {d["artifact"]: d["sqnr_db"] for d in data["drift"]} for k, (_, data) in mixed_builds.items()}
    for artifact in ("model_int8.tflite", "model_int8.onnx"):
        assert sqnr["mixed"][artifact] > sqnr["int8"][artifact] + 1.0  # measured 31.1 -> 37.0 (tflite), 32.7 (onnx)


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_mixed_onnx_keeps_its_float_weights_when_loaded(tmp_path):
    """A float Conv between a DequantizeLinear and a QuantizeLinear: ONNX Runtime's
    WeightBiasQuantization would quantize its weights per tensor at load time (measured here: up
    to 9 output steps off). The runner turns it off and matches the optimizer-free reference."""
    import onnxruntime as ort

    from conftest import REFERENCE_MODEL, ROOT
    from mobiledeploy.runtime.runners import OnnxRunner

    out = tmp_path / "build"
    result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out,
                 "--num-holdout", 0, "--keep-float", "conv_pw_6")
    assert result.exit_code == 0, result.output
    assert "disabled_optimizers" in result.output  # the terminal tells users how to load the file
    batch = np.random.default_rng(0).uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(out / "model_int8.onnx"), options, providers=["CPUExecutionProvider"])
    expected = reference.run(None, {reference.get_inputs()[0].name: batch})[0]
    step = 1 / 255  # one step of the int8 softmax output: fused int8 kernels round a little differently
    assert np.max(np.abs(OnnxRunner(out / "model_int8.onnx").run(batch) - expected)) <= 1.5 * step


def test_most_sensitive_layer_comes_from_the_lost_db():
    rows = {
        "a.tflite": (LayerDrift("pw1_relu", 1, "ReLU", 30.0, 2.0, 1.0, "pw1"),
                     LayerDrift("dw2_relu", 2, "ReLU", 25.0, 5.0, 1.0, "dw2"),
                     LayerDrift("pool", 3, "GlobalAveragePooling2D", 26.0, -1.0, 1.0, None)),
        "a.onnx": (LayerDrift("pw1_relu", 1, "ReLU", 28.0, 4.0, 1.0, "pw1"),),
    }
    lost = mixed.summed_lost_db(rows)
    assert mixed.most_sensitive(lost, []) == "pw1"  # 2 + 4 dB beats 5 dB
    assert mixed.most_sensitive(lost, ["pw1"]) == "dw2"
    assert mixed.most_sensitive(lost, ["pw1", "dw2"]) is None


def test_the_refinement_measures_the_sqnr_the_int8_file_loses(tiny_model, tmp_path):
    """The search reads each layer's lost SQNR off the refinement's simulation of the int8 files
    instead of analyzing them: it must match what analyze measures on the real file."""
    import math

    from mobiledeploy.evaluation import layers as analyze
    from mobiledeploy.export import tflite as tflite_export
    from mobiledeploy.options import ExportSettings
    from mobiledeploy.passes.folding import fold_batchnorm
    from mobiledeploy.passes.refine import refine_for_int8

    folded = fold_batchnorm(tiny_model)[0]
    calib = np.random.default_rng(0).uniform(-1, 1, (64, 24, 24, 3)).astype(np.float32)
    batches = lambda which="calib": iter(np.split(calib, 4))  # noqa: E731
    errors = {}
    refined, _ = refine_for_int8(folded, calib, errors=errors)
    artifacts = tflite_export.export(folded, batches, tmp_path, ExportSettings(), refined, write_float=False)
    int8 = {a.file: (tmp_path / a.file, a.details["tensor_map"]) for a in artifacts if a.quantized}
    rows = analyze.analyze(folded, int8, batches())
    measured = {row.layer: row.sqnr_db for row in rows["model_int8.tflite"]}
    simulated = {name: 10 * math.log10(signal / error) for name, (signal, error) in errors.items() if error}
    assert list(errors) == list(measured)  # the tensors the file holds, in graph order
    for layer in ("stem_relu", "dw_relu", "pw_relu"):  # plain conv -> ReLU chains: the file's SQNR to 0.2 dB
        assert simulated[layer] == pytest.approx(measured[layer], abs=0.2)
    for layer in measured:  # the separable conv's inner tensor and the softmax's fixed grid: a few dB
        assert simulated[layer] == pytest.approx(measured[layer], abs=4.0)
    lost = mixed.lost_db(errors, folded)
    assert set(lost) == {"dw", "pw", "sep", "logits"}  # each tensor's loss goes to the layer that made it
    assert mixed.most_sensitive(lost, []) == mixed.most_sensitive(mixed.summed_lost_db(rows), []) == "sep"


def test_a_kept_layers_output_stays_float_in_the_refinements_simulation(tiny_model):
    """The files keep a kept layer's output float (mixed.float_layers): so does the simulation the
    refinement corrects the later layers for, and whose errors the search reads."""
    from mobiledeploy.passes.folding import fold_batchnorm
    from mobiledeploy.passes.refine import refine_for_int8

    folded = fold_batchnorm(tiny_model)[0]
    calib = np.random.default_rng(1).uniform(-1, 1, (48, 24, 24, 3)).astype(np.float32)
    keep = frozenset({"pw"})
    left = mixed.float_layers(folded, keep)
    rounded, unrounded = {}, {}
    refine_for_int8(folded, calib, keep_float=keep, errors=rounded)
    refine_for_int8(folded, calib, keep_float=keep, float_tensors=left, errors=unrounded)
    assert rounded["stem_relu"] == unrounded["stem_relu"] and rounded["dw_relu"] == unrounded["dw_relu"]
    power = lambda errors, name: errors[name][1] / errors[name][0]  # noqa: E731 - a tensor's error power
    assert power(unrounded, "pw_relu") < 0.5 * power(rounded, "pw_relu")  # only what reaches it from int8


def test_lost_db_is_each_tensors_sqnr_minus_the_one_before(tiny_model):
    from mobiledeploy.passes.folding import fold_batchnorm

    folded = fold_batchnorm(tiny_model)[0]
    db = lambda sqnr: (10 ** (sqnr / 10), 1.0)  # noqa: E731 - (signal, error) with that SQNR
    errors = {"stem_relu": db(40), "dw_relu": db(35), "pw_relu": db(36), "pool": db(30),
              "logits": db(28)}
    lost = mixed.lost_db(errors, folded)
    # the first tensor has nothing before it (stem); a gain counts as 0; the pool's loss is no layer's
    assert lost == pytest.approx({"dw": 5.0, "pw": 0.0, "logits": 2.0})
    assert mixed.most_sensitive(lost, []) == "dw" and mixed.most_sensitive(lost, ["dw"]) == "logits"
    assert mixed.most_sensitive(lost, ["dw", "pw", "logits"]) is None


def test_float_region_follows_a_kept_layer_until_an_int8_layer(tiny_model):
    assert mixed.float_layers(tiny_model, ["pw"]) == {"pw", "pw_bn", "pw_relu"}  # residual Add also reads sep
    tail = mixed.float_layers(tiny_model, ["logits"])
    assert tail == {"logits", "probs"}
    assert mixed.worst_loss((Drift("a", 10, 0.97, 30.0, 0.1), Drift("b", 10, 0.9, 20.0, 0.2))) == pytest.approx(10.0)
    assert mixed.worst_loss((Drift("a", 100, 99 / 100, 30.0, 0.1),)) <= 1.0  # a budget of 1 met by 99 of 100


def test_unknown_layer_and_budget_without_holdout_are_clear_errors(tmp_path):
    from conftest import REFERENCE_MODEL, ROOT

    for extra, expected in ((["--keep-float", "conv_pw_99"], "conv_pw_99 is not a convolution or Dense layer"),
                            (["--max-disagreement", "1", "--num-holdout", "0"], "set --num-holdout above 0")):
        result = CliRunner().invoke(main, ["quantize", str(REFERENCE_MODEL), "--calib", str(ROOT / "calibration_data"),
                                           "-o", str(tmp_path / "out"), *extra])
        assert result.exit_code == 1 and expected in result.output, result.output
        assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a whole search: the full tier (.ci/run)
def test_a_search_round_with_another_to_come_writes_no_int8_tflite_file(tmp_path):
    """Full int8 misses a budget of 0 on the reference model (99% agreement on these 100 held-out
    images), so its rounds until the last write the ONNX files first and stop there; the first
    one still writes the float TFLite file, which the last round's build lists."""
    import mobiledeploy
    from conftest import REFERENCE_MODEL, ROOT
    from mobiledeploy import manifest

    steps = []
    result = mobiledeploy.quantize(REFERENCE_MODEL, ROOT / "calibration_data", tmp_path / "out", max_disagreement=0,
                                   num_calib=200, num_holdout=100,
                                   progress=lambda step, done, total: steps[-1:] == [step] or steps.append(step))
    rounds = " ".join("R" if s.startswith("refine") else s.split()[-1][0] for s in steps if s.startswith(
        ("refine", "export", "measure")))  # R refine, T/O export TFLite/ONNX, d measure drift
    kept = len(result.mixed_precision.float_layers)
    assert kept >= 1 and result.mixed_precision.met
    assert rounds == "R O d T " + "R O d " * (kept - 1) + "R O d T d", steps
    files = manifest.open_build(tmp_path / "out").verified_files()
    assert [a.file for a in files] == ["model_folded.keras", "model_float.tflite", "model_int8.tflite",
                                       "model_float.onnx", "model_int8.onnx"]
