"""The CI gate: pure comparison of an eval report with thresholds, a stored baseline and the
files it was told to compare with (``check --compare``: ours must be no worse than theirs)."""

from __future__ import annotations

import math
from dataclasses import asdict, replace
from pathlib import Path
from xml.etree import ElementTree

from ..errors import MobiledeployError
from ..inputs import read_json_file
from .metrics import change_interval, pack_hits, unpack_hits
from ..options import GateRules
from ..reports import EvalReport, GateResult, RuleResult

BASELINE_SCHEMA = 1
# metrics compared with a baseline (all are better when higher) -> unit used in messages
BASELINE_METRICS = {"top1": "points", "top5": "points", "agreement": "points", "sqnr_db": "dB"}
# SQNR above this is float rounding (relative error under 1e-4, the fold check's tolerance): a
# float file reads 120 to 130 dB against the Keras model, and by a few dB more or less on a CPU
# whose float kernels add in another order (the reference model's float ONNX file: 128.2 dB on
# an AVX-512 CPU, 124.5 dB on an AVX2 one). The baseline compares SQNR capped here.
FLOAT_ROUNDING_DB = 80.0
# metrics a build's int8 file must match in a compared file (the int8 file published with the model)
COMPARED_METRICS = ("top1", "agreement")


class GateFailed(MobiledeployError):
    exit_code = 3


def evaluate_rules(report: EvalReport, rules: GateRules, baseline: dict | None = None) -> list[RuleResult]:
    results: list[RuleResult] = []
    reference = report.row(report.reference)
    for row in _own_int8(report):
        name = row["artifact"]
        if report.labelled:
            drop = round(100.0 * (reference["top1"] - row["top1"]), 9)  # no float noise at the limit
            half = 100.0 * row["top1_change_ci95"] if "top1_change_ci95" in row else None
            results.append(_noted(RuleResult(
                "max-drop", name, drop <= rules.max_drop, drop, rules.max_drop,
                f"top-1 {100 * row['top1']:.2f}% vs float {100 * reference['top1']:.2f}%: "
                f"drop {drop:.2f}{_plus_minus(half)} points (allowed {rules.max_drop:g})",
                interval=_interval(drop, half),
            ), report.samples))
        low, high = row.get("agreement_ci95") or (float("nan"), float("nan"))
        interval = (low, high) if not math.isnan(low) else None
        results.append(_noted(RuleResult(
            "min-agreement", name, row["agreement"] >= rules.min_agreement, row["agreement"],
            rules.min_agreement,
            f"top-1 agreement with float {100 * row['agreement']:.2f}%"
            + (f" (95%: {100 * low:.2f}% to {100 * high:.2f}%;" if interval else " (")
            + f" required {100 * rules.min_agreement:.2f}%)",
            interval=interval, unit="share",
        ), report.samples))
    if baseline is not None:
        results += _baseline_rules(report, rules, baseline)
    return results + _compared_rules(report, rules)


def _interval(value: float, half: float | None) -> tuple[float, float] | None:
    return (value - half, value + half) if half is not None else None


def _plus_minus(half: float | None) -> str:
    """The half-width of a value's 95% interval as a message shows it, or nothing without one."""
    return f" ± {half:.2f}" if half is not None else ""


def _noted(result: RuleResult, samples: int) -> RuleResult:
    """``result`` with a note when its threshold lies inside the value's 95% interval: on these
    samples the pass or fail is a draw that other images of the same kind could reverse."""
    if not result.within_noise:
        return result
    return replace(result, message=f"{result.message}; within what {samples} samples resolve, "
                                   "more evaluation images would settle it")


def _own(report: EvalReport) -> list[dict]:
    """The build's own rows: the rules and the baseline are about those, not the compared files."""
    return [row for row in report.rows if not row.get("compared")]


def _own_int8(report: EvalReport) -> list[dict]:
    return [row for row in _own(report) if row["precision"] != "float32"]  # the quantized files, whatever their precision


def _compared_rules(report: EvalReport, rules: GateRules) -> list[RuleResult]:
    """Each int8 file of the build against each compared file: top-1 (with labels) and agreement
    with float at most ``tolerance`` points below theirs."""
    metrics = [m for m in COMPARED_METRICS if report.labelled or m != "top1"]
    results, own = [], _own_int8(report)
    for theirs in (row for row in report.rows if row.get("compared")):
        for ours in own:
            for metric in metrics:
                change = round(100.0 * (ours[metric] - theirs[metric]), 9)
                paired = theirs.get("paired_ci95", {}).get(ours["artifact"], {}).get(metric)
                half = 100.0 * paired if paired is not None else None
                results.append(_noted(RuleResult(
                    f"vs-compared-{metric}", ours["artifact"], change >= -rules.tolerance, change, -rules.tolerance,
                    f"{metric} {100 * ours[metric]:.2f}% vs {100 * theirs[metric]:.2f}% in {theirs['artifact']}: "
                    f"{change:+.2f}{_plus_minus(half)} points (allowed -{rules.tolerance:g})",
                    theirs["artifact"], _interval(change, half),
                ), report.samples))
    return results


