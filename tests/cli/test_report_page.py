"""``analyze --html``: the page, rendered by a real headless Chromium (Debian's package; .ci/run
installs it). The chart must show both int8 files, and the page must not scroll sideways at 800 px."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, cli, strict_json
from mobiledeploy.cli.report_page import COLOURS, what_to_do
from mobiledeploy.reports import LayerDrift

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def page(reference_build, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    bench = folder / "bench.json"
    result = cli("bench", reference_build, "--warmup-runs", 1, "--num-runs", 3, "--min-secs", 0, "--profile", "--json")
    strict_json(result.stdout, "bench")  # layer_ms as its schema says
    bench.write_text(result.stdout)
    result = cli("analyze", reference_build, "--data", ROOT / "eval_data" / "3", "--max-images", 20,
                 "--html", folder / "report.html", "--bench", bench)
    assert result.exit_code == 0, result.output
    return folder / "report.html"


def test_the_page_is_self_contained_and_says_what_the_build_is(page):
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//)""", text)  # nothing fetched at view time
    assert "mobilenet_0.25_32" in text and "refine adaround" in text  # the model and its settings
    assert re.search(r"model_int8\.tflite: agreement with float</b>\d+\.\d% of \d+ held-out images", text)
    assert re.search(r"median \d+\.\d{3} ms on cpu", text)  # latency, from --bench
    assert text.count("<polyline class='series'") == 2 and "data-layer='conv_pw_13_relu'" in text


def test_the_profile_places_each_fused_node_on_its_layer_by_structure(page, reference_build, tmp_path):
    """ONNX Runtime fuses and renames the file's nodes; each QLinearConv it runs must land on the
    layer whose convolution it computes (by the weights it reads), one per layer, and bench's
    JSON and the page must carry the layers' times (their values are timings: not compared)."""
    import json

    import onnx

    from mobiledeploy.runtime.onnx_session import save_optimized_onnx
    from mobiledeploy.runtime.profile_layers import attribute

    layers = next(f for f in json.loads((reference_build / "manifest.json").read_text())["files"]
                  if f["file"] == "model_int8.onnx")["details"]["tensor_map"]
    save_optimized_onnx(str(reference_build / "model_int8.onnx"), tmp_path / "optimized.onnx", None)
    owners = attribute(reference_build / "model_int8.onnx", tmp_path / "optimized.onnx", layers)
    convs = [owners.get(n.name) for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node
             if n.op_type == "QLinearConv"]
    expected = ["conv1_relu", *[f"conv_{kind}_{i}_relu" for i in range(1, 14) for kind in ("dw", "pw")], "conv_preds"]
    assert convs == expected

    rows = {r["artifact"]: r for r in json.loads((page.parent / "bench.json").read_text())["rows"]}
    times = rows["model_int8.onnx"]["layer_ms"]
    assert set(expected) <= set(times) <= set(layers) and all(ms >= 0 for ms in times.values())
    assert 0 <= rows["model_int8.onnx"]["layer_ms_unattributed"] < 1
    assert not rows["model_int8.tflite"]["layer_ms"]  # LiteRT has no per-operator profiler here
    text = page.read_text()
    assert "<th>ms per run (share)</th>" in text
    assert re.search(r"<td>conv_pw_13_relu</td>(<td>[^<]*</td>){5}<td>\d+\.\d{4} \(\d+%\)</td>", text)


def test_advice_follows_what_the_numbers_point_at():
    spread = LayerDrift("conv_dw_1_relu", 3, "ReLU", 20.0, 4.0, 0.9, "conv_dw_1", 400.0)
    narrow = LayerDrift("conv_pw_5_relu", 9, "ReLU", 30.0, 1.0, 0.1, "conv_pw_5", 3.0)
    lossy = LayerDrift("conv_pw_9_relu", 12, "ReLU", 25.0, 3.5, 0.9, "conv_pw_9", 3.0)
    softmax = LayerDrift("predictions", 30, "Activation", 25.0, 5.0, 1.0, None, None)
    fine = LayerDrift("conv_pw_2_relu", 5, "ReLU", 33.0, 1.3, 1.0, "conv_pw_2", 2.4)
    assert "--per-tensor" in what_to_do(spread) and "mse" in what_to_do(narrow)
    assert "--keep-float conv_pw_9" in what_to_do(lossy) and "--logit-floor" in what_to_do(softmax)
    assert what_to_do(fine) == "within int8's usual loss"


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_a_real_browser_shows_both_lines_without_sideways_scrolling(page, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=800,1400",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    for colour in COLOURS[:2]:  # the TFLite line and the ONNX line, each visible
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=1) < 40).sum() > 200, colour
    dom = subprocess.run([*flags, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    width = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
    assert width <= 800, f"the page is {width} px wide at a window of 800 px"
