"""The CI gate's rules on hand-made eval reports: thresholds, one JUnit case per compared file,
paired intervals, and the comparison with a stored baseline."""

from dataclasses import replace
from xml.etree import ElementTree

import numpy as np
import pytest

from mobiledeploy.evaluation.gate import evaluate_rules, junit_xml
from mobiledeploy.options import GateRules
from mobiledeploy.reports import EvalReport


def _report(float_top1, int8_top1, agreement):
    rows = (
        {"artifact": "f.keras", "precision": "float32", "top1": float_top1, "top5": 1.0, "agreement": 1.0, "sqnr_db": float("inf")},
        {"artifact": "q.tflite", "precision": "int8", "top1": int8_top1, "top5": 1.0, "agreement": agreement, "sqnr_db": 20.0},
    )
    return EvalReport("b", "d", "digest", None, 100, True, "f.keras", rows, {})


def test_rules_are_exact_at_the_threshold():
    rules = GateRules(max_drop=1.0, min_agreement=0.9)
    at_limit = {(r.rule, r.passed) for r in evaluate_rules(_report(0.80, 0.79, 0.90), rules)}
    assert at_limit == {("max-drop", True), ("min-agreement", True)}
    beyond = {(r.rule, r.passed) for r in evaluate_rules(_report(0.80, 0.788, 0.899), rules)}
    assert beyond == {("max-drop", False), ("min-agreement", False)}
    xml = junit_xml(evaluate_rules(_report(0.80, 0.5, 0.95), rules))
    suite = ElementTree.fromstring(xml.split("?>", 1)[1])
    assert suite.get("failures") == "1" and suite.find(".//failure").get("type") == "max-drop"


def test_each_compared_file_is_its_own_junit_case():
    """With two compared files, each rule of an own file is judged against each, and the JUnit
    report names every case once (CI merges cases of one class and name, hiding a failure)."""
    report = _report(0.80, 0.79, 0.95)
    theirs = [{"artifact": name, "precision": "int8", "top1": top1, "top5": 1.0, "agreement": agreement,
               "sqnr_db": 15.0, "compared": True} for name, top1, agreement in (("a.tflite", 0.70, 0.90),
                                                                              ("b.tflite", 0.79, 0.97))]
    report = replace(report, rows=report.rows + tuple(theirs))
    results = evaluate_rules(report, GateRules())
    compared = [r for r in results if r.rule.startswith("vs-compared-")]
    assert {(r.rule, r.against, r.passed) for r in compared} == {
        ("vs-compared-top1", "a.tflite", True), ("vs-compared-agreement", "a.tflite", True),
        ("vs-compared-top1", "b.tflite", True), ("vs-compared-agreement", "b.tflite", False)}
    suite = ElementTree.fromstring(junit_xml(results).split("?>", 1)[1])
    cases = [(c.get("classname"), c.get("name")) for c in suite.iter("testcase")]
    assert len(cases) == len(set(cases)) == len(results) == 6
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["vs-compared-agreement vs b.tflite"]


def test_a_compared_files_lead_is_paired_on_the_same_images():
    from mobiledeploy.evaluation.metrics import change_interval, paired_intervals, sample_hits

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(100, 10))
    labels = reference.argmax(axis=1)
    ours, theirs = reference.copy(), reference.copy()
    theirs[np.arange(5), labels[:5]] -= 10  # theirs loses the top class on 5 images
    ours[np.arange(5, 7), labels[5:7]] -= 10  # ours on 2 others
    got = paired_intervals(sample_hits(reference, ours, labels), sample_hits(reference, theirs, labels))
    # b' = 5.5 images only ours gets right, c' = 2.5 only theirs, n' = 102
    expected = 1.96 * np.sqrt(8 - 9 / 102) / 102
    assert got["top1"] == pytest.approx(expected) and got["agreement"] == pytest.approx(expected)
    theirs_hits, our_hits = np.arange(100) >= 5, ~np.isin(np.arange(100), [5, 6])
    assert got["top1"] == pytest.approx(change_interval(theirs_hits, our_hits))
    assert set(paired_intervals(sample_hits(reference, ours, None), sample_hits(reference, theirs, None))) == {"agreement"}


def test_intervals_are_paired_and_do_not_vanish_without_changes():
    """The top-1 change's interval counts only the images the two files score differently
    (paired; Agresti-Min's half sample per cell), and agreement's is Wilson's."""
    from mobiledeploy.evaluation.metrics import change_interval, share_interval

    reference = np.zeros(200, bool)
    reference[:120] = True
    hits = reference.copy()
    hits[:8] = False  # right only in the reference: 8 images
    hits[150:153] = True  # right only here: 3
    # b' = 3.5, c' = 8.5, n' = 202: 1.96 * sqrt(12 - 25 / 202) / 202
    assert change_interval(reference, hits) == pytest.approx(0.033438, abs=1e-6)
    # an unpaired interval (two independent accuracies of ~0.6 on 200 images) would be ~0.096
    assert change_interval(reference, reference) == pytest.approx(1.96 / 202)  # not 0: 200 images bound it
    assert change_interval(reference, reference) < change_interval(reference, hits)
    low, high = share_interval(0.9, 100)
    assert low == pytest.approx(0.82563, abs=1e-5) and high == pytest.approx(0.94477, abs=1e-5)
    low, high = share_interval(1.0, 50)
    assert high == 1.0 and low == pytest.approx(50 / (50 + 1.96 ** 2), abs=1e-9)


