"""ONNX export: tf2onnx float model, then ONNX Runtime static quantization (QDQ, S8S8), with
the nodes of chosen layers left in float (mixed precision) when asked."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import ExportError
from ..quiet import captured_output
from ..runtime.onnx_session import (ORT_DISABLED_OPTIMIZERS, ORT_SESSION_CONFIG, float_compute_nodes,
                                    runtime_float_ops)
from ..options import ExportSettings
from ..reports import Artifact, Fallback
from . import tensor_map

FLOAT_FILE = "model_float.onnx"
INT8_FILE = "model_int8.onnx"
INPUT_NAME = "input"  # the exported graphs' input, named in tf2onnx's input signature


def export(model, representative: Callable[[], Iterable[np.ndarray]], directory: Path,
           settings: ExportSettings, int8_model=None, write_float: bool = True) -> list[Artifact]:
    """model_float.onnx from ``model``; model_int8.onnx quantized from ``int8_model`` (the
    model refined for int8) when given, else from ``model`` too. ``write_float=False`` keeps the
    model_float.onnx an earlier call wrote (as the TFLite exporter does)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path = directory / FLOAT_FILE
    if write_float:
        onnx.save(canonical(_to_onnx(model, settings.opset)), str(float_path))
    source = float_path
    int8_path = directory / INT8_FILE
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        if int8_model is not None:
            source = Path(scratch) / "refined.onnx"
            onnx.save(canonical(_to_onnx(int8_model, settings.opset)), str(source))
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference needs sympy and adds nothing for fixed-size CNNs.
        with captured_output():
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # the prepared graph is what the quantizer reads: settings go to its tensors and nodes
        probe = tensor_map.probe_batch(representative)
        keras_model = int8_model if int8_model is not None else model
        mapping = tensor_map.build_map(keras_model, tensor_map.layer_outputs(keras_model, probe),
                                       tensor_map.onnx_graph(onnx.load(str(prepared)), probe))
        fallbacks: list[Fallback] = []
        overrides = _range_overrides(settings.tensor_ranges, mapping, fallbacks)
        kept = [name for name in mapping.ops_of(settings.float_layers) if name]
        fallbacks += tensor_map.uncovered_float_layers(keras_model, settings.float_layers, mapping)
        try:
            with captured_output():
                quantize_static(
                    str(prepared), str(int8_path), _reader(INPUT_NAME, representative),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8 if settings.onnx_activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=settings.per_channel,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=kept,
                    extra_options=overrides,
                )
        except Exception as exc:
            raise ExportError(f"ONNX Runtime quantization failed: {str(exc).strip().splitlines()[0][:200]}") from None
    float_nodes = float_compute_nodes(int8_path)
    unfused = runtime_float_ops(int8_path, set(kept))
    unquantized = [name for name in float_nodes if name not in kept]
    if unquantized:
        raise ExportError(
            f"{INT8_FILE}: {len(unquantized)} compute node(s) were left in float ({', '.join(unquantized[:5])})"
        )
    quantized = {node.input[0] for node in onnx.load(str(int8_path), load_external_data=False).graph.node
                 if node.op_type == "QuantizeLinear"}
    return [
        Artifact(FLOAT_FILE, "onnx", "float32", details={"runtime": "ONNX Runtime", "opset": settings.opset}),
        Artifact(INT8_FILE, "onnx", "int8", details={
            "runtime": "ONNX Runtime", "opset": settings.opset, "format": "QDQ", "activations": settings.onnx_activations,
            "weights": "int8", "per_channel": settings.per_channel, "io": "float32",
            "float_layers": sorted(settings.float_layers), "float_nodes": len(float_nodes),
            # what this machine's ONNX Runtime still runs in float after fusing the QDQ node units
            "runtime_float_ops": unfused, "runtime_checked_on": _this_runtime(),
            # without this, ONNX Runtime re-quantizes the float layers (see runners)
            "session_options": {"disabled_optimizers": ORT_DISABLED_OPTIMIZERS} if float_nodes else {},
            # without these, ONNX Runtime's int8 kernels saturate on x86-64 CPUs without VNNI (see runners)
            "session_config": dict(ORT_SESSION_CONFIG),
            # which quantized tensor of this file holds each layer's output (analyze reads it)
            "tensor_map": mapping.recorded(keras_model, quantized),
            "kept_nodes": kept,
            "fallbacks": [f.to_dict() for f in fallbacks],
        }),
    ]


