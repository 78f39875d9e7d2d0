"""TFLite export: float32, and the quantized file of the precision asked for: full-integer int8
(TFLITE_BUILTINS_INT8 only, or with the operators of chosen layers left in float), int16x8 (16-bit
activations, int8 weights: the converter's 16x8 mode), float16 weights, or int8 weights with float
activations (the converter's dynamic range mode)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import ExportError
from ..quiet import captured_output
from ..options import WEIGHT_ONLY, ExportSettings
from ..reports import Artifact, Fallback
from . import tensor_map, tflite_calibration
from .tensor_map import TensorMap, uncovered_float_layers

FLOAT_FILE = "model_float.tflite"
BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
SHAPE_OPS = frozenset({"SHAPE"})  # read a tensor's shape, not its values: nothing computes in float


def export_float(model, directory: Path) -> None:
    """model_float.tflite alone, from ``model`` (``export`` lists it)."""
    import tensorflow as tf

    (directory / FLOAT_FILE).write_bytes(_convert(tf.lite.TFLiteConverter.from_keras_model(model)))


def quantized_file(precision: str) -> str:
    """The quantized file's name: model_int8.tflite, model_int16x8.tflite, ..."""
    return f"model_{precision}.tflite"


def export(model, representative: Callable[[], Iterable[np.ndarray]], directory: Path,
           settings: ExportSettings, int8_model=None, write_float: bool = True) -> list[Artifact]:
    """model_float.tflite from ``model``; model_int8.tflite from ``int8_model`` (the model
    refined for int8) when given, else from ``model`` too. ``write_float=False`` keeps the
    model_float.tflite an earlier call wrote (the mixed-precision search changes only the int8
    file from round to round).

    The int8 file is made in two steps, calibrate then quantize (the route of the public
    tf.lite.experimental.QuantizationDebugger; the converter has no per-layer switch), so that
    the calibrated float graph can be matched to the Keras layers (``tensor_map``) in between:
    the narrowed ranges and the layers kept in float are applied to the tensors and operators
    that compute those layers, whatever the converter named them."""
    if write_float:
        export_float(model, directory)

    source = int8_model if int8_model is not None else model
    if settings.precision in WEIGHT_ONLY:
        return [_float_artifact(), _weight_only(source, directory, settings.precision)]
    calibrated = _calibrated(source, representative, settings)
    probe = tensor_map.probe_batch(representative)
    mapping = tensor_map.build_map(source, tensor_map.layer_outputs(source, probe),
                                   tensor_map.tflite_graph(calibrated, probe))
    fallbacks: list[Fallback] = []
    calibrated = _with_ranges(calibrated, settings.tensor_ranges, mapping, fallbacks, settings.input_range)
    kept_ops = mapping.ops_of(settings.float_layers)
    fallbacks += uncovered_float_layers(source, settings.float_layers, mapping)
    float_head = _softmax_output(model) in set(settings.float_layers)
    int8_path = directory / quantized_file(settings.precision)
    if settings.precision == "int16x8":
        int8_path.write_bytes(_int16x8(source, representative, settings))
    elif settings.precision == "mixed":
        int8_path.write_bytes(_mixed(source, representative, calibrated, mapping, settings, fallbacks))
    else:
        int8_path.write_bytes(_quantize(calibrated, settings, kept_ops, float_head))

    ops = _ops(int8_path)
    floats = _float_ops(ops)
    # a float softmax head's output tensor is named after the signature, not the layer
    offenders = [name for op, name in floats if name not in kept_ops and not (float_head and op == "SOFTMAX")]
    if offenders:
        raise ExportError(
            f"{int8_path.name}: {len(offenders)} op(s) still compute in float ({', '.join(offenders[:5])}); "
            f"the model uses a layer the {settings.precision} kernels do not cover"
        )
    produced = {name for _, name, _ in ops}
    return [
        _float_artifact(),
        Artifact(int8_path.name, "tflite", settings.precision, details={
            "runtime": "LiteRT", "io": settings.io if settings.io != "float" and settings.precision == "int8" else "float32",
            "per_channel": settings.per_channel,
            "float_ops": len(floats), "float_layers": sorted(settings.float_layers), "ops": _op_counts(ops),
            **({"int16_layers": sorted(settings.int16_layers)} if settings.precision == "mixed" else {}),
            # which tensor of this file holds each layer's output (analyze reads it)
            "tensor_map": mapping.recorded(source, produced),
            "fallbacks": [f.to_dict() for f in fallbacks],
        }),
    ]