def _baseline_rules(report: EvalReport, rules: GateRules, baseline: dict) -> list[RuleResult]:
    results = []
    stored = {row["artifact"]: row for row in baseline["rows"]}
    for row in _own(report):
        old = stored.get(row["artifact"])
        if old is None:
            continue
        for metric, unit in BASELINE_METRICS.items():
            if metric not in row or metric not in old:
                continue
            new_value, old_value, rounding = row[metric], old[metric], ""
            if unit == "points":
                change, allowed = round(100.0 * (new_value - old_value), 9), rules.tolerance
            else:
                if math.isinf(old_value) and math.isinf(new_value):
                    continue
                if min(new_value, old_value) >= FLOAT_ROUNDING_DB:
                    rounding = f" (both above {FLOAT_ROUNDING_DB:g} dB: float rounding)"
                new_value, old_value = min(new_value, FLOAT_ROUNDING_DB), min(old_value, FLOAT_ROUNDING_DB)
                change, allowed = new_value - old_value, rules.sqnr_tolerance
            half = _paired_half_width(report, row["artifact"], old, metric)
            results.append(_noted(RuleResult(
                f"baseline-{metric}", row["artifact"], change >= -allowed, change, -allowed,
                f"{metric} changed by {change:+.2f}{_plus_minus(half)} {unit} against the baseline "
                f"(allowed -{allowed:g}){rounding}",
                interval=_interval(change, half), unit=unit,
            ), report.samples))
    return results


def _paired_half_width(report: EvalReport, artifact: str, old: dict, metric: str) -> float | None:
    """Half-width in points of the 95% interval of a share's change against the baseline, paired
    sample by sample with the per-sample hits the baseline stored; None for a metric without
    them (SQNR, a baseline written before they were stored)."""
    kept = old.get("per_sample")
    stored = kept.get(metric) if isinstance(kept, dict) else None  # a damaged entry: no interval
    current = report.per_sample.get(artifact, {}).get(metric)
    before = unpack_hits(stored, report.samples) if isinstance(stored, str) else None
    if before is None or current is None or len(current) != report.samples:
        return None
    return 100.0 * change_interval(before, current)


def make_baseline(report: EvalReport, rules: GateRules) -> dict:
    return {
        "schema": BASELINE_SCHEMA,
        "model_sha256": report.model_sha256,
        "data_digest": report.data_digest,
        "data_source": report.data_source,
        "samples": report.samples,
        "preprocessing": report.preprocessing,
        "rules": asdict(rules),
        "rows": [_baseline_row(report, row) for row in _own(report)],
    }


def _baseline_row(report: EvalReport, row: dict) -> dict:
    """A row as the baseline keeps it: its figures and, packed, which samples it got right."""
    kept = {k: v for k, v in row.items() if k != "per_class_change"}
    hits = report.per_sample.get(row["artifact"])
    return {**kept, "per_sample": {metric: pack_hits(h) for metric, h in hits.items()}} if hits else kept


def read_baseline(path: Path, report: EvalReport) -> dict:
    if not Path(path).exists():
        raise MobiledeployError(f"baseline {path} not found; create it with mobiledeploy check ... --update-baseline")
    baseline = read_json_file(path, f"baseline {path}", fix="re-create it with --update-baseline")
    for row in baseline.get("rows", []) if isinstance(baseline, dict) and isinstance(baseline.get("rows"), list) else []:
        if isinstance(row, dict) and "sqnr_db" in row and row["sqnr_db"] is None:
            row["sqnr_db"] = math.inf  # strict JSON writes +inf as null
    if not isinstance(baseline, dict) or baseline.get("schema") != BASELINE_SCHEMA or not _valid_rows(baseline.get("rows")):
        raise MobiledeployError(f"baseline {path} has an unknown format; re-create it with --update-baseline")
    if baseline.get("data_digest") != report.data_digest:
        raise MobiledeployError(
            f"baseline {path} was made on different evaluation data ({baseline.get('data_source')}, "
            f"{baseline.get('samples')} samples) than {report.data_source} ({report.samples} samples); "
            "comparing them would be meaningless — use the same data or re-create the baseline"
        )
    if baseline.get("preprocessing") != report.preprocessing:
        raise MobiledeployError(
            f"baseline {path} was made with different preprocessing; re-create it with --update-baseline"
        )
    return baseline


def _valid_rows(rows) -> bool:
    """A list of {"artifact": str, metric: number, ...}; anything else is a damaged baseline."""
    if not isinstance(rows, list):
        return False
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("artifact"), str):
            return False
        for metric in BASELINE_METRICS:
            value = row.get(metric, 0.0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                return False
    return True


def junit_xml(results: list[RuleResult], seconds: dict[str, float] | None = None) -> str:
    """One test case per rule per artifact (and per compared file), as CI systems read them: each
    named once, since CI reports merge cases of the same class and name."""
    failures = sum(not r.passed for r in results)
    seconds = seconds or {}
    suite = ElementTree.Element("testsuite", name="mobiledeploy-check", tests=str(len(results)),
                                failures=str(failures), errors="0", time=f"{sum(seconds.values()):.3f}")
    for r in results:
        name = r.rule if r.against is None else f"{r.rule} vs {r.against}"
        case = ElementTree.SubElement(suite, "testcase", classname=r.artifact.replace(".", "_"), name=name,
                                      time=f"{seconds.get(r.artifact, 0.0):.3f}")
        if not r.passed:
            ElementTree.SubElement(case, "failure", message=r.message, type=r.rule).text = r.message
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def results_json(result: GateResult) -> dict:
    return {"passed": result.passed, "rules": [{**asdict(r), "within_noise": r.within_noise} for r in result.rules]}
