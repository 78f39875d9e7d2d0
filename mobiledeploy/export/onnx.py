"""ONNX export: tf2onnx float model, then the quantized file of the precision asked for: ONNX
Runtime static quantization (QDQ: int8 weights with int8 activations, the nodes of chosen layers
left in float when asked, or with int16 activations), or the weights alone stored as float16 or
int8 (``onnx_weights``). The graph edits between the two are in ``onnx_edits``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import ExportError
from ..model.graph import WEIGHTED, layer_graph
from ..quiet import captured_output
from ..runtime.onnx_session import (ORT_DISABLED_OPTIMIZERS, ORT_SESSION_CONFIG, float_compute_nodes,
                                    runtime_float_ops)
from ..options import WEIGHT_ONLY, ExportSettings
from ..reports import Artifact, Fallback
from . import tensor_map
from .onnx_edits import canonical, clips_as_one_node, fixed_reshapes, own_constants
from .onnx_calibration import Calibrations, live_at
from .onnx_template import Reconverter
from .onnx_weights import weight_only

FLOAT_FILE = "model_float.onnx"
INPUT_NAME = "input"  # the exported graphs' input, named in tf2onnx's input signature


def export(model, representative: Callable[[], Iterable[np.ndarray]], directory: Path,
           settings: ExportSettings, int8_model=None, write_float: bool = True,
           reconverter: Reconverter | None = None, calibrations: Calibrations | None = None,
           following: str | None = None) -> list[Artifact]:
    """model_float.onnx from ``model``; model_int8.onnx quantized from ``int8_model`` (the
    model refined for int8) when given, else from ``model`` too. ``write_float=False`` keeps the
    model_float.onnx an earlier call wrote (as the TFLite exporter does). ``reconverter`` (kept
    between the calls of one build) converts ``int8_model``s of the same graph once
    (``onnx_template``); ``calibrations`` (kept likewise) calibrates again only the tensors the
    changed weights reach, and keeps what the next call needs when it takes the layer ``following``
    out of int8 (``onnx_calibration``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path = directory / FLOAT_FILE
    if write_float:
        onnx.save(canonical(_to_onnx(model, settings.opset)), str(float_path))
    if int8_model is model:  # nothing refined (the plain settings): the float file's graph, not tf2onnx again
        int8_model = None
    int8_path = directory / quantized_file(settings.precision)
    if settings.precision in WEIGHT_ONLY:
        proto = canonical(_to_onnx(int8_model, settings.opset)) if int8_model is not None else onnx.load(str(float_path))
        onnx.save(weight_only(proto, settings.precision), str(int8_path))
        return [_float_artifact(settings), Artifact(int8_path.name, "onnx", settings.precision, details={
            "runtime": "ONNX Runtime", "opset": _opset(int8_path), "format": "weights only",
            "weights": "float16" if settings.precision == "float16" else "int8", "activations": "float32",
            "io": "float32", "per_channel": settings.precision == "dynamic"})]
    activations = QuantType.QInt16 if settings.precision == "int16x8" else \
        QuantType.QUInt8 if settings.onnx_activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        source = Path(scratch) / "source.onnx"
        if int8_model is None:
            proto = onnx.load(str(float_path))
        elif reconverter is not None:
            proto = reconverter.convert(int8_model, lambda keras_model: canonical(_to_onnx(keras_model, settings.opset)))
        else:
            proto = canonical(_to_onnx(int8_model, settings.opset))
        onnx.save(proto, str(source))
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference needs sympy and adds nothing for fixed-size CNNs.
        with captured_output():
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        prepared_proto = own_constants(onnx.load(str(prepared)))  # after its constant sharing
        onnx.save(prepared_proto, str(prepared))
        # the prepared graph is what the quantizer reads: settings go to its tensors and nodes
        keras_model = int8_model if int8_model is not None else model

        def build_map():
            probe = tensor_map.probe_batch(representative)
            return tensor_map.build_map(keras_model, tensor_map.layer_outputs(keras_model, probe),
                                        tensor_map.onnx_graph(prepared_proto, probe))

        mapping = reconverter.tensor_map(keras_model, prepared_proto, build_map) if reconverter else build_map()
        fallbacks: list[Fallback] = []
        overrides = _range_overrides(settings.tensor_ranges, mapping, fallbacks)
        if settings.int16_layers:  # --precision mixed: these layers' output tensors in 16 bits
            overrides = _sixteen_bit(overrides, settings.int16_layers, mapping, fallbacks)
        kept = [name for name in mapping.ops_of(settings.float_layers) if name]
        fallbacks += tensor_map.uncovered_float_layers(keras_model, settings.float_layers, mapping)
        cache = None
        if calibrations is not None and settings.precision == "int8":
            # where the next round's layer starts, then where each weighted layer does, from the last back
            weighted = [name for name, node in layer_graph(keras_model).items() if node["kind"] in WEIGHTED]
            keep = [live_at(prepared_proto, mapping.ops.get(name, ())) for name in [following, *weighted[::-1]] if name]
            try:
                with captured_output():
                    cache = calibrations.cache_file(prepared_proto, INPUT_NAME, representative, keep, Path(scratch))
            except Exception:  # noqa: BLE001 - an optimization: ONNX Runtime then calibrates the whole graph itself
                calibrations.clear()
        try:
            with captured_output():
                quantize_static(
                    str(prepared), str(int8_path), _reader(INPUT_NAME, representative),
                    quant_format=QuantFormat.QDQ,
                    activation_type=activations,
                    weight_type=QuantType.QInt8,
                    per_channel=settings.per_channel,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=kept,
                    extra_options=overrides,
                    calibration_cache_path=cache,
                )
        except Exception as exc:
            raise ExportError(f"ONNX Runtime quantization failed: {str(exc).strip().splitlines()[0][:200]}") from None
    float_nodes = float_compute_nodes(int8_path)
    unfused = runtime_float_ops(int8_path, set(kept))
    unquantized = [name for name in float_nodes if name not in kept]
    if unquantized:
        raise ExportError(
            f"{int8_path.name}: {len(unquantized)} compute node(s) were left in float ({', '.join(unquantized[:5])})"
        )
    quantized = {node.input[0] for node in onnx.load(str(int8_path), load_external_data=False).graph.node
                 if node.op_type == "QuantizeLinear"}
    return [
        _float_artifact(settings),
        Artifact(int8_path.name, "onnx", settings.precision, details={
            "runtime": "ONNX Runtime", "opset": _opset(int8_path), "format": "QDQ",
            "activations": "int16" if settings.precision == "int16x8" else settings.onnx_activations,
            **({"int16_layers": sorted(settings.int16_layers)} if settings.precision == "mixed" else {}),
            "weights": "int8", "per_channel": settings.per_channel, "io": "float32",
            "float_layers": sorted(settings.float_layers), "float_nodes": len(float_nodes),
            # what this machine's ONNX Runtime still runs in float after fusing the QDQ node units
            "runtime_float_ops": unfused, "runtime_checked_on": _this_runtime(),
            # without this, ONNX Runtime re-quantizes the float layers (see runners)
            "session_options": {"disabled_optimizers": ORT_DISABLED_OPTIMIZERS} if float_nodes else {},
            # without these, ONNX Runtime's int8 kernels saturate on x86-64 CPUs without VNNI (see runners)
            "session_config": dict(ORT_SESSION_CONFIG) if settings.precision != "int16x8" else {},  # int8 node units
            # which quantized tensor of this file holds each layer's output (analyze reads it)
            "tensor_map": mapping.recorded(keras_model, quantized),
            "kept_nodes": kept,
            "fallbacks": [f.to_dict() for f in fallbacks],
        }),
    ]


def quantized_file(precision: str) -> str:
    """The quantized file's name: model_int8.onnx, model_int16x8.onnx, ..."""
    return f"model_{precision}.onnx"


def _float_artifact(settings: ExportSettings) -> Artifact:
    return Artifact(FLOAT_FILE, "onnx", "float32", details={"runtime": "ONNX Runtime", "opset": settings.opset})


def _opset(path: Path) -> int:
    """The default-domain opset a file declares (ONNX Runtime's quantizer raises it to 21 for
    16-bit activations)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _to_onnx(model, opset: int):
    import tensorflow as tf
    import tf2onnx

    shape = (None, *model.inputs[0].shape[1:])
    signature = (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)
    try:
        with captured_output():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx failed: {str(exc).strip().splitlines()[0][:200]}") from None
    return clips_as_one_node(fixed_reshapes(proto))


def _reader(input_name: str, representative: Callable[[], Iterable[np.ndarray]]):
    """An onnxruntime CalibrationDataReader over the shared calibration batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._feeds = ({input_name: batch} for batch in representative())

        def get_next(self):
            return next(self._feeds, None)

    return Reader()


def _range_overrides(ranges: tuple[tuple[str, float, float], ...], mapping: tensor_map.TensorMap,
                     fallbacks: list[Fallback]) -> dict:
    """ONNX Runtime's per-tensor overrides that give each layer's output tensor its range in
    ``ranges`` instead of the calibration min/max; a layer no tensor holds keeps its calibration
    range (a fallback)."""
    overrides = {}
    for layer, low, high in ranges:
        tensor = mapping.tensors.get(layer)
        if tensor is None:
            fallbacks.append(Fallback(layer, "activation range", tensor_map.FUSED + "; kept its calibration range"))
            continue
        overrides[tensor] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    return {"TensorQuantOverrides": overrides} if overrides else {}


def _sixteen_bit(overrides: dict, layers: tuple[str, ...], mapping: tensor_map.TensorMap,
                 fallbacks: list[Fallback]) -> dict:
    """ONNX Runtime's per-tensor overrides with the output tensors of ``layers`` quantized to int16
    (its mixed-precision QDQ: the node units reading them compute from 16-bit inputs)."""
    from onnxruntime.quantization import QuantType

    tensors = dict(overrides.get("TensorQuantOverrides", {}))
    wide = sorted({mapping.tensors[layer] for layer in layers if mapping.tensors.get(layer)})
    if not wide:
        fallbacks.append(Fallback(",".join(layers), "16-bit activations", tensor_map.FUSED + "; left in int8"))
    for tensor in wide:
        entry = dict(tensors.get(tensor, [{}])[0])
        entry.pop("rmin", None), entry.pop("rmax", None)  # a narrowed int8 range does not apply to 16 bits
        tensors[tensor] = [{**entry, "quant_type": QuantType.QInt16}]
    return {**overrides, "TensorQuantOverrides": tensors}


def _this_runtime() -> str:
    import platform

    import onnxruntime as ort

    return f"ONNX Runtime {ort.__version__} ({platform.machine()})"
