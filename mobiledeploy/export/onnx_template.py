"""tf2onnx once for a model whose weights change: the mixed-precision search exports the same
refined graph once a round, with other weights, and tf2onnx takes about a second a time.

``Reconverter`` converts a second time with each weight value replaced by a marker (an
integer from 2**23 on, which float32 holds exactly): an initializer of that graph holding only
markers is a rearrangement of the weights (tf2onnx transposes and reshapes kernels), and the
markers say which weight value goes where; one holding none is not made of weights (shapes,
clip bounds). From then on, a model with the same configuration is the template with its
weights gathered in, provided the template gives back, byte for byte, the graph the plain
conversion gave for the model before; otherwise (tf2onnx computed a constant from weights,
shared one between layers, or dropped the Add of a bias of zeros, which markers never are)
every round converts. A later model whose weights tf2onnx would simplify (a bias that became
zero) gets the template's graph: the same function, one Add more.

It also keeps the last graph's tensor map (``tensor_map``): which tensor holds which layer's
output depends on what the graph computes, not on its weights, so a later graph of the same
nodes and initializer shapes, for a model of the same configuration, takes it instead of running
both graphs on the probe images again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..model.graph import configuration

MARK = 2.0 ** 23  # float32 holds every integer in [2**23, 2**24) exactly, 1 apart
MAX_VALUES = 1 << 23  # weights a template can mark


@dataclass
class Template:
    proto: Any
    gathers: dict[str, np.ndarray]  # initializer name -> the flat weight values it holds, in its order

    def filled(self, weights: list[np.ndarray]):
        """The template's graph holding ``weights`` (a model's ``get_weights()``)."""
        from onnx import numpy_helper

        flat = np.concatenate([np.asarray(w, np.float32).reshape(-1) for w in weights])
        proto = type(self.proto)()
        proto.CopyFrom(self.proto)
        for tensor in proto.graph.initializer:
            if tensor.name in self.gathers:
                index = self.gathers[tensor.name]
                tensor.CopyFrom(numpy_helper.from_array(flat[index].reshape(tuple(tensor.dims)), tensor.name))
        return proto


@dataclass
class Reconverter:
    """What one build's rounds keep between their ONNX exports."""

    last: tuple | None = None  # (configuration, weights, serialized graph) of the last plain conversion
    template: tuple | None = None  # (configuration, Template)
    outcomes: list[str] = field(default_factory=list)  # per call: 'converted', 'template' or 'checked'
    mapped: tuple | None = None  # (configuration, graph without its weights' values, tensor map) of the last map

    def tensor_map(self, model, proto, build: Callable[[], Any]):
        """``build()``, the tensor map of ``proto`` (ONNX) for ``model``; the last one when the graph
        and the model's configuration are the same but for the weights' values."""
        key = (configuration(model), structure(proto))
        if self.mapped is None or self.mapped[:2] != key:
            self.mapped = (*key, build())
        return self.mapped[2]

    def convert(self, model, convert: Callable[[Any], Any]):
        """``convert(model)``'s graph, from the template when the model's configuration has one."""
        config = configuration(model)
        if self.template is not None and self.template[0] == config:
            self.outcomes.append("template")
            return self.template[1].filled(model.get_weights())
        if self.last is not None and self.last[0] == config:  # the second graph like it: try a template
            try:
                template = _template(model, convert)
            except Exception:  # noqa: BLE001 - an optimization: a failure here converts the plain way
                template = None
            if template is not None and _serialized(template.filled(self.last[1])) == self.last[2]:
                self.template = (config, template)
                self.outcomes.append("checked")
                return template.filled(model.get_weights())
        proto = convert(model)
        self.last = (config, model.get_weights(), _serialized(proto))
        self.outcomes.append("converted")
        return proto


def _serialized(proto) -> bytes:
    return proto.SerializeToString(deterministic=True)


def structure(proto) -> bytes:
    """``proto`` serialized without its initializers' values (their names, types and shapes kept)."""
    bare = type(proto)()
    bare.CopyFrom(proto)
    for tensor in bare.graph.initializer:
        for values in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            tensor.ClearField(values)
    return _serialized(bare)


def _template(model, convert: Callable[[Any], Any]) -> Template | None:
    """``convert`` of ``model`` with its weights as markers, read as a template; None when the
    model has too many weights to mark or an initializer mixes markers with other values."""
    import keras
    from onnx import numpy_helper

    weights = model.get_weights()
    sizes = [int(np.size(w)) for w in weights]
    if sum(sizes) > MAX_VALUES or any(np.asarray(w).dtype != np.float32 for w in weights):
        return None
    marked = keras.Model.from_config(model.get_config())
    offsets = np.cumsum([0, *sizes])
    marked.set_weights([(MARK + np.arange(offsets[i], offsets[i + 1])).astype(np.float32).reshape(np.shape(w))
                        for i, w in enumerate(weights)])
    proto = convert(marked)
    gathers = {}
    for tensor in proto.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.float32 or values.size == 0:
            continue
        marks = (values >= MARK) & (values < MARK + offsets[-1]) & (values == np.floor(values))
        if marks.all():
            gathers[tensor.name] = (values.reshape(-1) - MARK).astype(np.int64)
        elif marks.any():
            return None
    return Template(proto, gathers)
