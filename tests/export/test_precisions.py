"""--precision int16x8, float16 and dynamic: the files each mode writes (what they store, that both
runtimes load and run them, how close they stay to float), and that eval, check and analyze take them.

The weight-only ONNX transform and the 16-bit activation rounding are tested on their own (fast);
the whole builds on the bundled reference model are the full tier's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REFERENCE_MODEL, ROOT, cli, messages


def _tiny_onnx():
    """Conv 3->4 (3x3), depthwise Conv (group 4), global pool, MatMul 4->5: float weights with
    per-channel ranges that differ by 100x, as a folded MobileNet's do."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    conv = rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32) * np.array([1, 0.1, 0.01, 3], np.float32)[:, None, None, None]
    depthwise = rng.normal(0, 1, (4, 1, 3, 3)).astype(np.float32) * np.array([0.02, 1, 5, 0.3], np.float32)[:, None, None, None]
    dense = rng.normal(0, 1, (4, 5)).astype(np.float32)
    bias = rng.normal(0, 0.1, 4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], group=4, pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w3"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(conv, "w1"), numpy_helper.from_array(bias, "b1"),
         numpy_helper.from_array(depthwise, "w2"), numpy_helper.from_array(dense, "w3")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"w1": conv, "b1": bias, "w2": depthwise, "w3": dense}


