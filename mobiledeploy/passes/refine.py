"""Quantization-aware refinement of the folded float model, before any converter sees it.

Folded MobileNets lose most of their int8 accuracy to *biased* rounding errors: a depthwise
channel with 9 weights cannot average its rounding errors away, so each channel's output
shifts by a constant that the next layers amplify. Empirical bias correction measures that
shift on calibration images and absorbs it into the bias:

  for each weighted layer, in graph order:
      y_float = layer(float inputs)                 (the float model, float upstream)
      y_quant = layer_int8(inputs as int8 upstream)  (int8 weights; upstream already corrected,
                                                      activations rounded to their int8 grid)
      bias   -= mean over images and positions of (y_quant - y_float), per channel

Correcting against the *fully* quantized upstream (weights and activations) makes the bias
absorb activation rounding too, not just weight rounding. The refined model keeps its
weights on the per-channel symmetric int8 grid (scale = max|w| / 127 per output channel),
which both converters reproduce exactly with their own max-abs quantization, so the TFLite
and the ONNX int8 files both inherit the correction.

Activations are simulated as the converters quantize them: asymmetric int8 over the
calibration min/max (widened to include 0), one scale per tensor, after the fused activation
of a convolution.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..model.graph import (WEIGHTED, empty_aligned, forward, layer_graph, output_shape, relu, relu_cap, run_layer,
                           uses_after)
from ..reports import RefineReport
from .checkpoints import Checkpoint, Checkpoints
from .rounding import adaround, quantize_weights, rounding_images

ACTIVATIONS = {"ReLU", "Activation"}
PASS_THROUGH = {"Dropout", "InputLayer"}  # identity at inference; no new quantization point
SLICE = 1 << 16  # fake_quantize rounds an activation tensor this many values at a time


def fake_quantize(x: np.ndarray, low: float, high: float, in_place: bool = False) -> np.ndarray:
    """Asymmetric int8 rounding over [low, high] (widened to hold 0), as the converters do.
    ``in_place``: ``x`` is a float32 array nobody else reads; its memory takes the result."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0:
        return x
    scale = (high - low) / 255.0
    zero_point = np.round(-128 - low / scale)
    if np.asarray(x).dtype != np.float32:
        q = np.clip(np.round(x / scale) + zero_point, -128, 127)
        return ((q - zero_point) * scale).astype(np.float32)
    # float32 values (every activation): a slice at a time (one that stays in the CPU's cache), the
    # code minus the zero point in float32 (integers, exact), clipped to the codes' range, then times
    # the scale in float64, rounded to float32 on the way out: the lines above, value for value,
    # without float64 temporaries
    flat = np.ascontiguousarray(x).reshape(-1)
    out = flat if in_place else empty_aligned(flat.shape)  # a slice is read before its result is written
    lowest, highest = np.float32(-128 - zero_point), np.float32(127 - zero_point)

    def round_slices(begin: int, end: int) -> None:
        q = np.empty(min(SLICE, end - begin), np.float32)
        for start in range(begin, end, SLICE):
            part = flat[start:min(start + SLICE, end)]
            qs = q[:len(part)]
            np.divide(part, np.float32(scale), out=qs)
            np.round(qs, out=qs)
            np.clip(qs, lowest, highest, out=qs)
            np.multiply(qs, np.float64(scale), out=out[start:start + len(part)], casting="same_kind")

    if flat.size < 8 * SLICE:
        round_slices(0, flat.size)
    else:  # every value on its own: the second half in a second thread (numpy lets it run)
        from concurrent.futures import ThreadPoolExecutor

        middle = flat.size // 2 // SLICE * SLICE
        with ThreadPoolExecutor(1, thread_name_prefix="rounding") as pool:
            second = pool.submit(round_slices, middle, flat.size)
            round_slices(0, middle)
            second.result()
    return out.reshape(np.shape(x))


