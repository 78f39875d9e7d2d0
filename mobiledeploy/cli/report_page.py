"""``analyze --html``: one self-contained page per build (nothing fetched at view time) with a
summary of the model, its settings, accuracy, sizes and latency, an interactive chart of SQNR by
layer (an inline SVG that scales with the window; hovering a point names the layer and gives each
file's numbers), the worst layers with what to do about them, and every layer's numbers. Given a
``bench --profile --json`` report of the build, each layer's row also says what it costs in time:
the operators ONNX Runtime ran for it (``LatencyReport.layer_ms``), so a layer that loses the most
and costs little is the one to keep in float."""

from __future__ import annotations

import html
import math

from ..reports import AnalyzeReport, LayerDrift
from .html import format_db, format_spread

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
DASHES = ("", "6 4", "2 3", "8 3 2 3")  # with ever smaller points, a later line never hides an earlier one
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 960, 400, 56, 16, 16, 120
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.4em;overflow-wrap:anywhere}h2{font-size:1.15em;margin-top:1.6em}
.summary{display:grid;grid-template-columns:repeat(auto-fit,minmax(14em,1fr));gap:.6em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .8em}.card b{display:block;font-size:.8em;color:#666}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.9em}
td,th{border-bottom:1px solid #e4e4e4;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left;white-space:nowrap}
svg{width:100%;height:auto;display:block}.legend span{margin-right:1.2em;white-space:nowrap}
.legend i{display:inline-block;width:1.6em;height:.25em;vertical-align:middle;margin-right:.4em}
#readout{min-height:1.4em;font-size:.9em;color:#333}circle{cursor:crosshair}
"""
SCRIPT = """
const readout = document.getElementById('readout');
document.querySelectorAll('circle[data-layer]').forEach(point => point.addEventListener('mouseenter', () => {
  readout.textContent = point.dataset.layer + ': ' + point.dataset.values;
}));
document.documentElement.dataset.scrollWidth = document.documentElement.scrollWidth;
"""


def html_report(report: AnalyzeReport, summary: dict, worst: int = 10) -> str:
    """The page. ``summary``: what the manifest (and a bench report, when given) says of the build
    (``build_summary``)."""
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>mobiledeploy analyze: {html.escape(report.build_dir)}</title><style>{STYLE}</style></head><body>",
             f"<h1>Per-layer int8 drift of {html.escape(report.build_dir)}</h1>",
             _summary(summary),
             f"<h2>SQNR by layer on {report.samples} images from {html.escape(report.data_source)}</h2>",
             "<p>Each point is one activation tensor of an int8 file against the same tensor of the float "
             "model, with the error of every layer before it. Hover a point for the layer.</p>",
             _chart(report), "<p id='readout'></p>"]
    times = summary.get("layer_ms", {})
    for name in report.layers:
        parts.append(f"<h2>{html.escape(name)}: the {worst} layers that lose the most</h2>")
        parts.append(_table(report.worst(name, worst), times.get(name), with_advice=True))
    for name, rows in report.layers.items():
        parts.append(f"<details><summary>{html.escape(name)}: all {len(rows)} layers in graph order</summary>"
                     f"{_table(rows, times.get(name))}</details>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def build_summary(manifest, bench: dict | None = None) -> dict:
    """The facts the page's summary shows, from a build's checked manifest and an optional
    ``bench --json`` report of the same build."""
    settings = manifest.records.get("settings") or {}
    drift = (manifest.records.get("drift") or {}).get("rows") or []
    latency, layer_ms = {}, {}
    for row in (bench or {}).get("rows", []):
        if isinstance(row, dict) and isinstance(row.get("median_ms"), (int, float)):
            latency[str(row.get("artifact"))] = (float(row["median_ms"]), str(row.get("device", "")))
        times = row.get("layer_ms") if isinstance(row, dict) else None
        if isinstance(times, dict) and times:
            layer_ms[str(row.get("artifact"))] = {str(layer): float(ms) for layer, ms in times.items()
                                                  if isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0}
    return {
        "model": f"{manifest.model.name} ({manifest.model.format}, input "
                 f"{'x'.join(str(d) for d in manifest.model.input_shape[1:])})",
        "settings": ", ".join(f"{key} {settings[key]}" for key in ("refine", "activation_ranges", "logit_floor",
                                                                    "dither", "equalize") if key in settings)
                    + ("" if settings.get("per_channel", True) else ", per-tensor weights"),
        "agreement": {str(r.get("artifact")): (r.get("agreement"), r.get("sqnr_db"), r.get("samples"))
                      for r in drift if isinstance(r, dict)},
        "sizes": {entry.file: (entry.precision, entry.size) for entry in manifest.files},
        "latency": latency,
        "layer_ms": layer_ms,
    }


def _summary(summary: dict) -> str:
    cards = [("model", summary["model"]), ("settings", summary["settings"] or "-")]
    for name, (agreement, sqnr, samples) in summary["agreement"].items():
        if isinstance(agreement, (int, float)) and isinstance(sqnr, (int, float)):
            cards.append((f"{name}: agreement with float", f"{agreement:.1%} of {samples} held-out images; "
                                                            f"SQNR {format_db(sqnr)} dB"))
    for name, (precision, size) in summary["sizes"].items():
        timing = summary["latency"].get(name)
        cards.append((f"{name} ({precision})", f"{size / 1024:.0f} KiB"
                      + (f"; median {timing[0]:.3f} ms on {timing[1]}" if timing else "")))
    body = "".join(f"<div class='card'><b>{html.escape(title)}</b>{html.escape(text)}</div>" for title, text in cards)
    note = "" if summary["latency"] else "<p>Latency: give <code>--bench</code> a <code>bench --json</code> report.</p>"
    if summary["latency"] and not summary.get("layer_ms"):
        note = "<p>Time per layer: give <code>--bench</code> a <code>bench --profile --json</code> report.</p>"
    return f"<div class='summary'>{body}</div>{note}"


def _chart(report: AnalyzeReport) -> str:
    """An inline SVG: one line per int8 file over the layers in graph order, a point per layer
    carrying its name and every file's numbers for the hover readout."""
    names = list(report.layers)
    order = sorted({(r.depth, r.layer) for rows in report.layers.values() for r in rows})
    position = {layer: i for i, (_, layer) in enumerate(order)}
    finite = [r.sqnr_db for rows in report.layers.values() for r in rows if math.isfinite(r.sqnr_db)]
    top = 10 * math.ceil(max(finite, default=40.0) / 10) or 10.0
    bottom = min(0.0, 10 * math.floor(min(finite, default=0.0) / 10))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + plot_w * (i + 0.5) / max(len(order), 1)

    def y(value: float) -> float:
        return TOP + plot_h * (top - min(value, top)) / (top - bottom)

    by_layer: dict[str, list[str]] = {}
    for name, rows in report.layers.items():
        for r in rows:
            by_layer.setdefault(r.layer, []).append(f"{name} {format_db(r.sqnr_db)} dB ({r.lost_db:+.1f} here)")
    svg = [f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='SQNR by layer' "
           "xmlns='http://www.w3.org/2000/svg' font-size='11'>"]
    for tick in range(int(bottom), int(top) + 1, 10):
        svg.append(f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y(tick):.1f}' y2='{y(tick):.1f}' stroke='#e6e6e6'/>"
                   f"<text x='{LEFT - 6}' y='{y(tick) + 4:.1f}' text-anchor='end'>{tick} dB</text>")
    step = max(1, math.ceil(len(order) / 40))  # at most 40 names under the axis; the readout has every one
    for i, (_, layer) in enumerate(order):
        if i % step == 0:
            svg.append(f"<text transform='translate({x(i):.1f},{HEIGHT - BOTTOM + 8}) rotate(-60)' "
                       f"text-anchor='end' font-size='10'>{html.escape(layer)}</text>")
    for k, name in enumerate(names):
        rows = [r for r in report.layers[name] if math.isfinite(r.sqnr_db)]
        colour, dash = COLOURS[k % len(COLOURS)], DASHES[k % len(DASHES)]
        points = " ".join(f"{x(position[r.layer]):.1f},{y(r.sqnr_db):.1f}" for r in rows)
        svg.append(f"<polyline class='series' points='{points}' fill='none' stroke='{colour}' stroke-width='2' "
                   f"stroke-dasharray='{dash}'><title>{html.escape(name)}</title></polyline>")
        for r in rows:
            values = html.escape("; ".join(by_layer[r.layer]), quote=True)
            svg.append(f"<circle cx='{x(position[r.layer]):.1f}' cy='{y(r.sqnr_db):.1f}' r='{max(4.5 - 1.5 * k, 2)}' "
                       f"fill='{colour}' "
                       f"data-layer='{html.escape(r.layer, quote=True)}' data-values='{values}'>"
                       f"<title>{html.escape(r.layer)} ({html.escape(name)}): {format_db(r.sqnr_db)} dB</title></circle>")
    svg.append("</svg>")
    legend = "".join(f"<span><i style='background:{COLOURS[k % len(COLOURS)]}'></i>{html.escape(name)}"
                     f"{' (dashed)' if DASHES[k % len(DASHES)] else ''}</span>" for k, name in enumerate(names))
    return f"<div class='legend'>{legend}</div>" + "".join(svg)


def what_to_do(row: LayerDrift) -> str:
    """What a user can do about a layer that loses SQNR, from what the numbers point at."""
    if row.weight_spread is not None and row.weight_spread > 100:
        return ("its channels' weight ranges differ by over 100x: keep per-channel weights (the default); "
                "with --per-tensor, equalization (--equalize on) evens them out")
    if row.levels_used < 0.25:
        return ("uses few of the 256 int8 levels: its calibrated range is far wider than its values; "
                "--activation-ranges mse narrows it")
    if row.lost_db >= 3 and row.weight_layer is None:
        return (f"loses {row.lost_db:.1f} dB on its own, with no weights (an activation, pooling or softmax): "
                "the logit floor (--logit-floor on) helps a softmax; --max-disagreement keeps the layers that "
                "cost most in float")
    if row.lost_db >= 3:
        return f"loses {row.lost_db:.1f} dB on its own: keep it in float with --keep-float {row.weight_layer}"
    return "within int8's usual loss"


def _table(rows, times: dict[str, float] | None = None, with_advice: bool = False) -> str:
    """The layers' numbers; ``times``: layer -> ms per run from a profile of the same file."""
    total = sum(times.values()) if times else 0.0

    def cost(layer: str) -> str:
        ms = (times or {}).get(layer)
        return "-" if ms is None else f"{ms:.4f} ({ms / total:.0%})" if total > 0 else f"{ms:.4f}"

    head = ("<tr><th>layer</th><th>type</th><th>SQNR dB</th><th>lost dB</th><th>int8 levels used</th>"
            "<th>weight spread</th>" + ("<th>ms per run (share)</th>" if times else "")
            + ("<th style='text-align:left'>what to do</th>" if with_advice else "") + "</tr>")
    body = "".join(
        f"<tr><td>{html.escape(r.layer)}</td><td>{html.escape(r.kind)}</td><td>{format_db(r.sqnr_db)}</td>"
        f"<td>{r.lost_db:+.1f}</td><td>{r.levels_used:.0%}</td><td>{format_spread(r.weight_spread)}</td>"
        + (f"<td>{cost(r.layer)}</td>" if times else "")
        + (f"<td style='text-align:left'>{html.escape(what_to_do(r))}</td>" if with_advice else "") + "</tr>"
        for r in rows)
    return f"<div class='scroll'><table>{head}{body}</table></div>"
