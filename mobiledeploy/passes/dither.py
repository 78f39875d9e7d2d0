"""Dithered copies of the first convolution's channels: a finer int8 grid where thin MobileNets
lose most.

The first convolution's ReLU6 output is the costliest int8 tensor of a thin MobileNet: its few
channels share one [0, 6] grid (step 6/255), and the depthwise filter after it amplifies the
rounding noise (on the shared ImageNet MobileNet v1 0.25, rounding that tensor alone costs
the output 26 dB of SQNR, the most of any tensor). Weight-side levers cannot reach it.

For a channel whose pre-activation z stays inside the ReLU's linear range with half a step to
spare (step/2 < z < cap - step/2 on the calibration images; MobileNets have several such
channels), k copies of the channel compute relu6(z + s_j), with shifts s_j a k-th of a step
apart and centred on zero, so that each copy rounds on its own shifted grid. The depthwise
copies take the shifts off their biases (exact: the depthwise filter is linear), and the
pointwise layer after reads each of the k copies with 1/k of the weight. The model computes the
same function (the depthwise zero padding reads each copy's shift off, and the shifts add up to
zero), but in int8 the k rounding errors are sawtooths a k-th of a period apart: their mean is
the rounding error of a k times finer grid, 1/k^2 of the noise power.

Only linear channels are copied: where a channel turns off or saturates, a shifted copy is off
by up to its shift. The copies add channels to three layers: the first conv, the depthwise
after it and the input side of the pointwise after that. The count is rounded up to a multiple
of 8, which ONNX Runtime's kernels need to stay fast, and the channels of the block go to the
linear channels whose rounding costs the model's output most: each further copy goes where it
cuts the most noise (a channel's cost, measured by rounding it alone, times 1/k^2 - 1/(k+1)^2).
On the 0.25 MobileNet (8 -> 16 channels) neither int8 file got slower on x86-64 (its
runtimes work on vector-wide blocks of channels; benchmarks/dither_cost.py times both builds side
by side), but under emulation the ARM kernels did 1.14-1.17x the work (cortex-a76; cortex-a53:
1.06-1.22x), so channels are added only when asked for: ``auto`` copies only up to
``AUTO_MAX_CHANNELS`` (for x86-64 targets), ``on`` regardless. The manifest records the copies
and the added multiply-adds.

``spare`` adds no channel. MobileNets leave some of their first channels unused: they never turn
on, or the depthwise channel they feed never does, so the 1x1 conv reads a constant from them
(the shared v1 0.25: 2 of 8; three MobileNetV2s: 4 to 9 of 32). Only channels proved unused for
every input the int8 file can take count (interval arithmetic over the calibrated input range),
so the function stays the same on any image. Those channels hold copies instead, and the 1x1
conv's bias takes over the constant each fed it. The layer shapes, and so the work, stay the
same.
"""

from __future__ import annotations

import time

import numpy as np

from .folding import output_change, plain_config
from ..model.graph import RELU_PASS_THROUGH, activation_name, follow, layer_graph, only_consumer, relu_cap
from ..reports import DitherReport
from .refine import fake_quantize

LINEAR_SHARE = 0.999  # a channel is copied when this share of its calibration values is linear
MAX_CHANGE = 1e-3  # the copies must leave the float model's outputs within this (relative to max |output|)
CHANNEL_BLOCK = 8  # the first conv's channel count after the copies is a multiple of this
MAX_COPIES = 4  # copies of one channel at most (measured up to 4 on the shared model); block
# channels left over copy other channels exactly
COST_IMAGES = 64  # calibration images that measure what rounding each channel costs the output
VARIANT_BATCH = 128  # images in one batch of those measurements: a few channels' variants together
# --dither auto copies only while the first conv keeps at most this many channels: measured on
# this x86-64 CPU, 8 -> 16 channels cost no time in either runtime (0.25 MobileNet: TFLite
# 1.00-1.02x, ONNX Runtime 0.89-0.93x; emulated cortex-a76: 1.17x and 1.14x), 16 -> 32 cost
# TFLite 1.12x (v1 0.5) and 32 -> 48 1.07-1.18x (MobileNetV2 1.0); --dither on copies regardless
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


