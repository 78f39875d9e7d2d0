"""A floor under the logits that feed a classifier's softmax, chosen for the int8 grid.

The int8 tensor that feeds the softmax spreads its 256 levels over the whole calibrated range
of the logits. On the ImageNet MobileNet v1 0.25 that range is [-15, 27]: one step is 0.17,
so two classes whose probabilities differ by up to 18% can land on the same level, and the
argmax then picks the lower class index, whichever was on top in float. Yet softmax hardly
looks at the low end: a class 15 below the top gets e^-15 of its probability.

Softmax is shift invariant, so ``softmax(max(x, c)) = softmax(relu(x - c))``, and
``relu(x - c)`` is what the layer that produces the logits computes once ``c`` is taken off its
bias and its activation becomes ReLU, which every converter fuses into the layer. The int8
tensor then spans [0, max - c] and its step shrinks by (max - min) / (max - c). The floor ``c``
is the one that minimises the squared error of the softmax output on the calibration images,
with the int8 rounding of the logits simulated; raising it lifts every class below it to the
floor's probability, so the search stops where that costs more than the finer grid saves. It
stays 5 nats below every calibration image's top logit, so the classes that matter for an
image less confident than any seen keep their exact values; and a floor that does not cut
the error by a fifth is not applied (small floors only move where the grid falls).

Only the file the int8 converters see gets the floor; the float files and the folded model
stay as they were.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from .folding import history_refs, plain_config, rewire
from ..model.graph import SHAPE_ONLY, activation_name, configuration, layer_graph
from .refine import fake_quantize
from ..reports import LogitFloorReport

PRODUCERS = {"Conv2D", "Dense"}
CANDIDATES = 96
KEEP_NATS = 5.0  # logits this close to an image's top (probability ratio e^-5) are never floored
MIN_GAIN = 0.8  # a floor must cut the softmax's int8 error by at least 20%


def softmax_logits(model) -> tuple[str, bool] | None:
    """(the layer that computes the logits, whether its own activation is the softmax), when
    the model's softmax is fed by a linear Conv2D/Dense with a bias through shape-only layers
    and sees one distribution per image; otherwise None."""
    graph = layer_graph(model)
    for name, node in graph.items():
        layer = model.get_layer(name)
        if activation_name(layer) == "softmax" and node["kind"] in PRODUCERS:
            return (name, True) if _plain_producer(layer, fused=True) else None
        if node["kind"] == "Softmax" or (node["kind"] == "Activation" and activation_name(layer) == "softmax"):
            if node["kind"] == "Softmax" and getattr(layer, "axis", -1) not in (-1, len(layer.output.shape) - 1):
                return None
            parent = node["inputs"][0] if len(node["inputs"]) == 1 else None
            while parent and graph[parent]["kind"] in SHAPE_ONLY and len(graph[parent]["consumers"]) == 1:
                parent = graph[parent]["inputs"][0] if len(graph[parent]["inputs"]) == 1 else None
            if parent and graph[parent]["kind"] in PRODUCERS and len(graph[parent]["consumers"]) == 1 \
                    and _plain_producer(model.get_layer(parent), fused=False) \
                    and _per_image(model.get_layer(parent), layer):
                return parent, False
            return None
    return None


def choose_floor(logits: np.ndarray) -> float | None:
    """The floor that minimises the softmax output's squared error over ``logits`` (one row
    per image) with the logits rounded to int8 on [floor, max]; None when no floor cuts the
    error by a fifth."""
    logits = np.asarray(logits, np.float64).reshape(len(logits), -1)
    low, high = float(logits.min()), float(logits.max())
    reference = _softmax(logits)
    tops = logits.max(axis=1)
    typical_top = float(np.median(tops))  # beyond the typical top logit a floor only hurts
    # every calibration image keeps its classes within KEEP_NATS of its top exactly, so an image
    # less confident than any seen in calibration still has room below its top classes
    ceiling = min(float(tops.min()) - KEEP_NATS, high)
    candidates = np.linspace(low, typical_top, CANDIDATES)
    candidates = candidates[candidates < ceiling]
    if len(candidates) < 2:
        return None
    errors = [float(np.sum((_softmax(_int8_grid(logits, c, high)) - reference) ** 2)) for c in candidates]
    best = int(np.argmin(errors))
    # small floors move where the grid falls and win or lose by luck; ask for a real gain
    return float(candidates[best]) if errors[best] < MIN_GAIN * errors[0] else None


def apply_floor(model, layer_name: str, fused: bool, floor: float):
    """A copy of ``model`` whose ``layer_name`` outputs relu(logits - floor), followed by the
    softmax (split off into its own layer when it was the layer's activation)."""
    return _with_head(model, layer_name, fused, "relu", floor)


def floored(model, report: LogitFloorReport | None):
    """``model`` with the floor ``report`` chose applied, or ``model`` itself when there is none."""
    return apply_floor(model, report.layer, report.split_softmax, report.floor) if report else model


@dataclass
class FlooredCopies:
    """``floored`` for a series of models of one configuration (the refined models of the search's
    rounds): the copy built for the first is refilled with each later one's weights, the values a
    new copy would get, without building the model again."""

    key: tuple | None = None  # the configuration and the floor the copy was built for
    copy: Any = None

    def of(self, model, report: LogitFloorReport | None):
        if report is None:
            return model
        key = (configuration(model), report)
        if key != self.key:
            self.copy, self.key = floored(model, report), key
        else:
            _copy_weights(self.copy, model, report.layer, report.floor)
        return self.copy


def floor_logits(model, calib: np.ndarray, chunk: int = 32, read: dict | None = None) -> LogitFloorReport | None:
    """Find the softmax's logits in ``model`` and choose their floor on ``calib``; None when the
    model has no such softmax or no floor lowers the error. ``read`` (a dict, when given) receives
    the logits under their layer's name when that layer's own output is the logits (no softmax
    fused into it): ``mse_ranges`` takes them from there instead of running the model again."""
    import keras

    found = softmax_logits(model)
    if found is None:
        return None
    name, fused = found
    # a fused layer's own output is the softmax: split it off to read the logits
    split = _with_head(model, name, fused, "linear", 0.0) if fused else model
    probe = keras.Model(split.inputs[0], split.get_layer(name).output)
    logits = np.concatenate([np.asarray(probe.predict_on_batch(calib[i:i + chunk])).reshape(
        len(calib[i:i + chunk]), -1) for i in range(0, len(calib), chunk)])
    if read is not None and not fused:
        read[name] = logits
    floor = choose_floor(logits)
    if floor is None:
        return None
    low, high = float(logits.min()), float(logits.max())
    return LogitFloorReport(layer=name, split_softmax=fused, floor=floor, calibrated_range=(low, high),
                            step_ratio=(high - low) / (high - floor),
                            share_below=float(np.mean(logits < floor)))


def _plain_producer(layer, fused: bool) -> bool:
    return (fused or activation_name(layer) == "linear") and bool(getattr(layer, "use_bias", False))


def _per_image(producer, softmax) -> bool:
    """One distribution per image: the softmax's last axis holds all of the logits."""
    size = int(np.prod(producer.output.shape[1:]))
    return softmax.output.shape[-1] == size


def _with_head(model, layer_name: str, fused: bool, activation: str, shift: float):
    """A copy of ``model`` with ``activation`` on ``layer_name`` and ``shift`` taken off its bias;
    a softmax that was its activation becomes a layer of its own."""
    import keras

    config = plain_config(model.get_config())
    entry = next(layer for layer in config["layers"] if layer["name"] == layer_name)
    entry["config"]["activation"] = activation
    if fused:
        _insert_softmax(config, entry)
    rebuilt = keras.Model.from_config(config)
    _copy_weights(rebuilt, model, layer_name, shift)
    return rebuilt


def _copy_weights(rebuilt, model, layer_name: str, shift: float) -> None:
    """``model``'s weights into ``rebuilt`` (``_with_head`` of it), ``shift`` off ``layer_name``'s bias."""
    for layer in rebuilt.layers:
        if layer.weights:
            weights = model.get_layer(layer.name).get_weights()
            if layer.name == layer_name:
                weights[-1] = (weights[-1] - np.float32(shift)).astype(np.float32)
            layer.set_weights(weights)


def _insert_softmax(config: dict, entry: dict) -> None:
    """Put an Activation('softmax') layer after ``entry`` and point its consumers at it."""
    name = entry["name"]
    softmax_name = f"{name}_softmax"
    rewire(config, {name: softmax_name})
    node = copy.deepcopy(entry["inbound_nodes"][0])
    for ref in history_refs(node):
        ref[:] = [name, 0, 0]
    softmax = {"module": "keras.layers", "class_name": "Activation", "registered_name": None,
               "name": softmax_name, "inbound_nodes": [node],
               "config": {"name": softmax_name, "activation": "softmax", "trainable": False,
                          "dtype": entry["config"].get("dtype", "float32")}}
    config["layers"].insert(config["layers"].index(entry) + 1, softmax)


def _int8_grid(logits: np.ndarray, floor: float, high: float) -> np.ndarray:
    """relu(logits - floor) rounded to the int8 grid of [0, high - floor], shifted back."""
    return fake_quantize(logits - floor, 0.0, high - floor) + floor


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
