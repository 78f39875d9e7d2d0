"""End-to-end: the real CLI, the real converters and runtimes, on a tiny real model."""

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import mobiledeploy
from mobiledeploy.cli.main import main
from mobiledeploy.export.tflite import float_op_counts, float_ops
from mobiledeploy.manifest import sha256
from mobiledeploy.runtime.runners import open_runner
from conftest import cli, messages, strict_json

FILES = {"model_folded.keras", "model_float.tflite", "model_int8.tflite", "model_float.onnx",
         "model_int8.onnx", "manifest.json"}


@pytest.fixture(scope="module")
def build(tmp_path_factory, tiny_model_file, calib_folder):
    out = tmp_path_factory.mktemp("out") / "build"
    result = cli("quantize", tiny_model_file, "--calib", calib_folder, "-o", out,
                     "--num-calib", 30, "--num-holdout", 20)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_writes_all_files_and_the_table(build):
    out, output = build
    assert {p.name for p in out.iterdir()} == FILES
    assert "folded 4 BatchNorm layers" in output
    assert "model_int8.tflite" in output and "top-1 agreement" in output and "held-out" in output


def test_manifest_lists_every_file_with_its_hash(build):
    out, _ = build
    manifest = json.loads((out / "manifest.json").read_text())
    files = {f["file"]: f for f in manifest["files"]}
    assert set(files) == FILES - {"manifest.json"}
    for name, entry in files.items():
        assert entry["sha256"] == sha256(out / name) and entry["size"] == (out / name).stat().st_size
    assert manifest["preprocessing"]["scaling"] == "mobilenet"
    assert manifest["calibration"]["num_calib"] == 30 and manifest["calibration"]["seed"] == 0
    assert manifest["folding"]["passed"] and len(manifest["folding"]["folded"]) == 4
    assert manifest["versions"]["tensorflow"].startswith("2.")
    assert not set(manifest["calibration"]["calib_items"]) & set(manifest["calibration"]["holdout_items"])


def test_int8_tflite_is_fully_integer_with_int8_io(build):
    out, _ = build
    assert float_ops(out / "model_int8.tflite") == []
    runner = open_runner(out / "model_int8.tflite")
    assert runner.input["dtype"] == np.int8 and runner.output["dtype"] == np.int8
    assert float_ops(out / "model_float.tflite")  # the check does see float ops when present
    counts = float_op_counts(out / "model_float.tflite")  # the same, by operator type
    assert sum(counts.values()) == len(float_ops(out / "model_float.tflite")) and counts["CONV_2D"] >= 2
    assert float_op_counts(out / "model_int8.tflite") == {}


