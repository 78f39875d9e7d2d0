"""A sweep's results as one table: a row per quantized file of each cell (model x setting x device
x evaluation set), read from the cached task results, written as CSV and as one HTML page."""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

from ..errors import MobiledeployError
from ..inputs import read_json_file
from ..reports import SweepReport
from .plan import Plan

COLUMNS = ("model", "setting", "device", "data", "artifact", "precision", "samples", "float_top1", "top1",
           "top1_change", "agreement", "sqnr_db", "size_kib", "median_ms", "error")


def rows(plan: Plan, builds: dict, measurements: dict, failed: dict) -> tuple[dict, ...]:
    """The table's rows, in the plan's order; a failed task gives a row with its error."""
    found = []
    for model in plan.models:
        for setting in plan.settings:
            _, folder = builds[model.name, setting.name]
            base = {"model": model.name, "setting": setting.name}
            if str(folder) in failed:
                found.append(_row(base, error=f"quantize: {failed[str(folder)]}"))
                continue
            for device in plan.devices:
                cell = {**base, "device": device.name}
                latency, bench_error = {}, None
                bench = measurements.get((model.name, setting.name, device.name, "bench"))
                if bench is not None and str(bench) in failed:
                    bench_error = f"bench: {failed[str(bench)]}"
                elif bench is not None:
                    latency = {r["artifact"]: r["median_ms"] for r in read_result(bench)["rows"]}
                for name, _ in plan.evals:
                    result = measurements[model.name, setting.name, device.name, name]
                    if str(result) in failed:
                        found.append(_row({**cell, "data": name}, error=f"eval: {failed[str(result)]}"))
                        continue
                    found.extend(_eval_rows({**cell, "data": name}, read_result(result), folder, latency,
                                            bench_error))
    return tuple(found)


def _eval_rows(cell: dict, report: dict, folder: Path, latency: dict, bench_error: str | None) -> list[dict]:
    reference = next(r for r in report["rows"] if r["format"] == "keras")
    float_top1 = reference.get("top1")
    found = []
    for r in report["rows"]:
        if r["precision"] == "float32" or r.get("compared"):
            continue
        top1 = r.get("top1")
        found.append(_row(
            cell, artifact=r["artifact"], precision=r["precision"], samples=r["samples"], float_top1=float_top1,
            top1=top1, top1_change=None if top1 is None or float_top1 is None else 100 * (top1 - float_top1),
            agreement=r["agreement"], sqnr_db=r["sqnr_db"], size_kib=(folder / r["artifact"]).stat().st_size / 1024,
            median_ms=latency.get(r["artifact"]), error=bench_error))
    return found


def read_result(path: Path) -> dict:
    """A cached task result (JSON the sweep wrote), read back with the usual checks."""
    result = read_json_file(path, f"sweep result {path.name}")
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise MobiledeployError(f"{path}: not a sweep result; delete it and run the sweep again")
    return result


def _row(cell: dict, **values) -> dict:
    return {column: {**cell, **values}.get(column) for column in COLUMNS}


def csv_text(rows: tuple[dict, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    return buffer.getvalue()


def _plain(value):
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return "" if value is None else value


def html_page(report: SweepReport) -> str:
    """One self-contained page comparing the cells: agreement and SQNR as bars, top-1 change,
    size and latency; every text from the inputs escaped."""
    def text(value) -> str:
        return html.escape(str(value))

    body = []
    for r in report.rows:
        if r["artifact"] is None:
            body.append(f"<tr class=failed><td>{text(r['model'])}</td><td>{text(r['setting'])}</td>"
                        f"<td>{text(r['device'] or '')}</td><td>{text(r['data'] or '')}</td>"
                        f"<td colspan=8>{text(r['error'])}</td></tr>")
            continue
        agreement, change, sqnr, latency = r["agreement"], r["top1_change"], r["sqnr_db"], r["median_ms"]
        shown = {"change": "-" if change is None else f"{change:+.1f}",
                 "sqnr": "inf" if sqnr is None else f"{sqnr:.1f}",
                 "latency": "-" if latency is None else f"{latency:.3f}",
                 "class": "num bad" if change is not None and change < -1 else "num"}
        body.append(
            f"<tr><td>{text(r['model'])}</td><td>{text(r['setting'])}</td><td>{text(r['device'])}</td>"
            f"<td>{text(r['data'])}</td><td>{text(r['artifact'])}</td>"
            f"<td class=bar><span style='width:{100 * agreement:.1f}%'></span>{agreement:.1%}</td>"
            f"<td class='{shown['class']}'>{shown['change']}</td><td class=num>{shown['sqnr']}</td>"
            f"<td class=num>{r['size_kib']:.0f}</td><td class=num>{shown['latency']}</td>"
            f"<td>{text(r['error'] or '')}</td></tr>")
    versions = ", ".join(f"{text(k)} {text(v)}" for k, v in report.versions.items())
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>mobiledeploy sweep: {text(Path(report.source).name)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222 }}
table {{ border-collapse: collapse }}
th, td {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; white-space: nowrap }}
td:last-child {{ white-space: normal }}
th {{ background: #f4f4f4 }} td.num {{ text-align: right; font-variant-numeric: tabular-nums }}
td.bar {{ position: relative; min-width: 140px }} td.bar span {{ position: absolute; left: 0; top: 3px; bottom: 3px;
  background: #9ecae1; z-index: -1 }} td.bad {{ color: #b00 }} tr.failed td {{ color: #b00 }}
p.note {{ color: #555 }}
</style></head><body>
<h1>Sweep: {text(Path(report.source).name)}</h1>
<p>{len(report.rows)} rows; tasks run {report.tasks_run}, from the cache {report.tasks_cached},
failed {report.tasks_failed}; {report.seconds:.1f} s.</p>
<table><thead><tr><th>model</th><th>setting</th><th>device</th><th>data</th><th>file</th>
<th>agreement with float</th><th>top-1 change (points)</th><th>SQNR (dB)</th><th>size (KiB)</th>
<th>median latency (ms)</th><th>note</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<p class=note>Agreement: the share of images on which the file's class is the float model's. Top-1 change:
against the float model on the same images (labelled data only). Latency: batch 1 on the row's
device (emulated ARM times are not device latency).</p>
<p class=note>{versions}</p>
</body></html>
"""