def canonical(proto):
    """The same graph with tf2onnx's run-dependent names made stable.

    Two exports of the same model in two processes give the same nodes in the same order, but
    the "__<n>" counters tf2onnx appends to the tensors it creates, and the order of the
    initializers, differ; within one process, so do the symbolic sizes ("unk__<n>", the batch).
    Renumbering those suffixes in order of first use and ordering the initializers by first use
    makes repeated exports byte-identical, and keeps every name that carries a Keras layer name
    readable.
    """
    import re

    pattern = re.compile(r"__\d+")
    first_use: dict[str, int] = {}
    for node in proto.graph.node:
        for name in [*node.input, *node.output]:
            first_use.setdefault(name, len(first_use))
    constants = {t.name for t in proto.graph.initializer}
    mapping = {}
    for name in sorted(first_use, key=first_use.get):
        if pattern.search(name):
            # tf2onnx shares one constant (e.g. ReLU6's 0 and 6) among layers and names it after
            # whichever layer it met first: a layer-free name is both stable and honest
            base = "const" if name in constants else pattern.sub("", name)
            mapping[name] = f"{base}__{len(mapping)}"

    def rename(name: str) -> str:
        return mapping.get(name, name)

    for index, node in enumerate(proto.graph.node):
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = pattern.sub(f"__n{index}", node.name)
    for info in [*proto.graph.initializer, *proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        info.name = rename(info.name)
    position = {rename(name): i for name, i in first_use.items()}
    _reorder(proto.graph.initializer, lambda t: (position.get(t.name, len(position)), t.name))
    _reorder(proto.graph.value_info, lambda v: v.name)
    dims: dict[str, str] = {}  # symbolic sizes ("unk__557") count on across exports in one process
    for info in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if pattern.search(dim.dim_param):
                dim.dim_param = dims.setdefault(dim.dim_param, f"{pattern.sub('', dim.dim_param)}__{len(dims)}")
    return proto


def _reorder(field, key) -> None:
    """Sort a repeated protobuf field in place."""
    items = sorted(field, key=key)
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


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


def clips_as_one_node(proto):
    """The same graph with each Relu -> Min(c) -> Max(0) chain, which tf2onnx makes of a ReLU
    with a cap other than 6 (``--activation-ranges mse`` lowers ReLU6 caps), as one Clip(0, c).

    The two compute the same values, but ONNX Runtime's quantizer leaves Min and Max in float
    between their own QDQ pairs and quantizes the Relu's output on its own uncapped range, so the
    activation was rounded twice, first on a coarser grid; a Clip it removes, and the convolution
    before it writes int8 over [0, c] at once, as the TFLite file and the refinement do."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers = Counter(name for node in graph.node for name in node.input)

    def scalar(name: str) -> float | None:
        value = values.get(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None

    for low in [node for node in graph.node if node.op_type == "Max"]:
        cap = producer.get(low.input[0])
        relu = producer.get(cap.input[0]) if cap is not None and cap.op_type == "Min" else None
        if relu is None or relu.op_type != "Relu" or len(low.input) != 2 or len(cap.input) != 2 \
                or scalar(low.input[1]) != 0.0 or scalar(cap.input[1]) is None \
                or readers.get(cap.output[0]) != 1 or readers.get(relu.output[0]) != 1:
            continue
        bounds = [f"{low.output[0]}/min", f"{low.output[0]}/max"]
        for name, value in zip(bounds, (0.0, scalar(cap.input[1]))):
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        clip = helper.make_node("Clip", [relu.input[0], *bounds], list(low.output), name=f"{low.name}/clip")
        graph.node.insert(list(graph.node).index(relu), clip)
        for node in (relu, cap, low):
            graph.node.remove(node)
    _drop_unused(graph)
    return proto


def fixed_reshapes(proto):
    """The same graph with every Reshape whose target shape is computed at run time (Shape ->
    Gather -> Concat of the batch size) given it as a constant, [-1, d1, ...], when the graph
    computes the same sizes but the batch for a batch of 1 and of 2; the nodes that computed it
    are dropped.

    tf2onnx folds the batch size that Keras' Reshape reads off its input into a constant, but not
    always (seen once in a simulated CI run, not reproduced): left dynamic, it keeps ONNX Runtime
    from fusing the QDQ node units around it, and a Conv then runs in float."""
    from onnx import helper, numpy_helper

    constants = {t.name for t in proto.graph.initializer}
    reshapes = [node for node in proto.graph.node if node.op_type == "Reshape" and node.input[1] not in constants]
    feeds = [i for i in proto.graph.input if i.name not in constants]
    dims = [list(feeds[0].type.tensor_type.shape.dim)] if len(feeds) == 1 else []
    if not reshapes or not dims or not all(d.HasField("dim_value") for d in dims[0][1:]):
        return proto
    probe = type(proto)()
    probe.CopyFrom(proto)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(node.input[1]) for node in reshapes)
    targets = _outputs(probe, feeds[0].name, [d.dim_value for d in dims[0][1:]], (1, 2),
                       [node.input[1] for node in reshapes])
    for node, one, two in zip(reshapes, *targets):
        one, two = np.asarray(one).tolist(), np.asarray(two).tolist()
        if len(one) < 2 or one[0] != 1 or two[0] != 2 or one[1:] != two[1:] or min(one[1:]) <= 0:
            continue
        name = f"{node.output[0]}/shape"
        proto.graph.initializer.append(numpy_helper.from_array(np.array([-1, *one[1:]], np.int64), name))
        node.input[1] = name
    _drop_unused(proto.graph)
    return proto


def _outputs(proto, feed: str, shape: list[int], batches: tuple[int, ...], names: list[str]) -> list[list]:
    """For each batch size, the values of the graph outputs ``names`` of ``proto`` on an input of
    zeros of ``(batch, *shape)`` (ONNX Runtime, CPU; one session)."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(names, {feed: np.zeros((batch, *shape), np.float32)}) for batch in batches]


def _drop_unused(graph) -> None:
    """Remove the nodes none of whose outputs is read (by a node or as a graph output), until
    none is left, then the constants no node reads."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unused = [node for node in graph.node if not any(out in read for out in node.output)]
        if not unused:
            break
        for node in unused:
            graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


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
            fallbacks.append(Fallback(layer, "activation range", mapping.why_missing(layer) + "; kept its calibration range"))
            continue
        overrides[tensor] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    return {"TensorQuantOverrides": overrides} if overrides else {}


def _this_runtime() -> str:
    import platform

    import onnxruntime as ort

    return f"ONNX Runtime {ort.__version__} ({platform.machine()})"