def round_activations(x: np.ndarray, low: float, high: float, bits: int | None = 8,
                      in_place: bool = False) -> np.ndarray:
    """An activation tensor as the quantized files hold it: asymmetric int8 over [low, high]
    (``fake_quantize``), symmetric int16 over the larger of |low| and |high| (TFLite's 16x8 mode), or
    float (``bits=None``: int8 weights with float activations). ``in_place`` as ``fake_quantize``'s."""
    if bits == 8:
        return fake_quantize(x, low, high, in_place)
    if bits is None:
        return x
    levels = 2 ** (bits - 1) - 1
    scale = max(abs(float(low)), abs(float(high))) / levels
    if scale <= 0:
        return x
    return (np.clip(np.round(np.asarray(x, np.float64) / scale), -levels, levels) * scale).astype(np.float32)


def refine_for_int8(model, calib: np.ndarray, progress: Callable[[int, int], None] | None = None,
                 chunk: int = 32, adaptive_rounding: bool = True,
                 rounding_samples: int = 64, positions_per_weight: float = 64, clip_activations: bool = False,
                 per_channel: bool = True, keep_float: frozenset[str] = frozenset(),
                 ranges: dict[str, tuple[float, float]] | None = None,
                 activation_bits: int | None = 8, sixteen_bit: frozenset[str] = frozenset(),
                 rounding_cache: dict | None = None, float_tensors: frozenset[str] = frozenset(),
                 errors: dict | None = None, checkpoints: Checkpoints | None = None,
                 into=None) -> tuple[Any, RefineReport]:
    """A copy of the folded ``model`` with int8-grid weights and empirically corrected biases.

    With ``adaptive_rounding`` each weight is rounded up or down (not to nearest) so that the
    layer's outputs on int8 inputs best match the float layer on float inputs, in the
    least-squares sense over ``rounding_samples`` calibration images (AdaRound's objective,
    solved by coordinate descent on the exact quadratic form). A layer whose output has few
    positions per image (the late 7x7 and 1x1 layers) reads more images, so that each weight's
    rounding is decided on at least ``positions_per_weight`` x fan-in positions. Where even every
    calibration image is too few (the late layers and the classifier: one position per image,
    hundreds of inputs) the rounding may fit the samples' noise (see ``rounding_images``), so
    it is checked on held-out images: fitted on three of four folds of them and scored on the
    fourth, and kept only if it beats round-to-nearest on every fold (``adaround(validate=True)``).
    ``positions_per_weight=0`` rounds every layer adaptively, unchecked.

    With ``clip_activations`` each bounded ReLU (ReLU6) gets the clip value that minimises the
    int8 rounding + clipping error of its output on the calibration images; the converters then
    calibrate that tensor to [0, clip] and spend the 256 levels where the values are.

    Weighted layers in ``keep_float`` (mixed precision) keep their float weights; the layers
    after them are corrected for the error that still reaches them. ``ranges`` gives the int8
    range of a layer's output where the exporters are told to use it instead of the
    calibration min/max (ranges.py). ``activation_bits`` is how the files hold activations
    (``round_activations``): 16 for int16x8, None for int8 weights with float activations; the
    outputs of the layers in ``sixteen_bit`` round at 16 bits whatever it says (--precision mixed),
    those in ``float_tensors`` stay float (the layers kept in float and the ones after them that
    only pass their output on: ``mixed.float_layers``).

    ``rounding_cache`` (a dict the caller keeps between calls on the same model and images: the
    rounds of the mixed-precision search) holds each layer's rounding under the settings of it and
    the layers before it; a later call whose settings there are the same takes it from there
    instead of fitting it again (the same weights: the fit reads only those layers' outputs).
    ``checkpoints`` (kept between such calls too) goes further: a later call starts at the input of
    the last weighted layer whose layers before it are refined as they were, with the activations,
    weights and results saved there (``checkpoints.py``), instead of at the model's input.

    ``into`` (a model an earlier call returned for ``model``: the search's rounds) is refined again
    in place of a new copy: it gets ``model``'s weights and ReLU caps back first (all a refinement
    changes), which costs a fraction of building the copy again.

    ``errors`` (a dict, when given) receives, in graph order, each rounded layer output's (signal,
    error), the input's aside: the sums of x_float² and (x_quant - x_float)² over the images, the
    int8 side as refined. The SQNR they give is what ``mobiledeploy analyze`` measures on the
    files, from the refinement's own simulation of them (``mixed.lost_db``)."""
    import keras

    started = time.perf_counter()
    refined = into if into is not None else keras.Model.from_config(model.get_config())
    refined.set_weights(model.get_weights())
    if into is not None:  # the caps an earlier call clipped
        for layer in model.layers:
            if _clippable(layer):
                refined.get_layer(layer.name).max_value = layer.max_value
    graph = layer_graph(model)
    order = list(graph.items())
    rounded = rounded_outputs(graph)
    images = np.asarray(calib, np.float32).view()
    images.setflags(write=False)  # the caller's images, the input layer's output on both sides
    weighted = [name for name, node in graph.items() if node["kind"] in WEIGHTED and name not in keep_float]
    cache = rounding_cache if rounding_cache is not None else {}
    ranges = ranges or {}
    ancestors: dict[str, frozenset[str]] = {}
    for name, node in graph.items():
        ancestors[name] = frozenset({name}).union(*(ancestors[p] for p in node["inputs"]))

    def settings_before(name: str) -> frozenset:
        """What a layer's rounding depends on besides the model and the images: how the layer and
        every layer before it are kept, rounded and ranged."""
        return frozenset((a, a in keep_float, a in sixteen_bit, tuple(map(float, ranges.get(a, ()))))
                         for a in ancestors[name] if a in keep_float or a in sixteen_bit or a in ranges)

    # what a checkpoint depends on: this call's settings, then how each layer is kept, rounded and ranged
    settings = [(len(images), chunk, adaptive_rounding, rounding_samples, positions_per_weight, clip_activations,
                 per_channel, activation_bits, errors is not None)]
    settings += [(a in keep_float, a in sixteen_bit, a in float_tensors, tuple(map(float, ranges.get(a, ()))))
                 for a, _ in order]
    start, resumed = checkpoints.latest(settings) if checkpoints is not None else (0, None)
    places = checkpoints.places(model, order, len(images)) if checkpoints is not None else {}
    results = resumed.results if resumed is not None else \
        {"shifts": {}, "clips": {}, "validated": [], "nearest": [], "fallbacks": [], "errors": {}, "done": 0}
    shifts, clips = dict(results["shifts"]), dict(results["clips"])
    validated, nearest, fallbacks = list(results["validated"]), list(results["nearest"]), list(results["fallbacks"])
    done = results["done"]
    if errors is not None:
        errors.update(results["errors"])
    float_out: dict[str, np.ndarray] = {}
    if resumed is not None:  # where the int8 side alone was saved, the float side runs again up to it
        float_out = dict(resumed.float_out) if resumed.float_out is not None else \
            checkpoints.float_side(model, images, chunk, order, start)
    quant_out: dict[str, np.ndarray] = dict(resumed.quant_out) if resumed is not None else {}
    remaining = uses_after(order, start)
    if resumed is not None:  # the layers before ``start`` as the call that saved it left them
        for name, node in order[:start]:
            if node["kind"] in WEIGHTED:
                refined.get_layer(name).set_weights(checkpoints.weights[name])
        for name, clip in clips.items():
            refined.get_layer(name).max_value = clip
    def overwritable(parent: str) -> bool:  # the float side's output of ``parent``, read here for the last time
        return remaining[parent] == 1 and quant_out.get(parent) is not float_out.get(parent)

    # the float model's layers run in a thread meanwhile (their outputs do not depend on the refinement):
    # a weighted layer's while its int8 side is fitted and run, a ReLU's in its input's array
    for index, ((name, node), (_, take)) in enumerate(zip(order[start:], forward(
            model, images, chunk, start, float_out, in_place=overwritable)), start):
        if index in places and not (index == start and resumed is not None):  # not the one it resumed from
            both = dict(float_out) if places[index] else None
            checkpoints.save(index, Checkpoint(tuple(settings[:index + 1]), both, dict(quant_out), {
                "shifts": dict(shifts), "clips": dict(clips), "validated": list(validated), "nearest": list(nearest),
                "fallbacks": list(fallbacks), "errors": dict(errors or {}), "done": done}))
        twin = refined.get_layer(name)
        x_float = take() if node["kind"] not in WEIGHTED else None  # a weighted layer's: once its int8 side ran
        if node["kind"] == "InputLayer":
            x_quant = round_activations(x_float, x_float.min(), x_float.max(), activation_bits)
        else:
            if node["kind"] in WEIGHTED and name in keep_float:
                x_quant = run_layer(twin, [quant_out[p] for p in node["inputs"]], chunk)
                x_float = take()
            elif node["kind"] in WEIGHTED:
                if adaptive_rounding and len(node["inputs"]) == 1 and node["kind"] != "SeparableConv2D":
                    key = (name, settings_before(name))
                    if key not in cache:
                        parent = node["inputs"][0]
                        outcome = _round_adaptively(twin, output_shape(twin, quant_out[parent]) or take().shape,
                                                    quant_out[parent], float_out[parent],
                                                    rounding_samples, positions_per_weight, per_channel)
                        cache[key] = (twin.get_weights(), outcome)
                    weights, (checked, to_nearest, failure) = cache[key]
                    twin.set_weights(weights)
                    validated += [name] if checked else []
                    nearest += [name] if to_nearest else []
                    fallbacks += [(name, failure)] if failure else []
                else:
                    quantize_weights(twin, per_channel)
                x_quant = run_layer(twin, [quant_out[p] for p in node["inputs"]], chunk)
                x_float = take()
                if twin.use_bias:  # after folding every layer that had a BatchNorm has one
                    error = channel_mean_difference(x_quant, x_float)
                    weights = twin.get_weights()
                    weights[-1] = (weights[-1] - error).astype(np.float32)
                    twin.set_weights(weights)
                    x_quant -= error.astype(np.float32)
                    shifts[name] = float(np.max(np.abs(error)))
                done += 1
                if progress:
                    progress(done, len(weighted))
            else:
                if clip_activations and _clippable(twin):
                    twin.max_value = clips[name] = mse_clip(x_float, float(twin.max_value))
                x_quant = _relu_in_place(twin, node, quant_out, float_out, remaining)
                if x_quant is None:
                    x_quant = run_layer(twin, [quant_out[p] for p in node["inputs"]], chunk)
            if node["kind"] in WEIGHTED and checkpoints is not None:  # what a later call resuming after it sets
                checkpoints.weights[name] = twin.get_weights()
            if name in rounded:
                low, high = ranges[name] if name in ranges else \
                    (x_float.min(), min(x_float.max(), clips.get(name, np.inf)))
                bits = None if name in float_tensors else 16 if name in sixteen_bit else activation_bits
                x_quant = round_activations(x_quant, low, high, bits, in_place=True)  # run_layer's own array
                if errors is not None:
                    errors[name] = squared_error(x_quant, x_float)
        float_out[name], quant_out[name] = x_float, x_quant
        for parent in node["inputs"]:  # free what no later layer needs
            remaining[parent] -= 1
            if remaining[parent] == 0:
                float_out.pop(parent), quant_out.pop(parent)
    if checkpoints is not None:
        checkpoints.finished()
    return refined, RefineReport(
        method="adaround+bias-correction" if adaptive_rounding else "bias-correction",
        layers=len(shifts), samples=len(calib),
        max_shift=max(shifts.values(), default=0.0), seconds=time.perf_counter() - started,
        per_layer=tuple(sorted(shifts.items())), clips=tuple(sorted(clips.items())),
        validated=tuple(validated), rounded_to_nearest=tuple(nearest), fallbacks=tuple(fallbacks),
    )


