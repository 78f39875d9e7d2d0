"""Dithered copies of the first convolution's channels: a finer int8 grid where thin MobileNets
lose most.

The first convolution's ReLU6 output is the costliest int8 tensor of a thin MobileNet: its few
channels share one [0, 6] grid (step 6/255), and the depthwise filter after it amplifies the
rounding noise (on the shared ImageNet MobileNet v1 0.25, rounding that tensor alone costs
the output 26 dB of SQNR, the most of any tensor). Weight-side levers cannot reach it.

For a channel whose pre-activation z stays inside the ReLU's linear range (0 < z < cap - step/2
on the calibration images; MobileNets have several such channels), a second copy of the
channel computes relu6(z + step/2): the same value half a step up, so it rounds on a grid
shifted by half a step. The depthwise copy of it takes the half step off its bias (exact: the
depthwise filter is linear), and the pointwise layer after reads each of the two copies with
half the weight. The model computes the same function (up to the zero padding at the borders,
which the shifted copy reads half a step off), but in int8 the two rounding errors are
sawtooths half a period apart: their mean has a quarter of the noise power.

Only linear channels are copied: where a channel turns off or saturates, the shifted copy is
off by up to half a step itself. The copies add channels to three layers: the first conv, the
depthwise after it and the input side of the pointwise after that. Exact copies (no shift) of
other channels round the count up to a multiple of 8, which ONNX Runtime's kernels need to stay
fast. On the 0.25 MobileNet (8 -> 16 channels) neither int8 file got slower (runtimes work on
vector-wide blocks of channels; benchmarks/dither_cost.py times both builds side by side); wider
first layers pay for their copies, so ``auto`` copies only up to ``AUTO_MAX_CHANNELS``. The
manifest records the added multiply-adds.
"""

from __future__ import annotations

import time

import numpy as np

from .folding import output_change, plain_config
from .graph import RELU_PASS_THROUGH, activation_name, follow, layer_graph, only_consumer, relu_cap
from .stage_reports import DitherReport

OFFSET = 0.5  # the copy's shift, in int8 steps of the activation: the grid half a step over
LINEAR_SHARE = 0.999  # a channel is copied when this share of its calibration values is linear
MAX_CHANGE = 1e-3  # the copies must leave the float model's outputs within this (relative to max |output|)
CHANNEL_BLOCK = 8  # the first conv's channel count after the copies is a multiple of this
# --dither auto copies only while the first conv keeps at most this many channels: measured on
# this x86-64 CPU, 8 -> 16 channels cost no time in either runtime (0.25 MobileNet: TFLite
# 1.00-1.02x, ONNX Runtime 0.92x), 16 -> 32 cost TFLite 1.12x (v1 0.5) and 32 -> 48 1.07-1.18x
# (MobileNetV2 1.0); --dither on copies regardless
AUTO_MAX_CHANNELS = 16


def find_chain(model) -> tuple[str, str, str, str] | None:
    """(first conv, its ReLU layer, the depthwise layer it feeds, the 1x1 conv after that) when
    the model starts conv -> ReLU -> depthwise -> [activation] -> pointwise, each feeding only
    the next; else None."""
    graph = layer_graph(model)
    first = next((name for name, node in graph.items() if node["kind"] in ("Conv2D", "DepthwiseConv2D", "Dense")), None)
    if first is None or graph[first]["kind"] != "Conv2D" or not _plain(model.get_layer(first), "linear"):
        return None
    relu = only_consumer(graph, first)
    if relu is None or relu_cap(model.get_layer(relu)) is False:
        return None
    depthwise = follow(graph, only_consumer(graph, relu), RELU_PASS_THROUGH)
    if depthwise is None or graph[depthwise]["kind"] != "DepthwiseConv2D":
        return None
    layer = model.get_layer(depthwise)
    if layer.depth_multiplier != 1 or not _plain(layer, "linear"):
        return None
    pointwise = follow(graph, only_consumer(graph, depthwise), RELU_PASS_THROUGH | {"ReLU", "Activation"})
    if pointwise is None or graph[pointwise]["kind"] != "Conv2D":
        return None
    point = model.get_layer(pointwise)
    if tuple(point.kernel_size) != (1, 1) or point.groups != 1:
        return None
    return first, relu, depthwise, pointwise


