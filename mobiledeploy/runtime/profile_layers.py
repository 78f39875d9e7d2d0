"""Which Keras layer each operator ONNX Runtime profiled belongs to, found by graph structure.

ONNX Runtime profiles the graph it optimized, not the file: a DequantizeLinear, Conv, Relu and
QuantizeLinear of the file become one QLinearConv with names of ONNX Runtime's own, and int8
weights may be shifted to uint8. What the optimized node keeps is its weights and bias: their
values (up to that shift of 128) are the file's. So an optimized node that reads weights maps to
the file's operator that read them, and that operator belongs to the layer whose tensor it
computes or leads to (the build's ``tensor_map`` names each layer's tensor in the file, found by
value when the build was made). A node without weights of its own (an Add, a pool, a
QuantizeLinear) counts for the first layer downstream of it; time after the last layer's tensor
(the output's dequantization) is left unattributed and counted as such.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _downstream_owners(nodes, seeds: dict[str, str]) -> dict[int, str]:
    """node index -> the layer whose tensor the node computes, or the first layer downstream of it.
    ``seeds``: tensor name -> layer (the layers' own tensors)."""
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    owners: dict[int, str] = {}
    for index in range(len(nodes) - 1, -1, -1):  # consumers come later: walk backwards
        node = nodes[index]
        own = next((seeds[o] for o in node.output if o in seeds), None)
        if own is None:
            later = [c for o in node.output for c in consumers.get(o, ()) if c in owners]
            own = owners[min(later)] if later else None
        if own is not None:
            owners[index] = own
    return owners


def attribute(original: Path, optimized: Path, tensor_map: dict[str, str]) -> dict[str, str]:
    """Node name of the optimized graph -> layer, for every node that can be placed."""
    import onnx
    from onnx.numpy_helper import to_array

    file_graph = onnx.load(str(original), load_external_data=False).graph
    run_graph = onnx.load(str(optimized), load_external_data=False).graph
    file_nodes = list(file_graph.node)
    file_owner = _downstream_owners(file_nodes, {tensor: layer for layer, tensor in tensor_map.items()})
    readers: dict[bytes, set[str]] = {}  # a weight's or bias's content -> the layers whose operators read it
    weights = {i.name: key for i in file_graph.initializer if (key := _key(to_array(i))) is not None}
    for index, node in enumerate(file_nodes):
        for name in node.input:
            if name in weights and index in file_owner:
                readers.setdefault(weights[name], set()).add(file_owner[index])
    run_keys = {i.name: _keys(to_array(i)) for i in run_graph.initializer}
    placed = {}  # an output tensor of each optimized node whose weights say its layer -> layer
    for node in run_graph.node:
        layers = {layer for name in node.input for key in run_keys.get(name, ()) for layer in readers.get(key, ())}
        if len(layers) == 1 and node.output:
            placed[node.output[0]] = layers.pop()
    run_nodes = list(run_graph.node)
    owners = _downstream_owners(run_nodes, placed)  # the rest: the first placed node downstream
    return {node.name: owners[i] for i, node in enumerate(run_nodes) if i in owners}


def _key(values: np.ndarray) -> bytes | None:
    """A weight's or bias's values as a key (int8, uint8 and int32 tensors holding more than one
    value; scales and zero points, shared between layers, say nothing)."""
    if values.dtype not in (np.int8, np.uint8, np.int32) or values.size < 2 or (values == values.flat[0]).all():
        return None
    return values.dtype.str.encode() + bytes(str(values.shape), "ascii") + values.tobytes()


def _keys(values: np.ndarray) -> list[bytes]:
    """The keys an optimized graph's initializer may match: as it is, and a uint8 tensor as the
    int8 one it was shifted from."""
    key = _key(values)
    if key is None:
        return []
    return [key, _key((values.astype(np.int16) - 128).astype(np.int8))] if values.dtype == np.uint8 else [key]


def layer_times(node_ms: dict[str, float], owners: dict[str, str]) -> tuple[dict[str, float], float]:
    """(layer -> ms per run, the share of the profiled time that no layer took)."""
    total = sum(node_ms.values())
    layers: dict[str, float] = {}
    for node, ms in node_ms.items():
        if node in owners:
            layers[owners[node]] = layers.get(owners[node], 0.0) + ms
    unplaced = total - sum(layers.values())
    return layers, (unplaced / total if total > 0 else 0.0)