def _relu_in_place(layer, node: dict, quant_out: dict, float_out: dict, remaining: dict) -> np.ndarray | None:
    """A plain ReLU (or ReLU6) of the int8 side computed in its input's array when that is this
    layer's alone (no other layer reads it, and it is not the float side's): the values
    ``run_layer`` gives, without a new array of the size of the layer's output. None otherwise."""
    cap = relu_cap(layer)
    if cap is False or len(node["inputs"]) != 1:
        return None
    parent = node["inputs"][0]
    x = quant_out[parent]
    if remaining[parent] != 1 or x is float_out[parent] or x.dtype != np.float32 or not x.flags.writeable:
        return None
    return relu(x, cap, out=x)


def _round_adaptively(twin, shape: tuple[int, ...], x_quant: np.ndarray, x_float: np.ndarray,
                      rounding_samples: int, positions_per_weight: float,
                      per_channel: bool) -> tuple[bool, bool, str | None]:
    """Adaptive rounding of ``twin``'s kernel from its input on the int8 side and the float side
    (``rounding_images`` of them): (checked on held-out folds, rounded to nearest after all, why
    it fell back to nearest rounding or None)."""
    images = rounding_images(twin, shape, len(x_quant), rounding_samples, positions_per_weight)
    try:
        adaptive = adaround(twin, x_quant[:images or None], x_float[:images or None], per_channel=per_channel,
                            validate=not images)
        return not images, not adaptive, None
    except Exception as exc:  # noqa: BLE001 - an optional refinement: this layer falls back
        quantize_weights(twin, per_channel)
        return not images, False, f"adaptive rounding: {type(exc).__name__}: {str(exc)[:120]}; rounded to nearest"


