"""TFLite export: float32 and full-integer int8 (TFLITE_BUILTINS_INT8 only)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import ExportError
from ..quiet import captured_output
from ..types import Artifact, ExportSettings

FLOAT_FILE = "model_float.tflite"
INT8_FILE = "model_int8.tflite"
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def export(model, representative: Callable[[], Iterable[np.ndarray]], directory: Path,
           settings: ExportSettings, int8_model=None) -> list[Artifact]:
    """model_float.tflite from ``model``; model_int8.tflite from ``int8_model`` (the model
    refined for int8) when given, else from ``model`` too."""
    import tensorflow as tf

    float_path = directory / FLOAT_FILE
    float_path.write_bytes(_convert(tf.lite.TFLiteConverter.from_keras_model(model)))

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
    int8_path.write_bytes(_convert(converter))

    offenders = float_ops(int8_path)
    if offenders:
        raise ExportError(
            f"{INT8_FILE}: {len(offenders)} op(s) still compute in float ({', '.join(offenders[:5])}); "
            "the model uses a layer the int8 kernels do not cover"
        )
    return [
        Artifact(FLOAT_FILE, "tflite", "float32", details={"runtime": "LiteRT"}),
        Artifact(INT8_FILE, "tflite", "int8", details={
            "runtime": "LiteRT", "io": settings.io, "per_channel": settings.per_channel,
            "float_ops": 0, "ops": op_counts(int8_path),
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


def _ops(path: Path) -> list[tuple[str, list[np.dtype]]]:
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():
        interpreter = Interpreter(model_path=str(path))
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    result = []
    for op in interpreter._get_ops_details():  # no public per-op API in LiteRT 2.x
        indices = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        result.append((op["op_name"], [tensors.get(i) for i in indices]))
    return result


def float_ops(path: Path) -> list[str]:
    """Ops (other than the I/O QUANTIZE/DEQUANTIZE) that read or write a float tensor."""
    return [
        name for name, dtypes in _ops(path)
        if name not in BOUNDARY_OPS and any(d is not None and np.issubdtype(d, np.floating) for d in dtypes)
    ]


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _ in _ops(path):
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
