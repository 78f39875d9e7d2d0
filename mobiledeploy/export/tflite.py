"""TFLite export: float32 and full-integer int8 (TFLITE_BUILTINS_INT8 only), or int8 with the
operators of chosen layers left in float (mixed precision)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import ExportError
from ..model.graph import last_of_each_layer, layer_of
from ..quiet import captured_output
from ..options import ExportSettings
from ..reports import Artifact

FLOAT_FILE = "model_float.tflite"
INT8_FILE = "model_int8.tflite"
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def export(model, representative: Callable[[], Iterable[np.ndarray]], directory: Path,
           settings: ExportSettings, int8_model=None, write_float: bool = True) -> list[Artifact]:
    """model_float.tflite from ``model``; model_int8.tflite from ``int8_model`` (the model
    refined for int8) when given, else from ``model`` too. ``write_float=False`` keeps the
    model_float.tflite an earlier call wrote (the mixed-precision search changes only the int8
    file from round to round)."""
    import tensorflow as tf

    if write_float:
        (directory / FLOAT_FILE).write_bytes(_convert(tf.lite.TFLiteConverter.from_keras_model(model)))

    converter = tf.lite.TFLiteConverter.from_keras_model(int8_model if int8_model is not None else model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: (
        [batch[i:i + 1]] for batch in representative() for i in range(len(batch))
    )
    if settings.io == "int8":
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if not settings.per_channel:
        converter._experimental_disable_per_channel = True  # no public switch exists
    int8_path = directory / INT8_FILE
    keep = frozenset(settings.float_layers)
    float_head = _softmax_output(model) in keep
    calibrated = keep or settings.tensor_ranges
    int8_path.write_bytes(_convert_calibrated(converter, keep, settings, float_head) if calibrated
                          else _convert(converter))

    ops = _ops(int8_path)
    floats = _float_ops(ops)
    # a float softmax head's output tensor is named after the signature, not the layer
    offenders = [name for op, name in floats if layer_of(name, keep) is None and not (float_head and op == "SOFTMAX")]
    if offenders:
        raise ExportError(
            f"{INT8_FILE}: {len(offenders)} op(s) still compute in float ({', '.join(offenders[:5])}); "
            "the model uses a layer the int8 kernels do not cover"
        )
    return [
        Artifact(FLOAT_FILE, "tflite", "float32", details={"runtime": "LiteRT"}),
        Artifact(INT8_FILE, "tflite", "int8", details={
            "runtime": "LiteRT", "io": settings.io, "per_channel": settings.per_channel,
            "float_ops": len(floats), "float_layers": sorted(keep), "ops": _op_counts(ops),
        }),
    ]


def _convert(converter) -> bytes:
    try:
        with captured_output(), warnings.catch_warnings():
            # int8 I/O: the converter takes the input statistics from the calibration data itself
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain exceptions
        raise ExportError(f"TFLite converter failed: {str(exc).strip().splitlines()[0][:200]}") from None


def _convert_calibrated(converter, keep: frozenset[str], settings: ExportSettings, float_head: bool) -> bytes:
    """Integer conversion in two steps: calibrate, then quantize, with the operators of the
    layers in ``keep`` left in float (denylisted) and the calibration statistics of the tensors
    in ``settings.tensor_ranges`` replaced. This is the route of the public
    tf.lite.experimental.QuantizationDebugger; the converter has no per-layer switch."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    converter._experimental_calibrate_only = True
    calibrated = _convert(converter)
    if settings.tensor_ranges:
        calibrated = _with_ranges(calibrated, {name: (low, high) for name, low, high in settings.tensor_ranges})
    nodes = [name for name in _produced_names(_interpreter(content=calibrated)) if layer_of(name, keep)]
    # the output tensor is named after the signature, not the layer: a float softmax head is
    # denylisted by its operator type (a classifier has one)
    ops = ["SOFTMAX"] if float_head else []
    io_type = tf.int8 if settings.io == "int8" else tf.float32
    try:
        with captured_output():
            return convert.mlir_quantize(
                calibrated, disable_per_channel=not settings.per_channel, fully_quantize=settings.io == "int8",
                input_data_type=io_type, output_data_type=io_type, denylisted_nodes=nodes, denylisted_ops=ops)
    except Exception as exc:  # the quantizer raises plain exceptions
        raise ExportError(f"TFLite quantization of the calibrated model failed: {str(exc).strip()[:200]}") from None


def _with_ranges(calibrated: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """The calibrated model with the min/max statistics of each layer's output tensor (the
    last one an operator of that layer produces) set to its range in ``ranges``."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    handed_on = last_of_each_layer(((graph.tensors[i].name.decode(), i) for op in graph.operators for i in op.outputs),
                                   set(ranges))
    missing = sorted(set(ranges) - set(handed_on))
    if missing:
        raise ExportError(f"TFLite converter: no tensor found for {', '.join(missing[:5])} to set its int8 range")
    for layer, index in handed_on.items():
        statistics = graph.tensors[index].quantization
        statistics.min, statistics.max = [float(ranges[layer][0])], [float(ranges[layer][1])]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _softmax_output(model) -> str | None:
    """The name of the model's output layer when it is a softmax."""
    layer = model.get_layer(model.outputs[0]._keras_history.operation.name)
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return layer.name if type(layer).__name__ == "Softmax" or activation == "softmax" else None


def _interpreter(path: Path | None = None, content: bytes | None = None):
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():
        return Interpreter(model_path=str(path)) if path else Interpreter(model_content=content)


def _produced_names(interpreter) -> list[str]:
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [names[i] for op in interpreter._get_ops_details() for i in op["outputs"] if i in names]


def _ops(path: Path) -> list[tuple[str, str, list[np.dtype]]]:
    """(operator, its first output tensor's name, the dtypes of its tensors) for every operator."""
    interpreter = _interpreter(path)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    result = []
    for op in interpreter._get_ops_details():  # no public per-op API in LiteRT 2.x
        indices = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        output = details[op["outputs"][0]]["name"] if len(op["outputs"]) and op["outputs"][0] in details else ""
        result.append((op["op_name"], output, [details[i]["dtype"] if i in details else None for i in indices]))
    return result


def float_ops(path: Path) -> list[str]:
    """Output tensor names of the operators (other than the QUANTIZE/DEQUANTIZE at float
    boundaries) that read or write a float tensor."""
    return [name for _, name in _float_ops(_ops(path))]


def float_op_counts(path: Path) -> dict[str, int]:
    """Operator type -> how many of that type read or write a float tensor (as ``float_ops``)."""
    return dict(sorted(Counter(op for op, _ in _float_ops(_ops(path))).items()))


def _float_ops(ops: list[tuple[str, str, list[np.dtype]]]) -> list[tuple[str, str]]:
    return [
        (op, output) for op, output, dtypes in ops
        if op not in BOUNDARY_OPS and any(d is not None and np.issubdtype(d, np.floating) for d in dtypes)
    ]


def _op_counts(ops: list[tuple[str, str, list[np.dtype]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _, _ in ops:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
