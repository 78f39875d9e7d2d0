"""analyze: per-layer drift of the int8 files against the folded float model."""

import json
import math
from pathlib import Path

from click.testing import CliRunner

from mobiledeploy.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_per_layer_report_plot_and_html(reference_build, tmp_path):
    result = CliRunner().invoke(main, ["analyze", str(reference_build), "--data", str(ROOT / "eval_data" / "3"),
                                       "--max-images", "24", "--png", str(tmp_path / "p.png"),
                                       "--html", str(tmp_path / "r.html"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["samples"] == 24 and set(report["layers"]) == {"model_int8.tflite", "model_int8.onnx"}
    for rows in report["layers"].values():
        assert len(rows) >= 27  # conv1 + 13 depthwise + 13 pointwise activations, at least
        depths = [r["depth"] for r in rows]
        assert depths == sorted(set(depths))
        for before, row in zip(rows, rows[1:]):
            assert math.isclose(row["lost_db"], before["sqnr_db"] - row["sqnr_db"], abs_tol=1e-9)
        for row in rows:
            assert 0 < row["levels_used"] <= 1 and 5 < row["sqnr_db"] < 80
        depthwise = [r for r in rows if r["weight_layer"] and r["weight_layer"].startswith("conv_dw_")]
        assert len(depthwise) == 13 and all(r["weight_spread"] >= 1 for r in depthwise)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "r.html").read_text()
    assert "<svg" in page and "data-layer='conv_pw_13_relu'" in page  # the chart; test_report_page.py has more
