"""``analyze --png``: a static picture of SQNR by layer depth, drawn with Pillow (already a
dependency for image decoding), and the number formats the reports share. The interactive page
is report_page.py."""

from __future__ import annotations

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
        legend_y = MARGIN + 8 + 14 * k
        draw.rectangle([WIDTH - MARGIN - 222, legend_y + 3, WIDTH - MARGIN - 206, legend_y + 7], fill=colour)
        draw.text((WIDTH - MARGIN - 200, legend_y), name, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def format_db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def format_spread(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else (f"{value:.3g}" if value < 1e4 else f"{value:.1e}")