def test_a_threshold_inside_the_interval_is_flagged():
    rules = GateRules(max_drop=1.0, min_agreement=0.95)
    report = _report(0.80, 0.79, 0.96)
    int8 = {**report.rows[1], "top1_change_ci95": 0.02, "agreement_ci95": [0.90, 0.98]}
    results = {r.rule: r for r in evaluate_rules(replace(report, rows=(report.rows[0], int8)), rules)}
    assert results["max-drop"].passed and results["max-drop"].within_noise
    assert results["max-drop"].interval == pytest.approx((-1.0, 3.0))
    assert "more evaluation images would settle it" in results["max-drop"].message
    assert results["min-agreement"].passed and results["min-agreement"].within_noise
    theirs = {**report.rows[1], "artifact": "their.tflite", "compared": True, "top1": 0.80, "agreement": 0.97,
              "paired_ci95": {"q.tflite": {"top1": 0.015, "agreement": 0.004}}}
    results = {r.rule: r for r in evaluate_rules(replace(report, rows=(report.rows[0], int8, theirs)), rules)}
    # top-1 -1.0 +- 1.5 points behind theirs, allowed -0.5: a failure the images cannot confirm
    assert not results["vs-compared-top1"].passed and results["vs-compared-top1"].within_noise
    assert results["vs-compared-top1"].interval == pytest.approx((-2.5, 0.5))
    # agreement -1.0 +- 0.4: resolved
    assert not results["vs-compared-agreement"].passed and not results["vs-compared-agreement"].within_noise
    clear = {**int8, "top1": 0.795, "top1_change_ci95": 0.002, "agreement_ci95": [0.955, 0.97]}  # drop 0.5 +- 0.2
    results = evaluate_rules(replace(report, rows=(report.rows[0], clear)), rules)
    assert not any(r.within_noise for r in results)
    assert not any("settle" in r.message for r in results)


def test_baseline_sqnr_of_float_files_ignores_float_rounding():
    """A float file's SQNR against the Keras model is float rounding, and moves by a few dB with
    the CPU's float kernels (128.2 -> 124.5 dB measured): the baseline rule compares it capped at
    80 dB. A real regression below that still fails, and an int8 file's SQNR is compared as is."""
    report = _report(0.80, 0.80, 0.96)
    float_row = {**report.rows[1], "artifact": "f.onnx", "precision": "float32", "agreement": 1.0}

    def sqnr_rules(float_now, float_then, int8_then):
        rows = (*report.rows, {**float_row, "sqnr_db": float_now})
        baseline = {"rows": [{**float_row, "sqnr_db": float_then}, {**report.rows[1], "sqnr_db": int8_then}]}
        return {r.artifact: r.passed for r in evaluate_rules(replace(report, rows=rows), GateRules(), baseline)
                if r.rule == "baseline-sqnr_db"}

    assert sqnr_rules(124.5, 128.2, 20.5) == {"f.onnx": True, "q.tflite": True}
    assert sqnr_rules(60.0, 128.2, 21.5) == {"f.onnx": False, "q.tflite": False}


def test_hits_survive_the_baseline_file_and_damage_is_ignored():
    from mobiledeploy.evaluation.metrics import pack_hits, unpack_hits

    hits = np.random.default_rng(0).random(203) < 0.7
    assert np.array_equal(unpack_hits(pack_hits(hits), 203), hits)
    assert unpack_hits(pack_hits(hits), 300) is None  # another number of samples
    assert unpack_hits("not base64!", 203) is None
    report = _report(0.80, 0.79, 0.96)
    report = replace(report, per_sample={"q.tflite": {"top1": np.arange(100) < 79}})
    baseline = {"rows": [{**report.rows[1], "top1": 0.80,
                          "per_sample": {"top1": pack_hits(np.arange(100) < 80), "agreement": 7}}]}
    results = {r.rule: r for r in evaluate_rules(report, GateRules(), baseline) if r.artifact == "q.tflite"}
    # one image right only in the baseline: b' = 0.5, c' = 1.5, n' = 102
    half = 100 * 1.96 * np.sqrt(2 - 1 / 102) / 102
    assert results["baseline-top1"].interval == pytest.approx((-1.0 - half, -1.0 + half))
    assert results["baseline-top1"].within_noise  # -1 +- 2.7 holds the -0.5 tolerance
    assert results["baseline-agreement"].interval is None  # damaged (not text), and nothing current
    baseline["rows"][0]["per_sample"] = ["not", "a", "dict"]
    assert all(r.interval is None for r in evaluate_rules(report, GateRules(), baseline) if r.rule.startswith("baseline-"))
