"""Which tensor of a converter's graph holds a Keras layer's output: found by what it computes,
never by its name.

Keras, the TFLite converter, tf2onnx and ONNX Runtime each name tensors their own way (Keras 3
appends ``_1`` to name scopes, tf2onnx names a depthwise convolution ``Conv__12``, a Keras 2 file
has layers called ``add`` and ``add_1``), so a per-tensor setting keyed by a name breaks on the
next model. Here both graphs run on the same probe images: the Keras model gives every layer's
output, the converter's float graph every tensor its operators produce, and a layer's tensor is
the one with the same values, walking the converter's graph in execution order from the tensors
of the layer's inputs on. A layer whose output no tensor holds was fused by the converter into
the operator of a later layer (a convolution into its ReLU) or rewritten (hard-swish's pieces into
one operator); per-tensor settings skip it and say so.

The operators of a layer are those between the tensors of its inputs and its own tensor (for a
ReLU fused into the convolution before it: that convolution), which is what a layer kept in
float must leave unquantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..model.graph import layer_graph
from ..reports import Fallback
from ..quiet import captured_output

# a tensor holds a layer's output when it differs from it by at most this share (root mean
# square of the difference over that of the values): float kernels of the converters differ from
# TensorFlow's by ~1e-5 in trained MobileNets and by up to 2.6e-3 where an untrained EfficientNet's
# activations reach 7,000; a ReLU's cut of a convolution's output differs by tens of percent
TOLERANCE = 1e-2
PROBE_IMAGES = 2
# layers that can hand their input on unchanged: never the name of a tensor another layer computed
PASSING_ON = frozenset({"Dropout", "Reshape", "Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D"})
# why a per-tensor setting could not apply to a layer no tensor holds (a fallback's note)
FUSED = "the converter fused or rewrote its output (no tensor of the file holds it)"


@dataclass(frozen=True)
class Op:
    """One operator of a converter's graph: its name (the node name in ONNX, the first output
    tensor's name in TFLite), type, and input and output tensors (names, in order)."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ConvertedGraph:
    """A converter's float graph: its operators in execution order, its input tensor, and the
    value of every tensor on the probe images."""

    ops: tuple[Op, ...]
    input: str
    values: dict = field(default_factory=dict)  # tensor name -> array (batch first)


@dataclass(frozen=True)
class TensorMap:
    """Keras layer -> the converter graph's tensor holding its output; the operators that compute
    each layer; and the layers no tensor holds."""

    tensors: dict  # layer -> tensor name
    ops: dict  # layer -> tuple of op names
    unmapped: tuple[str, ...] = ()

    def ops_of(self, layers) -> list[str]:
        """The names of the operators that compute any of ``layers``, in graph order."""
        wanted = {op for layer in layers for op in self.ops.get(layer, ())}
        order = [op for layer in self.ops for op in self.ops[layer]]
        return list(dict.fromkeys(op for op in order if op in wanted))

    def recorded(self, model, present) -> dict[str, str]:
        """What a build records for analyze: layer -> tensor for the tensors ``present`` in the
        final file, one layer per tensor: the last that computes something there (a convolution's
        fused ReLU), not a layer that only passes a tensor on (a Dropout, a reshape, pooling over
        a 1x1 map)."""
        kinds = {name: node["kind"] for name, node in layer_graph(model).items()}
        holders: dict[str, list[str]] = {}
        for layer, tensor in self.tensors.items():  # in graph order
            if tensor in present and kinds.get(layer) != "InputLayer":
                holders.setdefault(tensor, []).append(layer)
        owners = {}
        for tensor, layers in holders.items():
            active = [layer for layer in layers if kinds.get(layer) not in PASSING_ON]
            owners[active[-1] if active else layers[0]] = tensor
        return owners



def uncovered_float_layers(model, float_layers, mapping: TensorMap) -> list[Fallback]:
    """The layers to keep in float that no operator of the file would leave in float: a layer no
    tensor holds is computed by its consumers' operators (a convolution fused with its ReLU), so
    it stays float only when all its consumers do."""
    layers = layer_graph(model)
    kept = set(float_layers)
    return [Fallback(layer, "kept in float", "the converter merged it into an int8 operator; it runs in int8")
            for layer in float_layers if layer in mapping.unmapped
            and not all(c in kept for c in layers[layer]["consumers"])]


def probe_batch(representative) -> np.ndarray:
    """The first ``PROBE_IMAGES`` calibration images: what both graphs run to be matched."""
    batch = next(iter(representative()))
    return np.asarray(batch[:PROBE_IMAGES], np.float32)