def test_the_manifest_says_what_onnx_runtime_runs_in_float_on_this_machine(build, reference_build):
    """The tiny model's residual Add is int8 in the file (both inputs dequantized, its output
    quantized), but ONNX Runtime on x86-64 does not fuse int8 Adds into QLinearAdd and runs it
    in float; the manifest and the terminal say so. The reference MobileNet v1 has no Add and
    fuses completely."""
    import onnx

    out, output = build
    details = {f["file"]: f["details"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    onnx_details = details["model_int8.onnx"]
    assert onnx_details["runtime_checked_on"].startswith("ONNX Runtime ")
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    adds = [n for n in graph.node if n.op_type == "Add" and "residual" in n.name]
    assert adds and all(producers[i] == "DequantizeLinear" for i in adds[0].input)  # int8 in the file
    if platform.machine() in ("x86_64", "AMD64"):
        assert onnx_details["runtime_float_ops"].get("Add", 0) >= 1
        assert "in float" in " ".join(output.split()) and "model_int8.onnx" in output
    reference = {f["file"]: f["details"] for f in json.loads((reference_build / "manifest.json").read_text())["files"]}
    assert reference["model_int8.onnx"]["runtime_float_ops"] == {}


def test_uint8_onnx_activations_fuse_the_residual_add_and_keep_the_accuracy(tmp_path, build, tiny_model_file,
                                                                            calib_folder):
    """--onnx-activations uint8: the same grid shifted by 128, so the file tracks float as the
    int8 one does; on x86-64 ONNX Runtime then fuses the residual Add; analyze reads its codes."""
    import keras
    import onnx

    from mobiledeploy.evaluation.layers import analyze
    from mobiledeploy.runtime.timing import measure
    from mobiledeploy.options import BenchSettings

    out = tmp_path / "u8"
    result = cli("quantize", tiny_model_file, "--calib", calib_folder, "-o", out, "--num-calib", 30,
                     "--num-holdout", 20, "--onnx-activations", "uint8")
    assert result.exit_code == 0, result.output
    details = {f["file"]: f["details"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert details["model_int8.onnx"]["activations"] == "uint8" and "U8S8" in result.output
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    constants = {t.name: t.data_type for t in graph.initializer}
    activation_types = {constants[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"}
    weight_types = {constants[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    assert activation_types == {onnx.TensorProto.UINT8} and onnx.TensorProto.INT8 in weight_types
    if platform.machine() in ("x86_64", "AMD64"):
        assert details["model_int8.onnx"]["runtime_float_ops"] == {}
        assert "--onnx-activations uint8" in " ".join(build[1].split())  # the int8 build suggests it
        settings = BenchSettings(warmup_runs=1, num_runs=3, min_secs=0)  # bench sees it in its own process
        assert "Add" in measure(build[0] / "model_int8.onnx", "onnx", "int8", settings).runtime_float_ops
        assert measure(out / "model_int8.onnx", "onnx", "int8", settings).runtime_float_ops == {}
    x = np.random.default_rng(1).uniform(-1, 1, (16, 24, 24, 3)).astype("float32")
    reference = open_runner(out / "model_folded.keras").run(x)
    for folder in (build[0], out):
        got = open_runner(folder / "model_int8.onnx").run(x)
        assert np.abs(got - reference).max() < 0.05
    folded = keras.saving.load_model(out / "model_folded.keras")
    rows = analyze(folded, {"model_int8.onnx": (out / "model_int8.onnx", details["model_int8.onnx"]["tensor_map"])},
                   [x])["model_int8.onnx"]
    assert rows and all(0 < row.levels_used <= 1 for row in rows)  # uint8 codes read as uint8


def test_every_artifact_runs_and_tracks_the_float_model(build, tiny_model):
    out, _ = build
    x = np.random.default_rng(0).uniform(-1, 1, (4, 24, 24, 3)).astype("float32")
    expected = np.asarray(tiny_model(x))
    for name in ("model_folded.keras", "model_float.tflite", "model_float.onnx"):
        np.testing.assert_allclose(open_runner(out / name).run(x), expected, atol=1e-4)
    for name in ("model_int8.tflite", "model_int8.onnx"):
        got = open_runner(out / name).run(x)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 0.1


def test_json_output_and_python_api_agree(tmp_path, tiny_model_file, calib_folder):
    result = cli("quantize", tiny_model_file, "--calib", calib_folder, "-o", tmp_path / "a",
                     "--num-calib", 20, "--num-holdout", 10, "--io", "float", "--json")
    assert result.exit_code == 0
    data = strict_json(result.stdout, "quantize")
    assert [d["artifact"] for d in data["drift"]] == ["model_int8.tflite", "model_int8.onnx"]
    assert all(0.0 <= d["agreement"] <= 1.0 for d in data["drift"])
    # 10 held-out images bound agreement loosely: even 10 of 10 leaves (72%, 100%) at 95%
    assert all(d["agreement_ci95"][0] < d["agreement"] <= d["agreement_ci95"][1] and d["agreement_ci95"][0] < 0.8
               for d in data["drift"])
    steps = [stage["step"] for stage in data["stages"]]  # every stage timed, in order, adding up to the run
    for first, then in [("load model", "fold BatchNorm"), ("fold BatchNorm", "export TFLite"),
                        ("export TFLite", "export ONNX"), ("export ONNX", "measure drift"),
                        ("measure drift", "write the manifest")]:
        assert steps.index(first) < steps.index(then), steps
    assert any(step.startswith("refine: ") for step in steps) and len(set(steps)) == len(steps)
    assert 0.9 * data["seconds"] <= sum(stage["seconds"] for stage in data["stages"]) <= data["seconds"] + 0.05
    timings = json.loads((tmp_path / "a" / "manifest.json").read_text())["timings"]  # the same times in the manifest
    assert timings["stages"] == data["stages"] and sum(s["seconds"] for s in data["stages"]) <= timings["total_seconds"] + 0.01
    runner = open_runner(tmp_path / "a" / "model_int8.tflite")
    assert runner.input["dtype"] == np.float32  # --io float
    api = mobiledeploy.quantize(tiny_model_file, calib_folder, tmp_path / "b", num_calib=20, num_holdout=10, io="float")
    assert [step for step, _ in api.stages] == steps
    assert [a.sha256 for a in api.artifacts if a.format == "tflite"] == [
        f["sha256"] for f in data["artifacts"] if f["format"] == "tflite"
    ]


def test_existing_output_is_refused_and_left_untouched(build, tiny_model_file, calib_folder):
    out, _ = build
    before = {p.name: sha256(p) for p in out.iterdir()}
    result = cli("quantize", tiny_model_file, "--calib", calib_folder, "-o", out)
    assert result.exit_code == 1
    assert "already exists" in result.output and "--overwrite" in result.output
    assert {p.name: sha256(p) for p in out.iterdir()} == before


@pytest.mark.parametrize("case,message", [
    ("missing_model", "model not found"),
    ("corrupt_model", "not a readable HDF5 file"),
    ("empty_calib", "no images found"),
    ("nan_calib", "contains NaN or Inf"),
    ("wrong_shape_calib", "expected (N, 24, 24, 3)"),
])
def test_bad_input_exits_1_with_one_line_and_no_output(tmp_path, tiny_model_file, calib_folder, case, message):
    model, calib = tiny_model_file, calib_folder
    if case == "missing_model":
        model = tmp_path / "missing.h5"
    elif case == "corrupt_model":
        model = tmp_path / "corrupt.h5"
        model.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    elif case == "empty_calib":
        calib = tmp_path / "empty"
        calib.mkdir()
    elif case == "nan_calib":
        calib = tmp_path / "nan.npy"
        np.save(calib, np.full((4, 24, 24, 3), np.nan, np.float32))
    elif case == "wrong_shape_calib":
        calib = tmp_path / "small.npy"
        np.save(calib, np.zeros((4, 16, 16, 3), np.uint8))
    out = tmp_path / "out"
    result = cli("quantize", model, "--calib", calib, "-o", out)
    assert result.exit_code == 1, result.output
    lines = messages(result.output)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_python_api_refuses_bad_rounding_settings_before_writing(tmp_path, tiny_model_file, calib_folder):
    from mobiledeploy.errors import MobiledeployError

    with pytest.raises(MobiledeployError, match="rounding_positions_per_weight -1"):
        mobiledeploy.quantize(tiny_model_file, calib_folder, tmp_path / "out", num_calib=20, num_holdout=0,
                              rounding_positions_per_weight=-1)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_usage_errors_exit_2_and_help_is_instant():
    result = cli("quantize", "model.h5")  # --calib missing
    assert result.exit_code == 2 and "--calib" in result.output
    assert cli("quantize", "m.h5", "--calib", "x", "--io", "int4").exit_code == 2
    assert cli("quantize", "m.h5", "--calib", "x", "--rounding-positions-per-weight", -1).exit_code == 2
    proc = subprocess.run([sys.executable, "-c", "import sys, mobiledeploy.cli.main; "
                           "print('tensorflow' in sys.modules)"], capture_output=True, text=True)
    assert proc.stdout.strip() == "False"  # --help must not pay for importing TensorFlow


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "mobiledeploy", "quantize", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--num-calib" in proc.stdout and "--per-tensor" in proc.stdout


def test_input_size_fixes_a_model_saved_without_one(tmp_path, calib_folder):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu6")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu6")(x)
    outputs = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(tmp_path / "any.keras")
    args = ["quantize", str(tmp_path / "any.keras"), "--calib", str(calib_folder), "-o", str(tmp_path / "b"),
            "--num-calib", "20", "--num-holdout", "5"]
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 1 and "--input-size" in missing.output and not (tmp_path / "b").exists()
    assert CliRunner().invoke(main, [*args, "--input-size", "20x0"]).exit_code == 2
    result = CliRunner().invoke(main, [*args, "--input-size", "28x20"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["model"]["input_shape"] == [None, 28, 20, 3] and manifest["settings"]["input_size"] == [28, 20]
    assert open_runner(tmp_path / "b" / "model_int8.tflite").input_shape == (28, 20, 3)
