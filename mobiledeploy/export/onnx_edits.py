"""Edits of tf2onnx's graphs before they are saved or quantized: stable names, one Clip for a
capped ReLU, constant reshape targets, and a constant of its own for each element-wise node.
Each keeps the graph's function; each is needed by a tool downstream (byte-identical builds,
ONNX Runtime's quantizer and its graph optimizer)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

# element-wise operators whose constant operand ONNX Runtime quantizes like an activation
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})


def canonical(proto):
    """The same graph with tf2onnx's run-dependent names made stable.

    Two exports of the same model in two processes give the same nodes in the same order, but
    the "__<n>" counters tf2onnx appends to the tensors it creates, and the order of the
    initializers, differ; within one process, so do the symbolic sizes ("unk__<n>", the batch).
    Renumbering those suffixes in order of first use and ordering the initializers by first use
    makes repeated exports byte-identical, and keeps every name that carries a Keras layer name
    readable. A Reshape's target shape is a constant named "<tensor>/shape" in one export and
    "<tensor>/shape__<n>" in another (seen on the shared MobileNet v1 0.25): both count as counted.
    So does a constant several nodes read, which tf2onnx names after whichever of their layers it
    met first, not always the same one (hard-swish's 3 in MobileNetV3).
    """
    pattern = re.compile(r"__\d+")
    first_use: dict[str, int] = {}
    for node in proto.graph.node:
        for name in [*node.input, *node.output]:
            first_use.setdefault(name, len(first_use))
    constants = {t.name for t in proto.graph.initializer}
    readers = Counter(name for node in proto.graph.node for name in node.input)
    mapping = {}
    for name in sorted(first_use, key=first_use.get):
        if pattern.search(name) or (name in constants and (name.endswith("/shape") or readers[name] > 1)):
            # tf2onnx shares one constant (e.g. ReLU6's 0 and 6, hard-swish's 3) among layers and names
            # it after whichever layer it met first, which may differ from run to run: a layer-free
            # name is both stable and honest
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


def own_constants(proto):
    """The same graph where every element-wise node (Add, Sub, Mul, Div) reads a constant of its
    own. tf2onnx shares one constant among all the nodes that use the same number (MobileNetV3's
    hard-swish: 28 Adds read one 3.0, 28 Muls one 1/6); quantized, that becomes one int8
    constant read by 28 node units, and ONNX Runtime's graph optimizer then fails to load the
    file on x86-64 with its exact int8 kernels ('Attempt to replace the existing tensor')."""
    from onnx import numpy_helper

    graph = proto.graph
    constants = {t.name: t for t in graph.initializer}
    readers = Counter(name for node in graph.node for name in node.input)
    for index, node in enumerate(graph.node):
        if node.op_type not in ELEMENTWISE:
            continue
        for position, name in enumerate(node.input):
            if name in constants and readers[name] > 1:
                copy = numpy_helper.from_array(numpy_helper.to_array(constants[name]), f"{name}/{node.name or index}")
                graph.initializer.append(copy)
                node.input[position] = copy.name
                readers[name] -= 1
    return proto