def dither_first_layer(model, calib: np.ndarray, max_channels: int | None = AUTO_MAX_CHANNELS, chunk: int = 16,
                       grow: bool = True):
    """A copy of ``model`` with dithered copies of the linear channels of its first convolution
    (to the channels whose rounding costs most), and the report. With ``grow`` (auto, on) the
    copies are appended, as many as fill a block of channels; without it (spare) they only take
    the place of channels the model does not use (same layer shapes, same work).
    ``(model, None)`` when the model does not start with such a chain, no channel is linear,
    there is no slot for a copy (without ``grow``: no spare channel; with it: the first conv
    would end up with more than ``max_channels`` channels, None: no limit), or the copies would
    change the float outputs."""
    import keras

    started = time.perf_counter()
    chain = find_chain(model)
    if chain is None:
        return model, None
    first, relu, depthwise, pointwise = chain
    probe = keras.Model(model.inputs[0], model.get_layer(first).output)
    linear, step = _linear_channels(probe, calib, relu_cap(model.get_layer(relu)), chunk)
    if grow:
        spare, constants = np.zeros(0, int), np.zeros(0)
        # the copies fill whole blocks of channels: ONNX Runtime's x86-64 kernels ran the 0.25
        # MobileNet 1.6x slower with 13 channels than with 8 or 16
        slots = -(-(len(linear) + int(linear.sum())) // CHANNEL_BLOCK) * CHANNEL_BLOCK - len(linear)
        if max_channels is not None and len(linear) + slots > max_channels:
            return model, None
    else:
        spare, constants = _spare_channels(model, chain, calib, chunk)
        linear[spare] = False  # a channel the model does not read needs no finer grid
        slots = len(spare)
    if not linear.any() or slots == 0:
        return model, None
    costs = _rounding_costs(model, relu, np.flatnonzero(linear), step, calib[:COST_IMAGES], chunk)
    if not any(costs.values()):  # a saturated output shows no channel's rounding: share the copies evenly
        costs = dict.fromkeys(costs, 1.0)
    copies = _allocate(costs, slots)
    if not copies:
        return model, None
    # a channel's k copies sit a k-th of a step apart, centred on the channel's value: their
    # shifts add up to zero, so the depthwise layer's zero padding, which reads every copy as
    # 0, costs their mean nothing
    own, channels, offsets = np.zeros(len(linear)), [], []
    for channel, count in copies.items():
        shifts = step * (np.arange(count) - (count - 1) / 2) / count
        own[channel] = shifts[0]
        channels += [channel] * (count - 1)
        offsets += shifts[1:].tolist()
    spare, constants = spare[:len(channels)], constants[:len(channels)]  # MAX_COPIES may leave some spare
    # what the linear channels leave of an appended block
    exact = np.flatnonzero(~linear)[:slots - len(channels)] if grow else np.zeros(0, int)
    channels, offsets = np.array(channels + exact.tolist(), int), np.array(offsets + [0.0] * len(exact))
    result = _with_copies(model, chain, own, channels, offsets, spare, constants)
    images = calib[:64]
    diff, peak, _ = output_change(model, result, (images[i:i + chunk] for i in range(0, len(images), chunk)))
    change = diff / peak if peak > 0 else 0.0
    if change > MAX_CHANGE:
        return model, None
    return result, DitherReport(layer=first, depthwise=depthwise, pointwise=pointwise,
                                channels=tuple(copies), copies=tuple(copies.values()),
                                duplicates=tuple(int(c) for c in exact), reused=tuple(int(c) for c in spare),
                                of=len(linear), step=step, max_change=change,
                                added_macs=_added_macs(model, chain, len(channels) - len(spare)),
                                seconds=time.perf_counter() - started)


def _linear_channels(probe, calib: np.ndarray, cap: float | None, chunk: int) -> tuple[np.ndarray, float]:
    """Which channels of ``probe``'s output (the pre-activation z) stay in the ReLU's linear
    range with room for shifts of up to half a step either way, step/2 < z < cap - step/2, on
    LINEAR_SHARE of the calibration positions; and the int8 step of the ReLU output, as the
    converters calibrate it ([0, max])."""
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
    inside = sum(np.sum((z > step / 2) & (z < cap - step / 2), axis=0) for z in pre_activations())
    positions = len(calib) * int(np.prod(probe.output.shape[1:-1]))
    return inside >= LINEAR_SHARE * positions, step


def _spare_channels(model, chain, calib: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The first conv's channels that the model cannot use, which can hold a copy instead: for
    every input the int8 file can take, the 1x1 conv reads one constant from them (the channel
    never turns on, or its depthwise filter never does), and its bias takes that constant over.
    Proved by interval arithmetic, not by the calibration images alone: the first conv's input
    channels span what the calibration images span (the int8 input holds no more) and 0 (its
    padding), and each weight meets the worst end of its input's interval. Returns the channels
    and their constants."""
    import keras

    first, relu, depthwise, pointwise = chain
    graph = layer_graph(model)
    probe = keras.Model(model.inputs[0], model.get_layer(first).input)
    low, high = 0.0, 0.0
    for start in range(0, len(calib), chunk):
        x = np.asarray(probe(calib[start:start + chunk], training=False))
        # each channel's min and max in one long strided pass: a reduction over the first three axes
        # runs an inner loop as long as the channels are many, 3 for an image (20x slower)
        low = np.minimum(low, np.array([x[..., c].min() for c in range(x.shape[-1])]))
        high = np.maximum(high, np.array([x[..., c].max() for c in range(x.shape[-1])]))
    kernel, bias = _kernel_and_bias(model.get_layer(first))
    _, z_high = _interval(kernel, bias, low[:, None], high[:, None], axes=(0, 1, 2))
    cap = relu_cap(model.get_layer(relu))
    kernel, bias = _kernel_and_bias(model.get_layer(depthwise))  # depth multiplier 1 (find_chain)
    # the depthwise input lies in [relu(z_low), relu(z_high)], and at the borders it reads 0 (padding);
    # relu(z_low) >= 0, so [0, relu(z_high)] holds both
    high = np.clip(z_high, 0, cap)
    low, high = _interval(kernel[..., 0], bias, np.zeros_like(high), high, axes=(0, 1))
    padded = False
    name = only_consumer(graph, depthwise)
    while name != pointwise:  # ReLUs, dropout and padding between (find_chain)
        layer = model.get_layer(name)
        if graph[name]["kind"] == "ZeroPadding2D":
            padded = True
        elif graph[name]["kind"] != "Dropout":
            top = relu_cap(layer)
            if top is False:
                return np.zeros(0, int), np.zeros(0)
            low, high = np.clip(low, 0, top), np.clip(high, 0, top)
        name = only_consumer(graph, name)
    # a constant other than 0 needs the 1x1 conv's bias, and no zero padding before it
    spare = (low == high) & ((high == 0) | (bool(model.get_layer(pointwise).use_bias) & (not padded)))
    return np.flatnonzero(spare), high[spare]


def _kernel_and_bias(layer) -> tuple[np.ndarray, np.ndarray]:
    weights = layer.get_weights()
    return weights[0], weights[1] if len(weights) > 1 else np.zeros(weights[0].shape[-1], weights[0].dtype)


def _interval(kernel: np.ndarray, bias: np.ndarray, low: np.ndarray, high: np.ndarray,
              axes) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of bias + sum(kernel * x) over ``axes`` when each x lies in [low, high]."""
    a, b = kernel * low, kernel * high
    return bias + np.sum(np.minimum(a, b), axis=axes), bias + np.sum(np.maximum(a, b), axis=axes)


def _rounding_costs(model, relu: str, channels: np.ndarray, step: float, images: np.ndarray,
                    chunk: int) -> dict[int, float]:
    """{channel: squared error of the model's output when only that channel of ``relu``'s output
    is rounded to its int8 grid}, the rest float: what a channel's rounding costs the output,
    which later layers weigh very differently from channel to channel."""
    import tensorflow as tf

    graph = layer_graph(model)
    order = list(graph)
    start, output = order.index(relu) + 1, model.outputs[0]._keras_history.operation.name
    # the model's tail from the ReLU on, traced once: graph mode runs it faster than layer calls one by one
    tail = tf.function(lambda values: _run(model, graph, order, start, len(order), dict(values))[output],
                       reduce_retracing=True)
    errors = dict.fromkeys((int(c) for c in channels), 0.0)
    per_run = max(1, VARIANT_BATCH // chunk)  # variants of a chunk that run through the model together
    for begin in range(0, len(images), chunk):  # a chunk at a time: 112x112 tensors of many images are large
        values = {name: np.asarray(value, np.float32) for name, value in
                  _run(model, graph, order, 1, start, {order[0]: images[begin:begin + chunk]}).items()}
        count = len(images[begin:begin + chunk])
        rounded = fake_quantize(values[relu], 0.0, 255 * step)
        variants: list[int | None] = [None, *errors]  # None: every channel exact
        results = []
        for group in range(0, len(variants), per_run):  # each variant's images one after the other in a batch
            batch = variants[group:group + per_run]
            changed = {name: np.concatenate([value] * len(batch)) for name, value in values.items()}
            for i, channel in enumerate(batch):
                if channel is not None:
                    changed[relu][i * count:(i + 1) * count, ..., channel] = rounded[..., channel]
            results += np.split(np.asarray(tail(changed), np.float32), len(batch))
        exact = results[0]
        for channel, result in zip(errors, results[1:]):
            errors[channel] += float(np.sum((result - exact) ** 2))
    return errors


def _run(model, graph: dict, order: list[str], begin: int, end: int, values: dict) -> dict:
    """``values`` (the outputs of every earlier layer that a later one reads) with the layers
    ``order[begin:end]`` run on them in one batch, their outputs left as the framework's tensors
    (no copy between layers); a value is dropped once no later layer reads it (memory)."""
    last_read = {parent: i for i, name in enumerate(order) for parent in graph[name]["inputs"]}
    for i in range(begin, end):
        name = order[i]
        inputs = [values[p] for p in graph[name]["inputs"]]
        values[name] = model.get_layer(name)(inputs[0] if len(inputs) == 1 else inputs, training=False)
        for parent in graph[name]["inputs"]:
            if last_read[parent] == i:
                values.pop(parent, None)
    return values


def _allocate(costs: dict[int, float], slots: int) -> dict[int, int]:
    """{channel: copies in all (at least 2)}: ``slots`` more copies, one at a time where the
    noise power falls most (k copies leave 1/k^2 of a channel's cost), at most MAX_COPIES of a
    channel; channels whose rounding costs nothing get none."""
    counts = dict.fromkeys(costs, 1)
    for _ in range(slots):
        gains = {c: costs[c] * (1 / k ** 2 - 1 / (k + 1) ** 2) for c, k in counts.items() if k < MAX_COPIES}
        best = max(gains, key=lambda c: (gains[c], -c), default=None)
        if best is None or gains[best] <= 0:
            break
        counts[best] += 1
    return {c: k for c, k in counts.items() if k > 1}


def _with_copies(model, chain, own: np.ndarray, channels: np.ndarray, offsets: np.ndarray,
                 spare: np.ndarray, constants: np.ndarray):
    """The model rebuilt with the copies: the first conv's channels shifted by ``own``, and
    ``channels`` of them copied (a channel may come several times), each shifted by its
    ``offsets`` entry, the first into the ``spare`` channels (the 1x1 conv's bias takes over the
    ``constants`` they fed it), the rest appended; the depthwise layer takes each shift off; the
    pointwise layer reads a channel and its copies with an equal share of the weight."""
    import keras

    first, _, depthwise, pointwise = chain
    count = int(model.get_layer(first).filters)
    targets = np.concatenate([spare, count + np.arange(len(channels) - len(spare))]).astype(int)
    config = plain_config(model.get_config())
    for entry in config["layers"]:
        if entry["name"] == first:
            entry["config"]["filters"] += len(channels) - len(spare)
        if entry["class_name"] != "InputLayer":
            entry.pop("build_config", None)  # built again from the new channel counts
    result = keras.Model.from_config(config)
    shares = np.ones(count)
    np.add.at(shares, channels, 1)
    for layer in result.layers:
        weights = model.get_layer(layer.name).get_weights()
        if layer.name == first:
            kernel, bias = weights
            weights = [_placed(kernel, -1, kernel[..., channels], targets),
                       _placed(bias + own, 0, bias[channels] + offsets, targets)]
        elif layer.name == depthwise:
            kernel, bias = weights
            sums = kernel.sum(axis=(0, 1, 3))
            weights = [_placed(kernel, 2, kernel[:, :, channels, :], targets),
                       _placed(bias - own * sums, 0, bias[channels] - offsets * sums[channels], targets)]
        elif layer.name == pointwise:
            kernel, *rest = weights
            if len(spare) and rest:
                rest[0] = rest[0] + constants @ kernel[0, 0, spare, :]
            kernel = kernel / shares[None, None, :, None]
            weights = [_placed(kernel, 2, kernel[:, :, channels, :], targets), *rest]
        if weights:
            layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return result


def _placed(values: np.ndarray, axis: int, copies: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``values`` with ``copies`` (along ``axis``) written to the ``targets`` indices, the
    array grown along ``axis`` where they lie past its end."""
    axis = axis % values.ndim
    grown = list(values.shape)
    grown[axis] = max(values.shape[axis], int(targets.max(initial=-1)) + 1)
    result = np.zeros(grown, values.dtype)
    index = [slice(None)] * values.ndim
    index[axis] = slice(0, values.shape[axis])
    result[tuple(index)] = values
    index[axis] = targets
    result[tuple(index)] = copies
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
