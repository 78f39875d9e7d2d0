"""ARM emulation: the real LiteRT and ONNX Runtime aarch64 kernels under qemu-user.

Provisioning runs once per session (the user cache keeps it between runs; ~10 s when empty).
"""

import json
import os
import shutil

import pytest

from mobiledeploy.runtime.arm import emulation

from mobiledeploy.runtime.arm import provisioning
from mobiledeploy.errors import MobiledeployError
from conftest import cli

pytestmark = pytest.mark.arm

OUTPUT_LSB = 1 / 256  # the int8 softmax output's scale


@pytest.fixture(scope="session")
def arm_ready():
    return provisioning.setup()


@pytest.fixture(scope="module")
def x86_rows(reference_build, eval_subset):
    return {r["artifact"]: r for r in json.loads(cli("eval", reference_build, "--data", eval_subset, "--json").output)["rows"]}


@pytest.mark.parametrize("cpu", ["cortex-a53", "cortex-a76"])
def test_eval_on_arm_matches_x86(arm_ready, reference_build, eval_subset, x86_rows, cpu):
    result = cli("eval", reference_build, "--data", eval_subset, "--device", f"arm:{cpu}", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["device"] == f"arm:{cpu}" and report["samples"] == 200
    rows = {r["artifact"]: r for r in report["rows"]}
    assert rows["model_folded.keras"]["device"] == "cpu"
    for name, row in rows.items():
        if name.endswith(".keras"):
            continue
        assert row["device"] == f"arm:{cpu}"
        assert row["x86_top1_agreement"] == 1.0
        assert row["top1"] == x86_rows[name]["top1"] and row["agreement"] == x86_rows[name]["agreement"]
    # ONNX Runtime's int8 kernels are bit-exact across x86 and ARM
    assert rows["model_int8.onnx"]["x86_identical"] == 1.0 and rows["model_int8.onnx"]["x86_max_abs_diff"] == 0
    # LiteRT's int8 output can differ by one output step on a few images (measured: 5 of 2,000)
    assert rows["model_int8.tflite"]["x86_identical"] >= 0.98
    assert rows["model_int8.tflite"]["x86_max_abs_diff"] <= OUTPUT_LSB + 1e-9
    # float kernels sum in another order: tiny differences, never bit-exactness promised
    for name in ("model_float.tflite", "model_float.onnx"):
        assert rows[name]["x86_max_abs_diff"] < 1e-4


def test_eval_on_arm_in_two_workers_reports_what_one_reports(arm_ready, reference_build, eval_subset):
    """--workers 2: each emulated file runs in two qemu processes, each on half of the batches;
    every metric, the bit-exactness against this CPU's outputs included, is the single process's."""
    runs = [cli("eval", reference_build, "--data", eval_subset, "--device", "arm:cortex-a53", "--batch-size", 32,
                "--workers", workers, "--json") for workers in (1, 2)]
    assert all(run.exit_code == 0 for run in runs), [run.output for run in runs]
    one, two = (json.loads(run.output) for run in runs)
    assert one["rows"] == two["rows"] and one["samples"] == two["samples"] == 200
    assert {row["device"] for row in two["rows"]} == {"cpu", "arm:cortex-a53"}


def test_compared_file_runs_on_arm_too(arm_ready, reference_build, eval_subset, tmp_path):
    """A --compare file named like the build's own (model_int8.tflite) gets its own emulated run."""
    other = tmp_path / "other" / "model_int8.tflite"
    other.parent.mkdir()
    shutil.copy(reference_build / "model_int8.tflite", other)
    result = cli("eval", reference_build, "--data", eval_subset, "--device", "arm:cortex-a76", "--compare", other,
                 "--json")
    assert result.exit_code == 0, result.output
    rows = {r["artifact"]: r for r in json.loads(result.output)["rows"]}
    compared, own = rows[str(other)], rows["model_int8.tflite"]
    assert compared["compared"] and compared["device"] == "arm:cortex-a76"
    for metric in ("top1", "agreement", "sqnr_db", "x86_identical"):
        assert compared[metric] == own[metric]


def test_eval_table_and_gate_on_arm(arm_ready, reference_build, eval_subset, tmp_path):
    result = cli("check", reference_build, "--data", eval_subset, "--device", "arm:cortex-a76",
                 "--max-drop", 2.0, "--junit-xml", tmp_path / "arm.xml")
    assert result.exit_code == 0, result.output
    assert result.output.count("arm:cortex-a76") >= 4  # the title and one row per tflite/onnx file
    assert "PASS  max-drop" in result.output and (tmp_path / "arm.xml").is_file()


@pytest.mark.parametrize("cpu, dot", [("cortex-a53", False), ("cortex-a76", True)])
def test_bench_on_arm_is_labelled_emulated(arm_ready, reference_build, cpu, dot):
    result = cli("bench", reference_build / "model_int8.tflite", "--device", f"arm:{cpu}", "--num-runs", 3, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    row = report["rows"][0]
    assert report["device"] == row["device"] == f"arm:{cpu}" and row["runs"] >= 3 and row["median_ms"] > 0
    model = {"cortex-a53": "Cortex-A53", "cortex-a76": "Cortex-A76"}[cpu]
    assert row["cpu"].startswith(f"{model}, aarch64: asimd (NEON)") and ("asimddp" in row["cpu"]) == dot
    table = cli("bench", reference_build / "model_int8.onnx", "--device", f"arm:{cpu}", "--num-runs", 2).output
    assert "EMULATED by qemu (not device latency)" in table and "fastest" not in table


def test_onnx_files_run_on_arm_with_the_optimizers_the_host_chose(arm_ready, tmp_path):
    """The emulated worker has no onnx package to read a graph: the host decides which ONNX
    Runtime optimizers to turn off and passes that on. An all-int8 file with float biases (as
    AIMET writes them) fuses into QLinearConv there as here; a float layer of a mixed file stays
    a float Conv (the optimizer would make it per-tensor int8)."""
    import numpy as np
    import onnx
    from qdq_files import qdq_conv

    from mobiledeploy.runtime.runners import open_runner
    from mobiledeploy.runtime.host import outputs_of

    arm = emulation.target("cortex-a76").process()
    x = np.random.default_rng(3).uniform(-2, 2, (2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for int8_weights in (True, False):
        path = tmp_path / f"int8_weights_{int8_weights}.onnx"
        onnx.save(qdq_conv(int8_weights), path)
        result = cli("bench", path, "--device", "arm:cortex-a76", "--num-runs", 2, "--json")
        assert result.exit_code == 0, result.output
        float_ops = json.loads(result.output)["rows"][0]["runtime_float_ops"]
        assert ("Conv" in float_ops) != int8_weights, float_ops
        if int8_weights:  # bit for bit what the exact int8 kernels compute on x86
            on_arm = outputs_of(path, "onnx", [str(tmp_path / "x.npy")], tmp_path, arm)
            np.testing.assert_array_equal(on_arm, open_runner(path).run(x).reshape(2, -1))


def test_status_reports_the_installation(arm_ready):
    data = json.loads(cli("arm", "status", "--json").output)
    assert data["ready"] and data["sysroot_python"] and data["disk_mb"] > 50
    assert set(data["wheels"]) == {"numpy", "onnxruntime", "ai-edge-litert"}


@pytest.mark.parametrize("device, message", [
    ("arm:max", "SME kernels"),
    ("arm:cortex-m4", "unknown ARM CPU"),
    ("gpu", "unknown device"),
])
def test_bad_devices_are_usage_errors(reference_build, device, message):
    result = cli("bench", reference_build, "--device", device)
    assert result.exit_code == 2 and message in result.output


def test_provisioning_errors_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILEDEPLOY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MobiledeployError, match="not set up; run: mobiledeploy arm setup"):
        emulation.target("cortex-a76")
    result = cli("arm", "setup", "--sysroot", tmp_path / "nowhere")
    assert result.exit_code == 1 and "--sysroot" in result.output and "no such folder" in result.output
    (tmp_path / "empty_root").mkdir()
    result = cli("arm", "setup", "--sysroot", tmp_path / "empty_root")
    assert result.exit_code == 1 and "no usr/bin/python3.11" in result.output
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu, no apt-get, no dpkg
    result = cli("arm", "setup")
    assert result.exit_code == 1 and "install qemu-user-static" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("content", [b"[" * 100_000, b"not json", b"1" * 400, None],
                         ids=["deep", "not JSON", "400 digits", "a FIFO"])
def test_a_damaged_record_of_the_installed_wheels_means_installing_again(tmp_path, content):
    """The cache's record of what it installed is read as hostile: damaged, it is no record (the
    wheels install again) rather than a RecursionError, ValueError or a read that never ends."""
    marker = tmp_path / ".mobiledeploy-wheels.json"
    if content is None:
        os.mkfifo(marker)
    else:
        marker.write_bytes(content)
    assert provisioning._recorded(marker) is None
    marker.unlink()
    marker.write_text(json.dumps({"numpy": "2.4.6"}))
    assert provisioning._recorded(marker) == {"numpy": "2.4.6"}