def _float_artifact() -> Artifact:
    return Artifact(FLOAT_FILE, "tflite", "float32", details={"runtime": "LiteRT"})


def _calibrated(source, representative: Callable[[], Iterable[np.ndarray]], settings: ExportSettings) -> bytes:
    """The converter's int8 calibration of ``source`` on the representative images: on the first
    image, its statistics then taken over all of them on every core (``tflite_calibration``); the
    converter's own calibration on all of them where that cannot run."""
    import tensorflow as tf

    def calibrate(images: Callable[[], Iterable[np.ndarray]]) -> bytes:
        converter = _calibrating(source, images, settings, tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
        if settings.io in ("int8", "uint8") and settings.precision == "int8":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, settings.io)
        converter._experimental_calibrate_only = True
        return _convert(converter)

    fast = tflite_calibration.statistics(calibrate(tflite_calibration.first_image(representative)), representative)
    return fast if fast is not None else calibrate(representative)


def _int16x8(source, representative: Callable[[], Iterable[np.ndarray]], settings: ExportSettings) -> bytes:
    """The converter's 16x8 mode: int16 activations (symmetric), int8 weights, float I/O. Only the
    converter's own calibrate-and-quantize path makes it (the MLIR quantizer writes int32 biases
    that LiteRT's 16x8 depthwise kernel refuses), so it calibrates again on the same images."""
    import tensorflow as tf

    ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    return _convert(_calibrating(source, representative, settings, ops))


