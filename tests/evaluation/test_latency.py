"""bench: statistics, output formats and bad inputs, with the real runtimes in child processes.

No test asserts a timing: only that the numbers are consistent with each other.
"""

import csv
import re
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobiledeploy.runtime.timing import statistics, summarize_ort_profile, timed_runs
from mobiledeploy.options import BenchSettings
from conftest import cli, messages

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--warmup-runs", 1, "--num-runs", 5, "--min-secs", 0]


def test_statistics_of_known_values():
    stats = statistics([4.0, 1.0, 3.0, 2.0, 100.0])
    assert stats["runs"] == 5 and stats["median_ms"] == 3.0 and stats["mean_ms"] == 22.0
    assert (stats["min_ms"], stats["max_ms"]) == (1.0, 100.0)
    assert stats["p90_ms"] == pytest.approx(61.6) and stats["p99_ms"] == pytest.approx(96.16)
    assert stats["std_ms"] == pytest.approx(np.std([1, 2, 3, 4, 100]))
    with pytest.raises(ValueError):
        statistics([])


class Clock:
    """A clock that advances 10 ms per call to it, so run counts are exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 0.01
        return self.now


def test_timed_runs_honours_runs_min_and_max_secs():
    calls = []
    # each timed run reads the clock twice (20 ms); 3 runs take 60 ms, so min_secs decides
    times = timed_runs(lambda: calls.append(1), BenchSettings(warmup_runs=2, num_runs=3, min_secs=0.19), Clock())
    assert len(times) == 10 and len(calls) == 12 and all(t == pytest.approx(10.0) for t in times)
    times = timed_runs(lambda: None, BenchSettings(warmup_runs=0, num_runs=1000, min_secs=0, max_secs=0.095), Clock())
    assert len(times) == 5  # max_secs stops it long before num_runs
    times = timed_runs(lambda: None, BenchSettings(warmup_runs=0, num_runs=7, min_secs=0), Clock())
    assert len(times) == 7


def test_ort_profile_summary_ranks_nodes_per_run():
    events = [{"cat": "Session", "name": "model_run", "dur": 900}] * 2 + [
        {"cat": "Node", "name": "conv_a_kernel_time", "dur": 300, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "conv_a_kernel_time", "dur": 500, "args": {"op_name": "QLinearConv"}},
        {"cat": "Node", "name": "pool_kernel_time", "dur": 200, "args": {"op_name": "GlobalAveragePool"}},
        {"cat": "Node", "name": "conv_a_fence_before", "dur": 999, "args": {"op_name": "QLinearConv"}},
    ]
    rows = summarize_ort_profile(events, top=5)
    assert [r["node"] for r in rows] == ["conv_a", "pool"]
    assert rows[0]["ms_per_run"] == pytest.approx(0.4) and rows[0]["share"] == pytest.approx(0.8)
    assert summarize_ort_profile(events, top=1) == rows[:1]


@pytest.fixture(scope="module")
def bench_json(reference_build):
    result = cli("bench", reference_build, *QUICK, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_bench_times_every_artifact_consistently(bench_json, reference_build):
    from mobiledeploy import manifest

    rows = {r["artifact"]: r for r in bench_json["rows"]}
    assert set(rows) == {"model_float.tflite", "model_int8.tflite", "model_float.onnx", "model_int8.onnx"}
    for row in rows.values():
        assert row["runs"] >= 5 and row["threads"] == 1 and row["batch"] == 1
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert row["init_ms"] > 0 and row["first_ms"] > 0 and row["size"] > 0 and row["peak_rss_mb"] > 0
        assert row["macs"] == 834_688  # the reference model's multiply-adds, from the folded model
        assert row["gmacs_per_second"] == pytest.approx(row["macs"] / (row["median_ms"] * 1e6))
        assert row["per_second"] == pytest.approx(1000 / row["median_ms"])
    for fmt in ("tflite", "onnx"):
        float_row, int8_row = rows[f"model_float.{fmt}"], rows[f"model_int8.{fmt}"]
        assert int8_row["speedup_vs_float"] == pytest.approx(float_row["median_ms"] / int8_row["median_ms"])
        assert int8_row["size"] < float_row["size"] / 2
    assert bench_json["fastest"] == min(rows.values(), key=lambda r: r["median_ms"])["artifact"]
    assert all(row["runtime_float_ops"] == {} for row in rows.values())  # v1: no Add, everything fuses
    # each quantized file's latency next to the agreement quantize measured for it (the manifest's drift)
    drift = {row["artifact"]: row["agreement"] for row in manifest.read(reference_build).records["drift"]["rows"]}
    assert set(drift) == {"model_int8.tflite", "model_int8.onnx"}
    assert {name: row["agreement"] for name, row in rows.items()} == {**{name: None for name in rows}, **drift}


def test_table_csv_and_profile(reference_build, tmp_path):
    result = cli("bench", reference_build, *QUICK, "--profile", "--top-ops", 3, "--csv", tmp_path / "b.csv")
    assert result.exit_code == 0, result.output
    assert "fastest:" in result.output  # which file is faster is timing, and unit tests never assert timings
    assert re.search(r"model_int8\.tflite is \d+\.\d\dx (faster|slower) than the float tflite file", result.output)
    assert "model_int8.onnx: top 3 operators" in result.output and "QLinearConv" in result.output
    assert "model_int8.tflite: no per-operator profiler" in result.output
    with open(tmp_path / "b.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["artifact"] for r in rows] == ["model_float.tflite", "model_int8.tflite", "model_float.onnx",
                                             "model_int8.onnx"]
    assert all(float(r["median_ms"]) > 0 for r in rows)


def test_single_files_and_real_images(reference_build, tmp_path):
    loose = tmp_path / "copy.tflite"
    shutil.copy(reference_build / "model_int8.tflite", loose)
    data = json.loads(cli("bench", loose, *QUICK, "--json").output)
    assert [(r["artifact"], r["precision"], r["macs"]) for r in data["rows"]] == [("copy.tflite", "int8", None)]
    data = json.loads(cli("bench", reference_build / "model_float.onnx", *QUICK, "--json").output)
    assert [(r["artifact"], r["precision"]) for r in data["rows"]] == [("model_float.onnx", "float32")]
    images = ROOT / "eval_data" / "3"
    result = cli("bench", reference_build, *QUICK, "--batch-size", 4, "--data", images, "--keras", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["inputs"] == str(images) and len(data["rows"]) == 5 and data["rows"][0]["batch"] == 4


@pytest.mark.parametrize("name, content, message", [
    ("missing.tflite", None, "no such file"),
    ("junk.tflite", b"\x00garbage" * 50, "LiteRT cannot load"),
    ("junk.onnx", b"\x08\x07garbage" * 50, "not a readable ONNX model"),
    ("model.pb", b"x", "cannot benchmark '.pb' files"),
])
def test_bad_files_give_one_clear_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = cli("bench", path, *QUICK)
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output and len(messages(result.output)) == 1


def test_tampered_build_is_refused(reference_build, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(reference_build, copy)
    (copy / "model_int8.tflite").write_bytes((copy / "model_int8.tflite").read_bytes()[:1000])
    result = cli("bench", copy, *QUICK)
    assert result.exit_code == 1 and "model_int8.tflite" in result.output and "sha256" in result.output


def test_python_api_bench(reference_build):
    import mobiledeploy

    report = mobiledeploy.bench_build(reference_build / "model_int8.tflite", warmup_runs=0, num_runs=3, min_secs=0)
    assert [r.artifact for r in report.rows] == ["model_int8.tflite"] and report.rows[0].runs >= 3
