"""Run one other post-training quantizer on a float file: the worker of other_quantizers.py.

    <tool's venv>/bin/python benchmarks/helpers/quantizer_tools.py TOOL VARIANT FLOAT_FILE CALIB_NPY OUT_FILE [ITERATIONS]

Runs in the tool's own virtualenv (other_quantizers.py makes it), so it imports only the tool,
numpy and onnx, never mobiledeploy. CALIB_NPY holds the calibration images exactly as
mobiledeploy feeds them to its own exporters (NHWC float32, preprocessed). Each variant is the
tool's documented API with its defaults, changing only what the variant's name says. Prints one
JSON line: the tool's version and the seconds its quantization took.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ADAROUND_IMAGES = 64  # what mobiledeploy's adaptive rounding reads too


def nncf_quantize(variant: str, float_file: Path, calib: np.ndarray, out: Path) -> str:
    """Intel's NNCF on the float ONNX file: its defaults (min-max ranges, fast bias correction)
    or its full bias correction (``fast_bias_correction=False``)."""
    import nncf
    import onnx

    model = onnx.load(str(float_file))
    # NNCF's ONNX backend cannot put its statistics or quantizers on an edge that ends the
    # graph ("This edge does not have end node"): end the graph with an Identity.
    output = model.graph.output[0].name
    last = next(node for node in model.graph.node if output in node.output)
    last.output[list(last.output).index(output)] = output + "_before_identity"
    model.graph.node.append(onnx.helper.make_node("Identity", [output + "_before_identity"], [output]))
    name = model.graph.input[0].name
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda image: {name: image})
    fast = {"defaults": True, "bias-correction": False}[variant]
    onnx.save(nncf.quantize(model, dataset, subset_size=len(calib), fast_bias_correction=fast), str(out))
    return "nncf"


def aimet_quantize(variant: str, float_file: Path, calib: np.ndarray, out: Path, iterations: int = 1000) -> str:
    """Qualcomm's AIMET (aimet-onnx) on the float ONNX file, with its per-channel config:
    min-max or its SQNR-based ``tf_enhanced`` ranges, sequential MSE weight ranges (min-max), or
    AdaRound with ``tf_enhanced`` ranges (``adaround``, on the first 64 images; AIMET suggests
    10,000 iterations a layer, this runs ``iterations``: 1,000 take 5 to 7 minutes here)."""
    import aimet_onnx
    import onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround, apply_seq_mse

    config = Path(aimet_onnx.__file__).parent / "common" / "quantsim_config" / "default_config_per_channel.json"
    # seq-mse needs min_max ranges; AdaRound ran best with tf_enhanced (77.7% agreement against
    # 68.0% with min_max on seed 2026's split)
    scheme = "min_max" if variant in ("min-max", "seq-mse") else "tf_enhanced"
    model = onnx.load(str(float_file))
    name = model.graph.input[0].name
    batches = [{name: calib[i:i + 16]} for i in range(0, len(calib), 16)]
    sim = QuantizationSimModel(model, param_type="int8", activation_type="int8", quant_scheme=scheme,
                               config_file=str(config), providers=["CPUExecutionProvider"])
    few = batches[:ADAROUND_IMAGES // 16]
    if variant == "seq-mse":
        apply_seq_mse(sim, few)
    elif variant == "adaround":
        apply_adaround(sim, few, num_iterations=iterations)
    elif variant not in ("min-max", "tf-enhanced"):
        raise SystemExit(f"unknown aimet variant {variant}")
    sim.compute_encodings(batches)
    onnx.save(sim.to_onnx_qdq(), str(out))
    return "aimet-onnx"


def aeq_quantize(variant: str, float_file: Path, calib: np.ndarray, out: Path) -> str:
    """Google's AI Edge Quantizer on the float TFLite file: its static int8 recipe
    (``static_wi8_ai8``: per-channel int8 weights, int8 activations) with min-max or OCTAV."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signatures = Interpreter(model_path=str(float_file)).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    algorithm = {"min-max": recipe.AlgorithmName.MIN_MAX_UNIFORM_QUANT, "octav": recipe.AlgorithmName.OCTAV}[variant]
    tool = quantizer.Quantizer(str(float_file), recipe.static_wi8_ai8(algorithm))
    ranges = tool.calibrate({key: [{name: calib[i:i + 1]} for i in range(len(calib))]})
    tool.quantize(ranges, enable_progress_report=False).export_model(str(out), overwrite=True)
    return "ai-edge-quantizer"


def mct_quantize(variant: str, model_file: Path, calib: np.ndarray, out: Path) -> str:
    """Sony's Model Compression Toolkit on the Keras model itself (it folds BatchNorm on its
    own; it needs TensorFlow < 2.16, which cannot read Keras 3 files), with its default target
    platform (``imx500``: power-of-two activation ranges, per-channel weights), exported as an
    int8 TFLite file. (Its ``tflite`` target fails in 2.6.1: "An OpQuantizationConfig can't have
    both enable_activation_quantization and quantization_preserving enabled".)"""
    import model_compression_toolkit as mct
    import tensorflow as tf

    model = tf.keras.models.load_model(str(model_file), compile=False)
    platform = mct.get_target_platform_capabilities(device_type=variant)

    def batches():
        for start in range(0, len(calib), 16):
            yield [calib[start:start + 16]]

    quantized, _ = mct.ptq.keras_post_training_quantization(model, batches, target_platform_capabilities=platform)
    mct.exporter.keras_export_model(model=quantized, save_model_path=str(out),
                                    serialization_format=mct.exporter.KerasExportSerializationFormat.TFLITE,
                                    quantization_format=mct.exporter.QuantizationFormat.INT8)
    return "model-compression-toolkit"


TOOLS = {"nncf": nncf_quantize, "aimet": aimet_quantize, "aeq": aeq_quantize, "mct": mct_quantize}


def main() -> None:
    tool, variant, float_file, calib_file, out = sys.argv[1:6]
    extra = {"iterations": int(sys.argv[6])} if tool == "aimet" and len(sys.argv) > 6 else {}
    calib = np.load(calib_file)
    started = time.perf_counter()
    package = TOOLS[tool](variant, Path(float_file), calib, Path(out), **extra)
    seconds = time.perf_counter() - started
    print(json.dumps({"version": f"{package} {version(package)}", "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
