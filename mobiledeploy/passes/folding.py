"""Fold BatchNormalization into the preceding Conv2D / DepthwiseConv2D / SeparableConv2D / Dense.

MobileNets put a BatchNorm after every convolution. At inference it is an affine map per
channel, y = s * (x - mean) + beta with s = gamma / sqrt(var + eps), so it can be absorbed:
W' = W * s (per output channel) and b' = s * (b - mean) + beta. The folded graph is what the
int8 converters see. Folding is also why MobileNets are hard to quantize: s varies wildly
between depthwise channels, so the folded per-channel weight ranges do too.

The rewrite is done on the model's config (drop the BatchNorm, rewire its consumers to the
convolution, give the convolution a bias), then weights are copied and folded in float64.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..reports import FoldReport

FOLDABLE = frozenset({"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"})


def fold_batchnorm(model) -> tuple[Any, FoldReport]:
    """Return a new Keras model with every foldable BatchNorm absorbed, and what was done."""
    import keras

    config = plain_config(model.get_config())
    layers = {layer["name"]: layer for layer in config["layers"]}
    consumers = _consumers(config)
    outputs = {ref[0] for ref in _output_refs(config)}
    plan: dict[str, str] = {}  # batchnorm name -> producer name
    unfolded: list[str] = []
    for layer in config["layers"]:
        if layer["class_name"] != "BatchNormalization":
            continue
        reason = _why_not_foldable(layer, layers, consumers, outputs, model)
        if reason:
            unfolded.append(f"{layer['name']} ({reason})")
        else:
            plan[layer["name"]] = _single_input(layer)[0]

    for bn_name, producer in plan.items():
        layers[producer]["config"]["use_bias"] = True
        config["layers"].remove(layers[bn_name])
    rewire(config, {bn: producer for bn, producer in plan.items()})
    folded_model = keras.Model.from_config(config)

    into = {producer: bn for bn, producer in plan.items()}
    for layer in folded_model.layers:
        source = model.get_layer(layer.name)
        if layer.name in into:
            bn = model.get_layer(into[layer.name])
            layer.set_weights(folded_weights(source, bn))
        elif source.weights:
            layer.set_weights(source.get_weights())
    report = FoldReport(folded=tuple(plan.items()), unfolded=tuple(unfolded))
    return folded_model, report


def folded_weights(layer, bn) -> list[np.ndarray]:
    """The weights of ``layer`` with ``bn`` (which consumes its output) folded in."""
    scale, shift = batchnorm_affine(bn)
    kind = type(layer).__name__
    weights = [np.asarray(w, np.float64) for w in layer.get_weights()]
    bias = weights.pop() if layer.use_bias else np.zeros_like(scale)
    if kind == "DepthwiseConv2D":
        kernel = weights[0]  # (kh, kw, in, multiplier): output channel = in * mult + m
        new = [kernel * scale.reshape(kernel.shape[2], kernel.shape[3])]
    elif kind == "SeparableConv2D":
        depthwise, pointwise = weights  # BN follows the pointwise part
        new = [depthwise, pointwise * scale]
    else:  # Conv2D (kh, kw, in, out) and Dense (in, out): output channel is the last axis
        new = [weights[0] * scale]
    new.append(scale * bias + shift)
    return [w.astype(np.float32) for w in new]


def batchnorm_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) such that bn(x) == scale * x + shift at inference."""
    values = {_short(w.path if hasattr(w, "path") else w.name): np.asarray(w, np.float64)
              for w in bn.weights}
    mean = values["moving_mean"]
    var = values["moving_variance"]
    gamma = values.get("gamma", np.ones_like(mean))
    beta = values.get("beta", np.zeros_like(mean))
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - scale * mean


def verify_fold(original, folded, batches: Iterable[np.ndarray], report: FoldReport,
                rel_tolerance: float = 1e-4) -> FoldReport:
    """Run both models on the same inputs; record max |difference| against max |output|."""
    max_diff, max_out, samples = output_change(original, folded, batches)
    return FoldReport(report.folded, report.unfolded, max_diff, max_out, rel_tolerance, samples)


def output_change(original, changed, batches: Iterable[np.ndarray]) -> tuple[float, float, int]:
    """(max |changed - original|, max |original|, images) over ``batches``: how far a rewrite
    that should keep the function (folding, dithering) moved the outputs."""
    max_diff = 0.0
    max_out = 0.0
    samples = 0
    for batch in batches:
        a = np.asarray(original.predict_on_batch(batch), np.float64)  # compiled once per model (graph mode)
        b = np.asarray(changed.predict_on_batch(batch), np.float64)
        max_diff = max(max_diff, float(np.max(np.abs(a - b))))
        max_out = max(max_out, float(np.max(np.abs(a))))
        samples += len(batch)
    return max_diff, max_out, samples


# --- config graph helpers ---------------------------------------------------------------


def _why_not_foldable(bn: dict, layers: dict, consumers: dict, outputs: set, model) -> str:
    source = _single_input(bn)
    if source is None:
        return "input is not a single tensor"
    producer = layers.get(source[0])
    if producer is None or producer["class_name"] not in FOLDABLE:
        return "not preceded by a convolution or Dense layer"
    if producer["config"].get("activation", "linear") != "linear":
        return f"'{producer['name']}' has an activation before the BatchNorm"
    if consumers.get(producer["name"], set()) != {bn["name"]} or producer["name"] in outputs:
        return f"output of '{producer['name']}' is also used elsewhere"
    axis = model.get_layer(bn["name"]).axis
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    rank = len(model.get_layer(bn["name"]).input.shape)
    if axis not in (-1, rank - 1):
        return f"normalizes axis {axis}, not the channel axis"
    return ""


def _single_input(layer: dict) -> list | None:
    refs = list(history_refs(layer.get("inbound_nodes", [])))
    return refs[0] if len(layer.get("inbound_nodes", [])) == 1 and len(refs) == 1 else None


def _consumers(config: dict) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for layer in config["layers"]:
        for ref in history_refs(layer.get("inbound_nodes", [])):
            result.setdefault(ref[0], set()).add(layer["name"])
    return result


def history_refs(value: Any):
    """Every keras_history reference [layer, node, tensor] inside an inbound_nodes value."""
    if isinstance(value, dict):
        if "keras_history" in value.get("config", {}):
            yield value["config"]["keras_history"]
            return
        for item in value.values():
            yield from history_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from history_refs(item)


def rewire(config: dict, mapping: dict[str, str]) -> None:
    """Point every reference to a removed layer at the layer that replaces it."""
    for layer in config["layers"]:
        for ref in history_refs(layer.get("inbound_nodes", [])):
            if ref[0] in mapping:
                ref[0] = mapping[ref[0]]
    for ref in _output_refs(config):
        if ref[0] in mapping:
            ref[0] = mapping[ref[0]]


def _output_refs(config: dict) -> list[list]:
    refs = config["output_layers"]
    return [refs] if refs and isinstance(refs[0], str) else refs


def plain_config(value: Any) -> Any:
    """A copy with tuples turned into lists, so references can be edited in place."""
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    return value


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1].split(":", 1)[0]

