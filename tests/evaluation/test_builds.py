"""eval and the CI gate on the committed reference model, with the real runtimes."""

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

import mobiledeploy
from mobiledeploy.evaluation.gate import results_json
from conftest import cli

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "mnist_mobilenet_v1_0.25_32.h5"


def _subset(src: Path, dst: Path, per_class: int, offset: int = 0) -> Path:
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[offset:offset + per_class]:
            shutil.copy(f, dst / folder.name / f.name)
    return dst


@pytest.fixture(scope="module")
def good_build(reference_build):
    return reference_build


@pytest.fixture(scope="module")
def blank_build(tmp_path_factory):
    """Quantization degraded on purpose: calibrated on black images, so activation ranges are wrong."""
    folder = tmp_path_factory.mktemp("blank")
    np.save(folder / "blank.npy", np.zeros((50, 32, 32, 3), np.uint8))
    out = folder / "build"
    assert cli("quantize", MODEL, "--calib", folder / "blank.npy", "-o", out, "--num-holdout", 0).exit_code == 0
    return out


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
    return _subset(ROOT / "eval_data", tmp_path_factory.mktemp("eval") / "a", 20)


def test_eval_reports_every_artifact(good_build, small_eval):
    result = cli("eval", good_build, "--data", small_eval, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = {r["artifact"]: r for r in report["rows"]}
    assert set(rows) == {"model_folded.keras", "model_float.tflite", "model_int8.tflite",
                         "model_float.onnx", "model_int8.onnx"}
    assert report["samples"] == 200 and report["labelled"]
    ref = rows["model_folded.keras"]
    assert ref["agreement"] == 1.0 and ref["top1"] > 0.85 and ref["top5"] >= ref["top1"]
    for name in ("model_float.tflite", "model_float.onnx"):
        assert rows[name]["top1"] == ref["top1"] and rows[name]["sqnr_db"] > 80
    for name in ("model_int8.tflite", "model_int8.onnx"):
        assert 0.9 < rows[name]["agreement"] <= 1.0 and 15 < rows[name]["sqnr_db"] < 80
        assert rows[name]["mean_kl"] > 0
        low, high = rows[name]["agreement_ci95"]
        assert low < rows[name]["agreement"] <= high <= 1.0
        assert 0 < rows[name]["top1_change_ci95"] < 0.1  # 200 images: a few points at most
    assert ref["top1_change_ci95"] == 0.0 and ref["agreement_ci95"] == [1.0, 1.0]  # the reference itself


def test_gate_passes_on_the_reference_model(good_build, tmp_path):
    result = cli("check", good_build, "--data", ROOT / "eval_data", "--junit-xml", tmp_path / "j.xml",
                 "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    suite = ElementTree.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0"
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True


def test_gate_fails_with_exit_3_on_degraded_quantization(blank_build, small_eval, tmp_path):
    result = cli("check", blank_build, "--data", ROOT / "eval_data", "--junit-xml", tmp_path / "j.xml")
    assert result.exit_code == 3, result.output
    assert "FAIL  max-drop" in result.output and "gate failed" in result.output
    failures = ElementTree.parse(tmp_path / "j.xml").getroot().findall(".//failure")
    assert {f.get("type") for f in failures} == {"max-drop"}


def test_baseline_catches_a_regression_and_refuses_other_data(good_build, blank_build, small_eval, tmp_path):
    baseline = tmp_path / "baseline.json"
    assert cli("check", good_build, "--data", small_eval, "--baseline", baseline, "--update-baseline").exit_code == 0
    stored = json.loads(baseline.read_text())
    assert stored["data_digest"] and stored["samples"] == 200
    assert cli("check", good_build, "--data", small_eval, "--baseline", baseline).exit_code == 0

    loose = cli("check", blank_build, "--data", small_eval, "--baseline", baseline,
                "--max-drop", 100, "--min-agreement", 0, "--report", tmp_path / "loose.json")
    assert loose.exit_code == 3 and "FAIL  baseline-top1" in loose.output
    # the baseline keeps each file's per-image hits, so the change is paired image by image
    from mobiledeploy.evaluation.metrics import change_interval, unpack_hits

    row = next(r for r in stored["rows"] if r["artifact"] == "model_int8.tflite")
    assert set(row["per_sample"]) == {"agreement", "top1", "top5"}
    before = unpack_hits(row["per_sample"]["top1"], 200)
    assert before.mean() == pytest.approx(row["top1"])
    after = mobiledeploy.evaluate_build(blank_build, small_eval).per_sample["model_int8.tflite"]["top1"]
    rule = next(r for r in json.loads((tmp_path / "loose.json").read_text())["rules"]
                if r["rule"] == "baseline-top1" and r["artifact"] == "model_int8.tflite")
    half = 100 * change_interval(before, after)
    assert rule["interval"] == pytest.approx([rule["value"] - half, rule["value"] + half])
    assert not any(r.get("interval") for r in json.loads((tmp_path / "loose.json").read_text())["rules"]
                   if r["rule"] == "baseline-sqnr_db")

    other = _subset(ROOT / "eval_data", tmp_path / "other", 20, offset=20)
    refused = cli("check", good_build, "--data", other, "--baseline", baseline)
    assert refused.exit_code == 1 and "different evaluation data" in refused.output


def test_check_holds_the_build_to_a_compared_file(good_build, blank_build, small_eval, tmp_path):
    """check --compare: every int8 file of the build must reach the compared file's top-1 and
    agreement. The compared file is not judged by the float rules, nor stored in a baseline."""
    theirs = blank_build / "model_int8.tflite"
    baseline = tmp_path / "baseline.json"
    ok = cli("check", good_build, "--data", small_eval, "--compare", theirs, "--baseline", baseline,
             "--update-baseline", "--json", "-")
    assert ok.exit_code == 0, ok.output
    rules = json.loads(ok.output)["rules"]
    own = {"model_int8.tflite", "model_int8.onnx"}
    compared = [r for r in rules if r["rule"].startswith("vs-compared-")]
    assert {(r["rule"], r["artifact"]) for r in compared} == {
        (f"vs-compared-{metric}", name) for metric in ("top1", "agreement") for name in own}
    assert all(r["passed"] for r in compared)
    assert all(r["value"] > 0.5 for r in compared if r["rule"] == "vs-compared-agreement"), compared
    assert {r["artifact"] for r in rules if not r["rule"].startswith("vs-compared-")} == own
    assert all(r["interval"][0] < r["value"] < r["interval"][1] for r in compared)  # paired on these images
    row = next(r for r in json.loads(ok.output)["report"]["rows"] if r.get("compared"))
    assert set(row["paired_ci95"]) == own
    assert str(theirs) not in {row["artifact"] for row in json.loads(baseline.read_text())["rows"]}

    ours = good_build / "model_int8.tflite"
    worse = cli("check", blank_build, "--data", small_eval, "--compare", ours, "--max-drop", 100,
                "--min-agreement", 0, "--junit-xml", tmp_path / "j.xml", "--report", tmp_path / "w.json")
    assert worse.exit_code == 3, worse.output
    assert "FAIL  vs-compared-agreement" in worse.output and "gate failed" in worse.output
    failed = {f.get("type") for f in ElementTree.parse(tmp_path / "j.xml").getroot().findall(".//failure")}
    assert "vs-compared-agreement" in failed and failed <= {"vs-compared-agreement", "vs-compared-top1"}

    # the Python API mirrors the CLI: the same rules and results, the failure returned, not raised
    api = mobiledeploy.check_build(blank_build, small_eval, max_drop=100, min_agreement=0, compare=[ours])
    assert not api.passed and {r.rule for r in api.failed} == failed
    assert json.loads(json.dumps(results_json(api)["rules"])) == json.loads((tmp_path / "w.json").read_text())["rules"]


def test_labels_file_maps_folders_and_rejects_unknown_ones(good_build, tmp_path):
    data = tmp_path / "digits"
    for name in ("3", "7"):
        shutil.copytree(ROOT / "eval_data" / name, data / name)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(str(i) for i in range(10)) + "\n")
    ok = json.loads(cli("eval", good_build, "--data", data, "--labels", labels, "--json").output)
    assert ok["rows"][0]["top1"] > 0.8  # folders 3 and 7 map to outputs 3 and 7
    shifted = json.loads(cli("eval", good_build, "--data", data, "--json").output)
    assert shifted["rows"][0]["top1"] < 0.2  # sorted order would map them to outputs 0 and 1
    labels.write_text("0\n1\n2\n3\n")
    bad = cli("eval", good_build, "--data", data, "--labels", labels)
    assert bad.exit_code == 1 and "'7'" not in bad.output and "7 are not in" in bad.output


def test_unlabelled_folder_gives_label_free_drift(good_build, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for f in sorted((ROOT / "calibration_data").iterdir())[:30]:
        shutil.copy(f, folder / f.name)
    result = cli("check", good_build, "--data", folder, "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {r["rule"] for r in data["rules"]} == {"min-agreement"}
    assert "top1" not in data["report"]["rows"][0]


def test_tampered_artifact_is_refused_by_name(good_build, tmp_path, small_eval):
    copy = tmp_path / "build"
    shutil.copytree(good_build, copy)
    with open(copy / "model_int8.onnx", "ab") as handle:
        handle.write(b"\0")
    result = cli("eval", copy, "--data", small_eval)
    assert result.exit_code == 1 and "model_int8.onnx" in result.output and "sha256" in result.output


def test_top1_breaks_ties_like_argmax_and_agreement():
    """int8 softmax outputs step by 1/256 and their top classes tie; top-1 must pick the class
    argmax picks (the lower index), as agreement and per-class accuracy do. An unordered
    partition (the former implementation) scored 14.8% here where argmax scores 100%."""
    from mobiledeploy.evaluation.metrics import per_class_accuracy, topk_accuracy

    rng = np.random.default_rng(0)
    outputs = rng.integers(0, 4, (500, 1000)).astype(np.float32) / 256  # many ties at the top
    labels = outputs.argmax(axis=1)
    assert topk_accuracy(outputs, labels, 1) == 1.0
    higher_tied = np.array([np.flatnonzero(row == row.max())[-1] for row in outputs])
    tied = higher_tied != labels
    assert tied.sum() > 400 and topk_accuracy(outputs[tied], higher_tied[tied], 1) == 0.0
    assert topk_accuracy(outputs, higher_tied, 5) >= topk_accuracy(outputs, higher_tied, 1)
    accuracy = [a for a in per_class_accuracy(outputs, labels, 1000) if a is not None]
    assert all(a == 1.0 for a in accuracy)


def test_compare_scores_other_files_on_the_same_run(good_build, blank_build, small_eval, tmp_path):
    """--compare runs files from outside the build (here another build's int8 file, and a
    TF-slim-style float file with an extra background output 0) against the same float model."""
    import keras
    import tensorflow as tf

    folded = keras.saving.load_model(good_build / "model_folded.keras", compile=False)
    inputs = keras.Input(folded.inputs[0].shape[1:])
    background = keras.layers.Dense(1, kernel_initializer="zeros")(keras.layers.Flatten()(inputs))
    slim = keras.Model(inputs, keras.layers.Concatenate()([background, folded(inputs)]))
    (tmp_path / "slim.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(slim).convert())
    small = keras.Input((16, 16, 3))
    (tmp_path / "small.tflite").write_bytes(
        tf.lite.TFLiteConverter.from_keras_model(keras.Model(small, keras.layers.Flatten()(small))).convert())

    other = blank_build / "model_int8.tflite"
    result = cli("eval", good_build, "--data", small_eval, "--compare", other, "--compare", tmp_path / "slim.tflite",
                 "--json")
    assert result.exit_code == 0, result.output
    rows = {r["artifact"]: r for r in json.loads(result.output)["rows"]}
    own = {r["artifact"]: r for r in json.loads(cli("eval", blank_build, "--data", small_eval, "--json").output)["rows"]}
    compared = rows[str(other)]
    assert compared["compared"] and compared["precision"] == "int8" and "background_dropped" not in compared
    for metric in ("top1", "agreement", "sqnr_db"):
        assert compared[metric] == own["model_int8.tflite"][metric]  # same model, same float reference
    assert compared["agreement"] < rows["model_int8.tflite"]["agreement"]  # the blank calibration shows
    slim_row = rows[str(tmp_path / "slim.tflite")]
    assert slim_row["background_dropped"] and slim_row["precision"] == "float32"
    assert slim_row["agreement"] == 1.0 and slim_row["sqnr_db"] > 80
    refused = cli("eval", good_build, "--data", small_eval, "--compare", tmp_path / "small.tflite")
    assert refused.exit_code == 1 and "differs from the build's" in refused.output


def test_mean_kl_reads_an_int8_softmax_that_lost_mass_as_probabilities():
    """An int8 softmax over 1000 classes rounds most probabilities to 0 (steps of 1/256), so its
    rows sum to well below 1. It is still a softmax: read as logits and put through a second
    softmax, it would be near uniform (2.57 here instead of 0.94)."""
    from mobiledeploy.evaluation.metrics import mean_kl
    from mobiledeploy.reports import Head

    rng = np.random.default_rng(7)
    logits = rng.normal(0, 2.5, (64, 1000))
    reference = np.exp(logits - logits.max(1, keepdims=True))
    reference /= reference.sum(1, keepdims=True)
    candidate = np.round(reference * 256) / 256
    assert candidate.sum(1).min() < 0.9  # the mass the rounding zeros lose
    q = candidate / candidate.sum(1, keepdims=True)
    expected = np.mean(np.sum(reference * (np.log(reference + 1e-6) - np.log(q + 1e-6)), axis=1))
    kl = mean_kl(reference.astype(np.float32), candidate.astype(np.float32), Head("classes"))
    assert kl == pytest.approx(expected, rel=1e-3)
    # Logits, by contrast, still go through the softmax.
    assert mean_kl(logits, logits + 0.1, Head("classes")) == pytest.approx(0.0, abs=1e-6)