def layer_outputs(model, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output on ``batch`` (inference mode), by layer name."""
    import keras

    layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    probe = keras.Model(model.inputs[0], [layer.output for layer in layers], name="tensor_map_probe")
    outputs = probe(batch, training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    values = {layer.name: np.asarray(out, np.float32) for layer, out in zip(layers, outputs)}
    values[model.layers[0].name] = np.asarray(batch, np.float32)
    return values


def build_map(model, keras_values: dict[str, np.ndarray], graph: ConvertedGraph) -> TensorMap:
    """Match every layer of ``model`` to the tensor of ``graph`` with its values (see module)."""
    layers = layer_graph(model)
    producer = {out: index for index, op in enumerate(graph.ops) for out in op.outputs}
    position = {graph.input: -1, **producer}
    tensors: dict[str, str] = {}
    for name, node in layers.items():
        if node["kind"] == "InputLayer":
            tensors[name] = graph.input
            continue
        sources = _mapped_sources(name, layers, tensors)
        after = max((position.get(tensors[s], -1) for s in sources), default=-1)
        found = _first_match(keras_values[name], graph, after)
        if found is None and len(sources) == 1:  # an identity at inference, or fused into the same operator
            source = graph.values.get(tensors[sources[0]])
            # as close to that tensor as the source layer's own output is
            limit = max(TOLERANCE, 2 * _difference(keras_values[sources[0]], source))
            if np.isfinite(limit) and _difference(keras_values[name], source) <= limit:
                found = tensors[sources[0]]
        if found is not None:
            tensors[name] = found
    ops = {}
    for name in layers:
        if name in tensors and layers[name]["kind"] != "InputLayer":
            stops = {tensors[s] for s in _mapped_sources(name, layers, tensors)}
            ops[name] = _ops_between(graph, stops, tensors[name], producer)
    unmapped = tuple(name for name in layers if name not in tensors)
    return TensorMap(tensors, ops, unmapped)


def _mapped_sources(name: str, layers: dict, tensors: dict) -> list[str]:
    """The nearest layers upstream of ``name`` whose tensors are known: its inputs, or for an
    input that no tensor holds (fused forward), that input's own sources."""
    found, stack, seen = [], list(layers[name]["inputs"]), set()
    while stack:
        parent = stack.pop(0)
        if parent in seen:
            continue
        seen.add(parent)
        if parent in tensors:
            found.append(parent)
        else:
            stack.extend(layers[parent]["inputs"])
    return found


def _first_match(reference: np.ndarray, graph: ConvertedGraph, after: int) -> str | None:
    """The first tensor produced after position ``after`` that holds ``reference``."""
    for op in graph.ops[after + 1:]:
        for tensor in op.outputs:
            if _difference(reference, graph.values.get(tensor)) <= TOLERANCE:
                return tensor
    return None


def _difference(reference: np.ndarray, candidate) -> float:
    """How far ``candidate`` is from holding ``reference``'s values: the RMS of the difference
    over the RMS of the values (inf when it cannot be the same tensor). ``candidate`` may hold
    them in the channels-first (NCHW) layout, as ONNX convolutions keep a channels-last tensor."""
    if candidate is None or candidate.size != reference.size or candidate.dtype.kind != "f":
        return np.inf
    scale = max(float(np.linalg.norm(reference)), 1e-12)
    layouts = [reference.reshape(candidate.shape)] if candidate.shape != reference.shape else [reference]
    if reference.ndim == 4 and candidate.shape == (reference.shape[0], reference.shape[3], *reference.shape[1:3]):
        layouts.append(np.transpose(reference, (0, 3, 1, 2)))
    return min(float(np.linalg.norm(candidate - layout)) for layout in layouts) / scale


def _ops_between(graph: ConvertedGraph, stops: set[str], target: str, producer: dict) -> tuple[str, ...]:
    """The operators on a path from any of the ``stops`` tensors to ``target``, in graph order."""
    reached = set(stops)  # tensors computed from the stops
    downstream = set()
    for index, op in enumerate(graph.ops):
        if any(t in reached for t in op.inputs):
            downstream.add(index)
            reached.update(op.outputs)
    upstream, stack = set(), [producer[target]] if target in producer else []
    while stack:
        index = stack.pop()
        if index in upstream or index not in downstream:
            continue
        upstream.add(index)
        stack.extend(producer[t] for t in graph.ops[index].inputs if t in producer and t not in stops)
    return tuple(graph.ops[i].name for i in sorted(upstream))


# --- the converters' graphs -------------------------------------------------------------


def tflite_graph(content: bytes, batch: np.ndarray) -> ConvertedGraph:
    """A float .tflite model (the converter's calibrated model) as a graph, every tensor's value
    on ``batch`` kept."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with captured_output(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        # without XNNPACK, whose delegate would own the tensors: every operator computes its own
        interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(batch.shape))
    with captured_output():
        interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], batch.astype(detail["dtype"]))
    interpreter.invoke()
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops, values = [], {}
    for op in interpreter._get_ops_details():  # no public per-op API in LiteRT 2.x
        if op["op_name"] == "DELEGATE":
            continue
        outputs = tuple(names[i] for i in op["outputs"] if i in names)
        ops.append(Op(outputs[0] if outputs else op["op_name"], op["op_name"],
                      tuple(names[i] for i in op["inputs"] if i in names), outputs))
        for index in op["outputs"]:
            values[names[index]] = np.asarray(interpreter.get_tensor(index))
    values[names[detail["index"]]] = batch
    return ConvertedGraph(tuple(ops), names[detail["index"]], values)


def onnx_graph(proto, batch: np.ndarray) -> ConvertedGraph:
    """A float ONNX model as a graph, every node output's value on ``batch`` computed by ONNX
    Runtime with its graph optimizations off (so every node still exists)."""
    import onnxruntime as ort
    from onnx import helper

    constants = {t.name for t in proto.graph.initializer}
    feed = next(i.name for i in proto.graph.input if i.name not in constants)
    probe = type(proto)()
    probe.CopyFrom(proto)
    declared = {o.name for o in probe.graph.output}
    names = [out for node in probe.graph.node for out in node.output if out and out not in declared]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    values = dict(zip(outputs, session.run(outputs, {feed: batch.astype(np.float32)})))
    values[feed] = batch
    ops = tuple(Op(node.name or node.output[0], node.op_type, tuple(node.input), tuple(o for o in node.output if o))
                for node in proto.graph.node)
    return ConvertedGraph(ops, feed, {k: np.asarray(v) for k, v in values.items()})