def _run(model, x, basic: bool = False):
    """``model`` run by ONNX Runtime; ``basic``: without the fusions that pick other kernels (at its
    default level it runs a DequantizeLinear + MatMul as MatMulNBits, whose kernel rounds differently)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _with_weights(model, weights):
    from onnx import numpy_helper

    copy = type(model)()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in weights:
            tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name].astype(np.float32), tensor.name))
    return copy


def test_dynamic_onnx_stores_per_channel_int8_weights_that_onnx_runtime_runs_exactly():
    from onnx import numpy_helper

    from mobiledeploy.export.onnx_weights import weight_only

    model, weights = _tiny_onnx()
    stored = weight_only(model, "dynamic")
    initializers = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    assert initializers["w1"].dtype == np.int8 and initializers["w2"].dtype == np.int8
    assert initializers["w3"].dtype == np.int8 and initializers["b1"].dtype == np.float32  # biases stay float
    # one scale per output channel: each channel's largest weight lands on +-127, however small the channel
    assert initializers["w1_scale"].shape == (4,) and initializers["w3_scale"].shape == (5,)
    assert (np.abs(initializers["w2"]).reshape(4, -1).max(axis=1) == 127).all()
    # ONNX Runtime computes with exactly the weights on that grid: the float graph fed them gives the same
    rounded = {}
    for name, axis in (("w1", 0), ("w2", 0), ("w3", 1)):
        shape = [1] * weights[name].ndim
        shape[axis] = -1
        rounded[name] = initializers[name].astype(np.float32) * initializers[f"{name}_scale"].reshape(shape)
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    on_grid = _run(_with_weights(model, rounded), x, basic=True)
    np.testing.assert_allclose(_run(stored, x, basic=True), on_grid, rtol=1e-5, atol=1e-6)
    assert not np.allclose(on_grid, _run(model, x, basic=True), rtol=1e-6, atol=1e-7)  # the weights did change
    # as the runtime runs it by default (its own weight-only kernels): still close to those weights
    np.testing.assert_allclose(_run(stored, x), on_grid, atol=0.01 * np.abs(on_grid).max())


def test_float16_onnx_stores_half_weights_and_computes_in_float32():
    from onnx import TensorProto, numpy_helper

    from mobiledeploy.export.onnx_weights import weight_only

    model, weights = _tiny_onnx()
    stored = weight_only(model, "float16")
    types = {t.name: t.data_type for t in stored.graph.initializer}
    assert types == {"w1": TensorProto.FLOAT16, "b1": TensorProto.FLOAT16, "w2": TensorProto.FLOAT16,
                     "w3": TensorProto.FLOAT16}
    halves = {name: numpy_helper.to_array(t).astype(np.float32) for name, t in
              ((t.name, t) for t in stored.graph.initializer)}
    x = np.random.default_rng(2).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(stored, x), _run(_with_weights(model, halves), x), rtol=1e-5, atol=1e-6)
    assert _run(stored, x).dtype == np.float32


def test_sixteen_bit_activations_round_symmetrically_on_a_grid_256_times_finer():
    from mobiledeploy.passes.refine import fake_quantize, round_activations

    x = np.random.default_rng(3).normal(0, 2, 10_000).astype(np.float32)
    low, high = float(x.min()), float(x.max())
    sixteen = round_activations(x, low, high, 16)
    scale = max(abs(low), abs(high)) / 32767
    codes = sixteen / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)  # on the symmetric grid, zero point 0
    assert np.max(np.abs(sixteen - x)) <= scale / 2 * 1.001
    eight = round_activations(x, low, high, 8)
    np.testing.assert_array_equal(eight, fake_quantize(x, low, high))
    assert np.mean((eight - x) ** 2) > 1000 * np.mean((sixteen - x) ** 2)
    assert round_activations(x, low, high, None) is x  # float activations: untouched


def test_int8_only_settings_are_refused_with_another_precision(tmp_path):
    result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", tmp_path / "b",
                 "--precision", "float16", "--keep-float", "conv_pw_1")
    assert result.exit_code == 1
    (line,) = messages(result.output)
    assert "--precision float16" in line and "--keep-float" in line
    assert not (tmp_path / "b").exists()


# mixed: a budget of 0 on 100 held-out images, which full int8 misses on the reference model (99% with the
# default 200 calibration images)
EXTRA = {"mixed": ["--max-disagreement", "0", "--num-calib", "200", "--num-holdout", "100"]}


@pytest.fixture(scope="module", params=["int16x8", "mixed", "float16", "dynamic"])
def mode_build(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "build"
    result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out, "--num-calib", "64",
                 "--num-holdout", "32", "--precision", request.param, "--json", *EXTRA.get(request.param, ()))
    assert result.exit_code == 0, result.output
    return request.param, out, json.loads(result.output[result.output.index("{"):])


@pytest.mark.slow
def test_each_precision_writes_its_files_and_records_the_mode(mode_build):
    from mobiledeploy import manifest
    from mobiledeploy.data import datasets
    from mobiledeploy.runtime.runners import open_runner

    precision, out, result = mode_build
    assert result["precision"] == precision
    recorded = manifest.read(out)
    assert recorded.records["settings"]["precision"] == precision
    quantized = [a for a in recorded.files if a.quantized]
    assert sorted(a.file for a in quantized) == [f"model_{precision}.onnx", f"model_{precision}.tflite"]
    assert all(a.precision == precision for a in quantized)
    float_size = (out / "model_float.tflite").stat().st_size
    # int8 weights take about a quarter of float's bytes, float16 about half
    assert (out / f"model_{precision}.tflite").stat().st_size < (0.6 if precision == "float16" else 0.45) * float_size
    data = datasets.open_data(ROOT / "eval_data")
    x = next(datasets.iter_batches(data, recorded.preprocessing, 16))
    reference = open_runner(out / "model_folded.keras").run(x)
    for artifact in quantized:  # both runtimes load and run them, close to float
        outputs = open_runner(out / artifact.file).run(x)
        assert outputs.shape == reference.shape
        np.testing.assert_allclose(outputs, reference, atol=0.05)
    assert all(d["agreement"] >= 0.96 for d in result["drift"])
    # the int8-activation refinements are off but for mixed, and the weights are refined unless they are float16
    assert (recorded.records["logit_floor"] is None) == (precision != "mixed")
    assert (recorded.records["refinement"] is None) == (precision == "float16")


@pytest.mark.slow
@pytest.mark.parametrize("mode_build", ["mixed"], indirect=True)
def test_mixed_gives_the_layers_the_search_chose_16_bit_activations_and_meets_its_budget(mode_build):
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    from mobiledeploy import manifest

    _, out, result = mode_build
    search = result["mixed_precision"]
    assert search["kept_in"] == "int16" and search["met"] and search["agreement_loss"] == 0
    # its last round wrote the ONNX file first (rounds.py), and lists the files as every build does
    assert [d["artifact"] for d in result["drift"]] == ["model_mixed.tflite", "model_mixed.onnx"]
    assert [a.file for a in manifest.read(out).files][1:] == ["model_float.tflite", "model_mixed.tflite",
                                                              "model_float.onnx", "model_mixed.onnx"]
    chosen = search["float_layers"]
    assert 1 <= len(chosen) <= 8
    files = {a.file: a for a in manifest.read(out).files}
    tflite = files["model_mixed.tflite"]
    assert set(chosen) <= set(tflite.details["int16_layers"])
    dtypes = {d["name"]: d["dtype"] for d in Interpreter(model_path=str(out / tflite.file)).get_tensor_details()}
    tensors = tflite.details["tensor_map"]
    wide = {tensors[layer] for layer in tflite.details["int16_layers"] if layer in tensors}
    assert wide and all(dtypes[name] == np.int16 for name in wide)  # the chosen layers' outputs: 16-bit
    others = [name for layer, name in tensors.items() if name not in wide]
    assert others and all(dtypes[name] == np.int8 for name in others)  # every other layer's: int8
    graph = onnx.load(str(out / "model_mixed.onnx")).graph
    constants = {t.name: t.data_type for t in graph.initializer}
    zero_points = [constants[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points.count(onnx.TensorProto.INT16) == len(wide) and onnx.TensorProto.INT8 in zero_points
    # its int8 node units saturate on x86-64 CPUs without VNNI unless loaded as int8 files are
    from mobiledeploy.runtime.onnx_session import ORT_SESSION_CONFIG

    assert files["model_mixed.onnx"].details["session_config"] == ORT_SESSION_CONFIG


@pytest.mark.slow
def test_eval_and_the_gate_run_every_precision(mode_build):
    from mobiledeploy.evaluation.builds import check_build
    from mobiledeploy.options import GateRules

    precision, out, _ = mode_build
    result = check_build(out, ROOT / "eval_data", GateRules(max_drop=1.0, min_agreement=0.95))
    rows = {r["artifact"]: r for r in result.report.rows}
    assert {rows[f"model_{precision}.tflite"]["precision"], rows[f"model_{precision}.onnx"]["precision"]} == {precision}
    gated = {r.artifact for r in result.rules}
    assert {f"model_{precision}.tflite", f"model_{precision}.onnx"} <= gated  # the mode asked for is what is checked
    assert result.passed
    strict = check_build(out, ROOT / "eval_data", GateRules(max_drop=-0.5, min_agreement=0.95))
    assert not strict.passed  # a rule no file meets fails the gate


@pytest.mark.slow
def test_analyze_reads_sixteen_bit_tensors_and_explains_float_activations(mode_build):
    precision, out, _ = mode_build
    result = cli("analyze", out, "--data", ROOT / "eval_data", "--max-images", "32", "--json")
    if precision not in ("int16x8", "mixed"):
        assert result.exit_code == 1
        (line,) = messages(result.output)
        assert "float activations" in line and "mobiledeploy eval" in line
        return
    assert result.exit_code == 0, result.output
    layers = json.loads(result.output[result.output.index("{"):])["layers"]
    assert sorted(layers) == [f"model_{precision}.onnx", f"model_{precision}.tflite"]
    rows = [row for per_file in layers.values() for row in per_file]
    assert min(len(per_file) for per_file in layers.values()) > 10  # every layer's tensor found in both files
    # 16-bit codes: a share of the 65,536 levels, never more than all of them
    assert all(0 < row["levels_used"] <= 1 for row in rows)
    assert all(row["sqnr_db"] > 25 for row in rows)


@pytest.mark.slow
def test_bench_times_every_precision_next_to_its_agreement(mode_build):
    precision, out, result = mode_build
    quick = ["--warmup-runs", 1, "--num-runs", 3, "--min-secs", 0]
    timed = cli("bench", out, *quick, "--json")
    assert timed.exit_code == 0, timed.output
    rows = {r["artifact"]: r for r in json.loads(timed.output[timed.output.index("{"):])["rows"]}
    drift = {d["artifact"]: d["agreement"] for d in result["drift"]}
    for fmt in ("tflite", "onnx"):
        row = rows[f"model_{precision}.{fmt}"]
        assert row["precision"] == precision and row["median_ms"] > 0
        assert row["agreement"] == drift[row["artifact"]]
        assert row["speedup_vs_float"] == pytest.approx(rows[f"model_float.{fmt}"]["median_ms"] / row["median_ms"])
    table = cli("bench", out, *quick)
    says_slow = "no optimized kernels for 16-bit activations" in " ".join(table.output.split())  # unwrapped
    assert says_slow == (precision in ("int16x8", "mixed"))  # where runtimes run reference kernels, bench says so


@pytest.mark.arm
@pytest.mark.slow
def test_every_precision_runs_under_arm_emulation(mode_build, tmp_path):
    import shutil

    from mobiledeploy.runtime.arm import provisioning

    provisioning.setup()
    precision, out, _ = mode_build
    for folder in sorted(p for p in (ROOT / "eval_data").iterdir() if p.is_dir()):
        (tmp_path / folder.name).mkdir()
        for image in sorted(folder.iterdir())[:4]:
            shutil.copy(image, tmp_path / folder.name / image.name)
    result = cli("eval", out, "--data", tmp_path, "--device", "arm:cortex-a76", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["artifact"]: r for r in json.loads(result.output[result.output.index("{"):])["rows"]}
    for fmt in ("tflite", "onnx"):
        row = rows[f"model_{precision}.{fmt}"]
        assert row["device"] == "arm:cortex-a76" and row["precision"] == precision
        assert row["x86_top1_agreement"] >= 0.95  # the emulated ARM kernels give this CPU's classes
        assert row["agreement"] >= 0.9
