"""--io uint8: a TFLite file that takes camera pixels (0..255) as they come and gives uint8 scores
with their scale, so an app feeds it without a scaling step of its own."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import REFERENCE_MODEL, ROOT, cli


@pytest.mark.slow
def test_uint8_io_file_reads_raw_pixels_and_agrees_with_float(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from mobiledeploy import manifest
    from mobiledeploy.data import datasets
    from mobiledeploy.runtime.runners import open_runner

    out = tmp_path / "build"
    result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out, "--io", "uint8",
                 "--num-calib", "64", "--num-holdout", "0")
    assert result.exit_code == 0, result.output
    recorded = manifest.read(out)
    (int8_file,) = [a for a in recorded.files if a.format == "tflite" and a.quantized]
    assert int8_file.details["io"] == "uint8"
    interpreter = Interpreter(model_path=str(out / int8_file.file))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert source["dtype"] == np.uint8 and target["dtype"] == np.uint8
    # the input's grid is the pixel scaling's: code q reads as (q - zero point) x 2/255 for x / 127.5 - 1
    scale, zero = source["quantization"]
    assert recorded.preprocessing.scaling == "mobilenet"
    assert scale == pytest.approx(2 / 255, rel=1e-6) and zero in (127, 128)

    data = datasets.open_data(ROOT / "eval_data")
    pixels = next(datasets.iter_batches(data, replace(recorded.preprocessing, scaling="raw"), 200))
    scaled = next(datasets.iter_batches(data, recorded.preprocessing, 200))
    assert pixels.min() >= 0 and pixels.max() <= 255 and pixels.max() > 200
    float_classes = open_runner(out / "model_folded.keras").run(scaled).argmax(axis=1)
    classes = []
    for image in pixels:  # the pixels themselves, as a camera delivers them: no scaling step
        interpreter.set_tensor(source["index"], np.round(image[None]).astype(np.uint8))
        interpreter.invoke()
        scores = interpreter.get_tensor(target["index"])
        assert scores.dtype == np.uint8
        classes.append(int(((scores.astype(np.float32) - target["quantization"][1]) * target["quantization"][0]).argmax()))
    assert np.mean(np.array(classes) == float_classes) >= 0.95