def dither_first_layer(model, calib: np.ndarray, max_channels: int | None = AUTO_MAX_CHANNELS, chunk: int = 16):
    """A copy of ``model`` with a dithered second copy of each linear channel of its first
    convolution, and the report; ``(model, None)`` when the model does not start with such a
    chain, no channel is linear, the first conv would end up with more than ``max_channels``
    channels (None: no limit), or the copies would change the float outputs."""
    import keras

    started = time.perf_counter()
    chain = find_chain(model)
    if chain is None:
        return model, None
    first, relu, depthwise, pointwise = chain
    probe = keras.Model(model.inputs[0], model.get_layer(first).output)
    linear, step = _linear_channels(probe, calib, relu_cap(model.get_layer(relu)), chunk)
    if not linear.any():
        return model, None
    offset = OFFSET * step
    # exact duplicates (no shift) of further channels round the count up to a whole block: ONNX
    # Runtime's x86-64 kernels ran the 0.25 MobileNet 1.6x slower with 13 channels than with 8 or 16
    extra = (-(len(linear) + int(linear.sum()))) % CHANNEL_BLOCK
    channels = np.concatenate([np.flatnonzero(linear), np.flatnonzero(~linear)[:extra]])
    if max_channels is not None and len(linear) + len(channels) > max_channels:
        return model, None
    result = _with_copies(model, chain, channels, np.where(linear[channels], offset, 0.0))
    images = calib[:64]
    diff, peak, _ = output_change(model, result, (images[i:i + chunk] for i in range(0, len(images), chunk)))
    change = diff / peak if peak > 0 else 0.0
    if change > MAX_CHANGE:
        return model, None
    return result, DitherReport(layer=first, depthwise=depthwise, pointwise=pointwise,
                                channels=tuple(int(c) for c in channels[linear[channels]]),
                                duplicates=tuple(int(c) for c in channels[~linear[channels]]), of=len(linear), step=step,
                                max_change=change, added_macs=_added_macs(model, chain, len(channels)),
                                seconds=time.perf_counter() - started)


def _linear_channels(probe, calib: np.ndarray, cap: float | None, chunk: int) -> tuple[np.ndarray, float]:
    """Which channels of ``probe``'s output (the pre-activation z) stay in the ReLU's linear
    range with room for the shift, 0 < z < cap - shift, on LINEAR_SHARE of the calibration
    positions; and the int8 step of the ReLU output, as the converters calibrate it ([0, max])."""
    def pre_activations():  # a chunk at a time: a 112x112 layer of 256 images would take gigabytes
        for start in range(0, len(calib), chunk):
            z = np.asarray(probe(calib[start:start + chunk], training=False))
            yield z.reshape(-1, z.shape[-1])

    peak = max(float(z.max()) for z in pre_activations())
    cap = float(cap) if cap is not None else peak
    step = max(min(peak, cap), 0.0) / 255.0
    channels = int(probe.output.shape[-1])
    if step == 0:
        return np.zeros(channels, bool), step
    inside = sum(np.sum((z > 0) & (z < cap - OFFSET * step), axis=0) for z in pre_activations())
    positions = len(calib) * int(np.prod(probe.output.shape[1:-1]))
    return inside >= LINEAR_SHARE * positions, step


def _with_copies(model, chain, channels: np.ndarray, offsets: np.ndarray):
    """The model rebuilt with the copies: ``channels`` of the first conv appended, each shifted
    by its ``offsets`` entry; the depthwise copies take the shift off; the pointwise layer
    halves each channel and its copy."""
    import keras

    first, _, depthwise, pointwise = chain
    config = plain_config(model.get_config())
    for entry in config["layers"]:
        if entry["name"] == first:
            entry["config"]["filters"] += len(channels)
        if entry["class_name"] != "InputLayer":
            entry.pop("build_config", None)  # built again from the new channel counts
    result = keras.Model.from_config(config)
    for layer in result.layers:
        weights = model.get_layer(layer.name).get_weights()
        if layer.name == first:
            kernel, bias = weights
            weights = [np.concatenate([kernel, kernel[..., channels]], -1),
                       np.concatenate([bias, bias[channels] + offsets])]
        elif layer.name == depthwise:
            kernel, bias = weights
            copies = kernel[:, :, channels, :]
            weights = [np.concatenate([kernel, copies], 2),
                       np.concatenate([bias, bias[channels] - offsets * copies.sum(axis=(0, 1, 3))])]
        elif layer.name == pointwise:
            kernel = weights[0].copy()
            kernel[:, :, channels, :] /= 2
            weights = [np.concatenate([kernel, kernel[:, :, channels, :]], 2), *weights[1:]]
        if weights:
            layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return result


def _added_macs(model, chain, copies: int) -> int:
    """Multiply-adds the copies add per image: their share of the three layers."""
    first, _, depthwise, pointwise = chain
    total = 0
    for name, per_position in ((first, int(np.prod(model.get_layer(first).kernel.shape[:3]))),
                               (depthwise, int(np.prod(model.get_layer(depthwise).kernel.shape[:2]))),
                               (pointwise, int(model.get_layer(pointwise).kernel.shape[-1]))):
        height, width = model.get_layer(name).output.shape[1:3]
        total += copies * per_position * int(height) * int(width)
    return total


def _plain(layer, activation: str) -> bool:
    return activation_name(layer) == activation and bool(getattr(layer, "use_bias", False))
