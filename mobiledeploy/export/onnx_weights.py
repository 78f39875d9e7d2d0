"""Weight-only ONNX files: the float graph with the weights of its convolutions and matrix products
stored as float16 (a Cast back to float32 before use) or as per-channel symmetric int8 (a
DequantizeLinear before use), and float activations. ONNX Runtime's own dynamic quantization
(ConvInteger with activations quantized per call) is not used: on MobileNets it collapses (the
shared MobileNet v1 0.25 agreed with float on none of 300 images), so "dynamic" here means what
the issue trackers ask of it: int8 weights, float activations, no calibration ranges."""

from __future__ import annotations

import numpy as np

LEVELS = 127  # symmetric int8, the converters' grid: scale = max|w| / 127 per output channel
# operator -> (its weight input, the weight's output-channel axis)
WEIGHTED_INPUTS = {"Conv": (1, 0), "Gemm": (1, None), "MatMul": (1, 1)}


def weight_only(proto, precision: str):
    """A copy of ``proto`` whose weights are stored as ``precision`` ('float16' or 'dynamic')."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    done: dict[str, str] = {}  # weight -> the float32 tensor that now stands for it
    nodes = []
    for node in graph.node:
        for position in _weight_inputs(node, precision):
            name = node.input[position]
            if name not in initializers:
                continue  # a computed operand: an activation, not a weight
            if name not in done:
                values = numpy_helper.to_array(initializers[name])
                if values.dtype != np.float32 or values.size < 2:
                    continue
                done[name] = f"{name}_{precision}_weight"
                nodes.append(_stored(graph, initializers[name], values, precision, done[name],
                                     _axis(node, position, values)))
            node.input[position] = done[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if precision == "dynamic":  # DequantizeLinear with an axis: opset 13 or later
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx") and opset.version < 13:
                opset.version = 13
    onnx.checker.check_model(model)
    return model


def _weight_inputs(node, precision: str) -> list[int]:
    """Which inputs of ``node`` hold weights to store: the weight (and, for float16, the bias)."""
    if node.op_type not in WEIGHTED_INPUTS:
        return []
    position = WEIGHTED_INPUTS[node.op_type][0]
    positions = [position]
    if precision == "float16" and node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
        positions.append(2)
    return [p for p in positions if p < len(node.input)]


def _axis(node, position: int, values: np.ndarray) -> int | None:
    """The output-channel axis of a weight (None for a bias or a 1-D tensor)."""
    if position != WEIGHTED_INPUTS[node.op_type][0] or values.ndim < 2:
        return None
    if node.op_type == "Gemm":
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        return 0 if transposed else 1
    return WEIGHTED_INPUTS[node.op_type][1]


def _stored(graph, initializer, values: np.ndarray, precision: str, output: str, axis: int | None):
    """Replace ``initializer`` with its stored form; return the node that restores float32."""
    from onnx import TensorProto, helper, numpy_helper

    name = initializer.name
    graph.initializer.remove(initializer)
    if precision == "float16" or axis is None:
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float16), name))
        return helper.make_node("Cast", [name], [output], name=f"{name}_cast", to=TensorProto.FLOAT)
    others = tuple(i for i in range(values.ndim) if i != axis)
    scale = np.max(np.abs(values.astype(np.float64)), axis=others) / LEVELS
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = -1
    codes = np.clip(np.round(values / scale.reshape(shape)), -LEVELS, LEVELS).astype(np.int8)
    graph.initializer.extend([
        numpy_helper.from_array(codes, name),
        numpy_helper.from_array(scale, f"{name}_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero_point"),
    ])
    return helper.make_node("DequantizeLinear", [name, f"{name}_scale", f"{name}_zero_point"], [output],
                            name=f"{name}_dequantize", axis=axis)