def _calibrating(source, representative: Callable[[], Iterable[np.ndarray]], settings: ExportSettings, ops):
    """A converter of ``source`` to the integer operator set ``ops``, calibrated one image at a time
    on the representative batches, with one weight scale per channel unless settings say per tensor."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [ops]
    converter.representative_dataset = lambda: (
        [batch[i:i + 1]] for batch in representative() for i in range(len(batch))
    )
    if not settings.per_channel:
        converter._experimental_disable_per_channel = True  # no public switch exists
    return converter


def _mixed(source, representative: Callable[[], Iterable[np.ndarray]], calibrated: bytes, mapping: TensorMap,
           settings: ExportSettings, fallbacks: list[Fallback]) -> bytes:
    """int8, with 16-bit activations out of the operators that compute ``settings.int16_layers``:
    ai-edge-quantizer's per-operator recipes (an operator is matched by its output tensor's name,
    which ``mapping`` found by value). The activation ranges are the converter's calibration with
    the narrowed ranges (``calibrated``), as in the int8 file, not the library's own statistics
    (measured on the shared MobileNet: its own gave 62% agreement where the converter's gave 77%)."""
    import re

    import tensorflow as tf
    from ai_edge_quantizer import quantizer, qtyping
    from tensorflow.lite.tools import flatbuffer_utils

    with captured_output():
        recipes = quantizer.Quantizer(_convert(tf.lite.TFLiteConverter.from_keras_model(source)))
        granularity = qtyping.QuantGranularity.CHANNELWISE if settings.per_channel else qtyping.QuantGranularity.TENSORWISE
        every = qtyping.TFLOperationName.ALL_SUPPORTED
        recipes.add_static_config(".*", every, 8, 8, granularity)
        wide = sorted({mapping.tensors[layer] for layer in settings.int16_layers if mapping.tensors.get(layer)})
        if settings.int16_layers and not wide:
            fallbacks.append(Fallback(",".join(settings.int16_layers), "16-bit activations",
                                      tensor_map.FUSED + "; left in int8"))
        for name in wide:
            recipes.add_static_config(f"^{re.escape(name)};$", every, 16, 8, granularity)
        key, feed = _signature(calibrated)
        statistics = recipes.calibrate({key: [{feed: batch[i:i + 1]} for batch in representative()
                                              for i in range(len(batch))]})
        converter = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
        for tensor in converter.subgraphs[0].tensors:
            found = statistics.get(tensor.name.decode())
            ranges = tensor.quantization
            if found is not None and ranges is not None and ranges.min is not None and len(ranges.min):
                found["min"] = np.asarray(ranges.min, np.float32).reshape(np.shape(found["min"]))
                found["max"] = np.asarray(ranges.max, np.float32).reshape(np.shape(found["max"]))
        try:
            return bytes(recipes.quantize(statistics).quantized_model)
        except Exception as exc:  # the library raises plain exceptions
            raise ExportError(f"16-bit activations for {', '.join(settings.int16_layers)}: ai-edge-quantizer "
                              f"failed ({str(exc).strip().splitlines()[0][:160]})") from None


def _signature(model: bytes) -> tuple[str, str]:
    """The serving signature's key and its input's name (ai-edge-quantizer feeds calibration by them)."""
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():
        signatures = Interpreter(model_content=model).get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def _weight_only(source, directory: Path, precision: str) -> Artifact:
    """float16 weights (dequantized to float32 where the CPU computes), or int8 weights with float
    activations (the converter's dynamic range mode: its kernels quantize activations on the fly)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "float16":
        converter.target_spec.supported_types = [tf.float16]
    path = directory / quantized_file(precision)
    path.write_bytes(_convert(converter))
    return Artifact(path.name, "tflite", precision, details={
        "runtime": "LiteRT", "io": "float32", "weights": "float16" if precision == "float16" else "int8",
        "activations": "float32", "ops": _op_counts(_ops(path))})


def _convert(converter) -> bytes:
    try:
        with captured_output(), warnings.catch_warnings():
            # int8 I/O: the converter takes the input statistics from the calibration data itself
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain exceptions
        raise ExportError(f"TFLite converter failed: {str(exc).strip().splitlines()[0][:200]}") from None


def _quantize(calibrated: bytes, settings: ExportSettings, kept_ops: list[str], float_head: bool) -> bytes:
    """The calibrated model quantized, the operators ``kept_ops`` (and a float softmax head, by
    its type: its output tensor is named after the signature) left in float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    from tensorflow.lite.python.util import modify_model_io_type

    io_type = tf.int8 if settings.io == "int8" else tf.float32  # uint8: float, then the converter's own I/O edit
    try:
        with captured_output(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            quantized = convert.mlir_quantize(
                calibrated, disable_per_channel=not settings.per_channel, fully_quantize=settings.io == "int8",
                input_data_type=io_type, output_data_type=io_type, denylisted_nodes=list(kept_ops),
                denylisted_ops=["SOFTMAX"] if float_head else [])
            return bytes(modify_model_io_type(quantized, tf.uint8, tf.uint8)) if settings.io == "uint8" else quantized
    except Exception as exc:  # the quantizer raises plain exceptions
        raise ExportError(f"TFLite quantization of the calibrated model failed: {str(exc).strip()[:200]}") from None


def _with_ranges(calibrated: bytes, ranges: tuple[tuple[str, float, float], ...], mapping: TensorMap,
                 fallbacks: list[Fallback], input_range: tuple[float, float] | None = None) -> bytes:
    """The calibrated model with the min/max statistics of each layer's output tensor set to its
    range in ``ranges``; a layer no tensor holds keeps its calibration range (a fallback). With
    ``input_range`` the model's input gets it (the graph's first input, found by position): the
    range the pixel scaling gives 0..255, so that uint8 input codes are the pixels themselves."""
    from tensorflow.lite.tools import flatbuffer_utils

    if not ranges and input_range is None:
        return calibrated
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    if input_range is not None:
        statistics = graph.tensors[graph.inputs[0]].quantization
        statistics.min, statistics.max = [float(input_range[0])], [float(input_range[1])]
    index = {tensor.name.decode(): i for i, tensor in enumerate(graph.tensors)}
    for layer, low, high in ranges:
        name = mapping.tensors.get(layer)
        if name is None or name not in index:
            fallbacks.append(Fallback(layer, "activation range", tensor_map.FUSED + "; kept its calibration range"))
            continue
        statistics = graph.tensors[index[name]].quantization
        statistics.min, statistics.max = [float(low)], [float(high)]
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
        if op not in BOUNDARY_OPS | SHAPE_OPS and any(d is not None and np.issubdtype(d, np.floating) for d in dtypes)
    ]


def _op_counts(ops: list[tuple[str, str, list[np.dtype]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, _, _ in ops:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
