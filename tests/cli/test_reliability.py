"""Determinism across processes and clean interruption, through the real CLI in subprocesses."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REFERENCE_MODEL, ROOT


def _digests(folder: Path) -> dict[str, str]:
    """Each file's sha256; the manifest's without its timings, the one record that differs run to run."""
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest.pop("timings")["stages"]
    digests["manifest.json"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return digests


def _quantize(model, calib, out, seed: str, *extra):
    env = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "mobiledeploy", "quantize", str(model), "--calib", str(calib),
                             "-o", str(out), "--num-holdout", "10", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # separate processes, each importing TensorFlow: the full tier (.ci/run)
def test_two_processes_write_identical_files(tiny_model_file, calib_folder, tmp_path):
    """Different string-hash seeds (which reorder tf2onnx's internal sets) and still the same bytes."""
    runs = [_quantize(tiny_model_file, calib_folder, tmp_path / seed, seed) for seed in ("1", "2")]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()
    first, second = _digests(tmp_path / "1"), _digests(tmp_path / "2")
    assert set(first) == {"manifest.json", "model_folded.keras", "model_float.tflite", "model_int8.tflite",
                          "model_float.onnx", "model_int8.onnx"}
    assert first == second


def _wait_for_staging(parent: Path, name: str, process, limit: float = 120.0) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < limit and process.poll() is None:
        if list(parent.glob(f".{name}.partial-*")):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # separate processes, each importing TensorFlow: the full tier (.ci/run)
def test_sigterm_mid_conversion_leaves_no_output(tmp_path):
    out = tmp_path / "build"
    run = _quantize(REFERENCE_MODEL, ROOT / "calibration_data", out, "0")
    assert _wait_for_staging(tmp_path, "build", run), "the conversion never started writing"
    run.send_signal(signal.SIGTERM)
    code, stderr = run.wait(timeout=120), run.stderr.read()
    assert code == 143 and "terminated: nothing was written" in stderr, stderr
    assert not out.exists() and not list(tmp_path.glob(".build.partial-*"))


@pytest.mark.slow  # separate processes, each importing TensorFlow: the full tier (.ci/run)
def test_sigterm_keeps_the_previous_complete_result(reference_build, tmp_path):
    out = tmp_path / "build"
    shutil.copytree(reference_build, out)
    before = _digests(out)
    run = _quantize(REFERENCE_MODEL, ROOT / "calibration_data", out, "0", "--overwrite", "--refine", "none")
    assert _wait_for_staging(tmp_path, "build", run)
    run.send_signal(signal.SIGTERM)
    code, stderr = run.wait(timeout=120), run.stderr.read()
    assert code == 143 and "terminated: nothing was written" in stderr, stderr
    assert _digests(out) == before and not list(tmp_path.glob(".build.partial-*"))


def test_an_error_a_library_raises_after_sigterm_still_exits_143(tmp_path):
    """A library that catches Terminated and raises its own error: SIGTERM during the TFLite
    conversion once exited 1 with "TFLite converter failed: 'NoneType' object is not callable"."""
    from click.testing import CliRunner

    from mobiledeploy import staging
    from mobiledeploy.cli.main import main

    args = ["quantize", str(tmp_path / "missing.h5"), "--calib", str(ROOT / "calibration_data"),
            "-o", str(tmp_path / "b")]
    assert CliRunner().invoke(main, args).exit_code == 1  # the error itself, without SIGTERM
    staging._termination.set()
    try:
        result = CliRunner().invoke(main, args)
    finally:
        staging._termination.clear()
    assert result.exit_code == 143 and "terminated: nothing was written" in result.output
    assert not (tmp_path / "b").exists()


def test_reports_are_identical_run_to_run(reference_build):
    from click.testing import CliRunner

    from mobiledeploy.cli.main import main

    args = ["eval", str(reference_build), "--data", str(ROOT / "eval_data" / "7"), "--json"]
    first, second = (CliRunner().invoke(main, args).output for _ in range(2))
    assert json.loads(first)["samples"] == 200 and first == second
