"""Render ``mobiledeploy analyze`` results: a PNG of SQNR by layer depth and an HTML report.

Drawn with Pillow (already a dependency for image decoding) so no plotting stack is needed.
"""

from __future__ import annotations

import base64
import html
import io
import math

from ..reports import AnalyzeReport

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
WIDTH, HEIGHT, MARGIN = 900, 420, 60


def plot_png(report: AnalyzeReport) -> bytes:
    """SQNR (dB) of each artifact's activations against layer depth, one line per artifact."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    series = {name: [r for r in rows if math.isfinite(r.sqnr_db)] for name, rows in report.layers.items()}
    values = [r.sqnr_db for rows in series.values() for r in rows]
    count = max((len(rows) for rows in series.values()), default=1)
    top = max(values, default=40.0)
    top = 10 * math.ceil(top / 10) if top > 0 else 10.0
    bottom = min(0.0, 10 * math.floor(min(values, default=0.0) / 10))

    def x(i: int) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * (i / max(count - 1, 1))

    def y(value: float) -> float:
        return HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (value - bottom) / (top - bottom)

    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    for tick in range(int(bottom), int(top) + 1, 10):
        draw.line([MARGIN - 4, y(tick), WIDTH - MARGIN, y(tick)], fill=(225, 225, 225))
        draw.text((8, y(tick) - 6), f"{tick} dB", fill="black")
    draw.text((MARGIN, HEIGHT - MARGIN + 18), "layer depth (activation tensors in graph order)", fill="black")
    draw.text((MARGIN, 20), f"SQNR vs the float model by layer, {report.samples} images", fill="black")
    for k, (name, rows) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [(x(i), y(r.sqnr_db)) for i, r in enumerate(rows)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((WIDTH - MARGIN - 200, MARGIN + 8 + 14 * k), name, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def html_report(report: AnalyzeReport, png: bytes, worst: int = 10) -> str:
    """A self-contained HTML page: the plot, the worst layers, and every layer's numbers."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mobiledeploy analyze</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child"
        "{text-align:left}</style></head><body>",
        f"<h1>Per-layer int8 drift: {html.escape(report.build_dir)}</h1>",
        f"<p>{report.samples} images from {html.escape(report.data_source)}. SQNR is accumulated up to each "
        "tensor; <em>lost</em> is the SQNR dropped at that layer. Weight spread: largest / 10th-percentile "
        "per-channel weight range of the producing layer (high spread is what per-tensor int8 cannot hold).</p>",
        f"<img alt='SQNR by layer depth' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
    ]
    for name, rows in report.layers.items():
        parts.append(f"<h2>{html.escape(name)}: worst {worst} layers</h2>")
        parts.append(_table(report.worst(name, worst)))
        parts.append(f"<details><summary>all {len(rows)} layers in depth order</summary>{_table(rows)}</details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table(rows) -> str:
    head = "<tr><th>layer</th><th>type</th><th>SQNR dB</th><th>lost dB</th><th>int8 levels used</th>" \
           "<th>weight spread</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(r.layer)}</td><td>{r.kind}</td><td>{format_db(r.sqnr_db)}</td><td>{r.lost_db:+.1f}</td>"
        f"<td>{r.levels_used:.0%}</td><td>{format_spread(r.weight_spread)}</td></tr>"
        for r in rows
    )
    return f"<table>{head}{body}</table>"


def format_db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def format_spread(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else (f"{value:.3g}" if value < 1e4 else f"{value:.1e}")