def channel_mean_difference(a: np.ndarray, b: np.ndarray, values: int = 1 << 20) -> np.ndarray:
    """``(a - b).reshape(-1, channels).mean(axis=0)``, the same float32 values, without an array of
    the size of ``a``: a slice of about ``values`` values at a time is subtracted into one buffer,
    below a row that holds the sum so far, and the buffer summed down its rows (numpy adds the rows
    of a leading-axis sum one after the other, so the order of the additions is the whole array's)."""
    channels = a.shape[-1]
    a, b = a.reshape(-1, channels), b.reshape(-1, channels)
    rows = max(1, min(len(a), values // channels))
    buffer = np.empty((rows + 1, channels), np.float32)
    total = None
    for start in range(0, len(a), rows):
        count = min(rows, len(a) - start)
        np.subtract(a[start:start + count], b[start:start + count], out=buffer[1:1 + count])
        if total is None:
            total = np.add.reduce(buffer[1:1 + count], axis=0)
        else:
            buffer[0] = total
            total = np.add.reduce(buffer[:1 + count], axis=0)
    return np.true_divide(total, len(a), dtype=np.float32)


def squared_error(a: np.ndarray, b: np.ndarray, values: int = 1 << 16) -> tuple[float, float]:
    """(sum of b², sum of (a - b)²), a slice of ``values`` values at a time: each slice's float32
    dot product, the slices added up in float64."""
    a, b = a.reshape(-1), b.reshape(-1)
    buffer = np.empty(min(values, b.size), np.float32)
    signal = error = 0.0
    for start in range(0, b.size, values):
        reference = b[start:start + values]
        difference = np.subtract(a[start:start + values], reference, out=buffer[:len(reference)])
        signal += float(np.dot(reference, reference))
        error += float(np.dot(difference, difference))
    return signal, error


def mse_clip(values: np.ndarray, current: float, samples: int = 200_000, seed: int = 0) -> float:
    """The clip c <= ``current`` minimising E[(x - Q(min(x, c)))²] for int8 over [min, c]."""
    flat = values.reshape(-1)
    if flat.size > samples:
        flat = flat[np.random.default_rng(seed).choice(flat.size, samples, replace=False)]
    low = min(float(flat.min()), 0.0)
    top = min(float(flat.max()), current)
    if top <= 0:
        return current
    best, best_error = top, np.inf
    for quantile in (0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0):
        clip = min(float(np.quantile(flat, quantile)), top)
        if clip <= 0:
            continue
        error = float(np.mean((flat - fake_quantize(np.minimum(flat, clip), low, clip)) ** 2))
        if error < best_error:
            best, best_error = clip, error
    return best


def _clippable(layer) -> bool:
    """A ReLU with an upper bound (ReLU6 in MobileNets): lowering the bound is a clip."""
    return type(layer).__name__ == "ReLU" and getattr(layer, "max_value", None) is not None \
        and not getattr(layer, "negative_slope", 0)


def rounded_outputs(graph: dict[str, dict]) -> set[str]:
    """The layers whose output tensor the converters round to int8: the input, and every layer
    but the identities and the weighted layers fused with the activation after them (the
    converters fuse the two, so the pre-activation tensor is never rounded)."""
    fused = {name for name, node in graph.items()
             if node["kind"] in WEIGHTED and len(node["consumers"]) == 1
             and graph.get(node["consumers"][0], {}).get("kind") in ACTIVATIONS}
    return {name for name, node in graph.items()
            if node["kind"] == "InputLayer" or (node["kind"] not in PASS_THROUGH and name not in fused)}
