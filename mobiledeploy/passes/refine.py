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

from ..model.graph import WEIGHTED, layer_graph, run_layer
from ..reports import RefineReport

ACTIVATIONS = {"ReLU", "Activation"}
PASS_THROUGH = {"Dropout", "InputLayer"}  # identity at inference; no new quantization point
LEVELS = 127  # symmetric int8 weights: the converters' scale is max|w| / 127
VALIDATION_FOLDS = 4  # a layer short of calibration positions keeps adaptive rounding only if it wins on every fold


def quantize_kernel(kernel: np.ndarray, kind: str, per_channel: bool = True, bits: int = 8) -> np.ndarray:
    """The kernel rounded to the symmetric int grid (one scale per output channel, or per
    tensor), back in float32."""
    kernel = np.asarray(kernel, np.float64)
    if not per_channel:
        axes = tuple(range(kernel.ndim))
    elif kind == "DepthwiseConv2D":  # (kh, kw, in, mult): output channel = in * mult + m
        axes = (0, 1)
    else:  # Conv2D (kh, kw, in, out), Dense (in, out), pointwise: the last axis is the output channel
        axes = tuple(range(kernel.ndim - 1))
    levels = 2 ** (bits - 1) - 1
    scale = np.max(np.abs(kernel), axis=axes, keepdims=True) / levels
    scale = np.where(scale == 0, 1.0, scale)
    return (np.clip(np.round(kernel / scale), -levels, levels) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Asymmetric int8 rounding over [low, high] (widened to hold 0), as the converters do."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0:
        return x
    scale = (high - low) / 255.0
    zero_point = np.round(-128 - low / scale)
    if np.asarray(x).dtype != np.float32:
        q = np.clip(np.round(x / scale) + zero_point, -128, 127)
        return ((q - zero_point) * scale).astype(np.float32)
    # float32 values (every activation): the codes in place in float32 (they and the zero point
    # are integers, exact in float32), then each of the 256 codes' value, computed once as the
    # float64 lines above compute it, looked up: the same values without float64 temporaries
    q = np.divide(x, np.float32(scale), dtype=np.float32)
    np.round(q, out=q)
    q += np.float32(zero_point)
    np.clip(q, -128, 127, out=q)
    values = ((np.arange(-128, 128, dtype=np.float64) - zero_point) * scale).astype(np.float32)
    codes = q.astype(np.int16)
    codes += 128
    return values[codes]


def refine_for_int8(model, calib: np.ndarray, progress: Callable[[int, int], None] | None = None,
                 chunk: int = 32, adaptive_rounding: bool = True,
                 rounding_samples: int = 64, positions_per_weight: float = 64, clip_activations: bool = False,
                 per_channel: bool = True, keep_float: frozenset[str] = frozenset(),
                 ranges: dict[str, tuple[float, float]] | None = None) -> tuple[Any, RefineReport]:
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
    calibration min/max (ranges.py)."""
    import keras

    started = time.perf_counter()
    refined = keras.Model.from_config(model.get_config())
    refined.set_weights(model.get_weights())
    graph = layer_graph(model)
    rounded = rounded_outputs(graph)
    remaining = {name: len(node["consumers"]) for name, node in graph.items()}
    float_out: dict[str, np.ndarray] = {}
    quant_out: dict[str, np.ndarray] = {}
    shifts: dict[str, float] = {}
    clips: dict[str, float] = {}
    validated: list[str] = []
    nearest: list[str] = []
    fallbacks: list[tuple[str, str]] = []
    weighted = [name for name, node in graph.items() if node["kind"] in WEIGHTED and name not in keep_float]
    done = 0
    for name, node in graph.items():
        layer, twin = model.get_layer(name), refined.get_layer(name)
        if node["kind"] == "InputLayer":
            x_float = np.asarray(calib, np.float32)
            x_quant = fake_quantize(x_float, x_float.min(), x_float.max())
        else:
            x_float = run_layer(layer, [float_out[p] for p in node["inputs"]], chunk)
            if node["kind"] in WEIGHTED and name in keep_float:
                x_quant = run_layer(twin, [quant_out[p] for p in node["inputs"]], chunk)
            elif node["kind"] in WEIGHTED:
                if adaptive_rounding and len(node["inputs"]) == 1 and node["kind"] != "SeparableConv2D":
                    images = rounding_images(twin, x_float.shape, len(calib), rounding_samples, positions_per_weight)
                    parent = node["inputs"][0]
                    if not images:
                        validated.append(name)
                    try:
                        if not adaround(twin, quant_out[parent][:images or None], float_out[parent][:images or None],
                                        per_channel=per_channel, validate=not images):
                            nearest.append(name)
                    except Exception as exc:  # noqa: BLE001 - an optional refinement: this layer falls back
                        quantize_weights(twin, per_channel)
                        fallbacks.append((name, f"adaptive rounding: {type(exc).__name__}: {str(exc)[:120]}; "
                                                "rounded to nearest"))
                else:
                    quantize_weights(twin, per_channel)
                x_quant = run_layer(twin, [quant_out[p] for p in node["inputs"]], chunk)
                if twin.use_bias:  # after folding every layer that had a BatchNorm has one
                    error = (x_quant - x_float).reshape(-1, x_float.shape[-1]).mean(axis=0)
                    weights = twin.get_weights()
                    weights[-1] = (weights[-1] - error).astype(np.float32)
                    twin.set_weights(weights)
                    x_quant = x_quant - error.astype(np.float32)
                    shifts[name] = float(np.max(np.abs(error)))
                done += 1
                if progress:
                    progress(done, len(weighted))
            else:
                if clip_activations and _clippable(twin):
                    twin.max_value = clips[name] = mse_clip(x_float, float(twin.max_value))
                x_quant = run_layer(twin, [quant_out[p] for p in node["inputs"]], chunk)
            if name in rounded:
                low, high = (ranges or {}).get(name, (x_float.min(), min(x_float.max(), clips.get(name, np.inf))))
                x_quant = fake_quantize(x_quant, low, high)
        float_out[name], quant_out[name] = x_float, x_quant
        for parent in node["inputs"]:  # free what no later layer needs
            remaining[parent] -= 1
            if remaining[parent] == 0:
                float_out.pop(parent), quant_out.pop(parent)
    return refined, RefineReport(
        method="adaround+bias-correction" if adaptive_rounding else "bias-correction",
        layers=len(shifts), samples=len(calib),
        max_shift=max(shifts.values(), default=0.0), seconds=time.perf_counter() - started,
        per_layer=tuple(sorted(shifts.items())), clips=tuple(sorted(clips.items())),
        validated=tuple(validated), rounded_to_nearest=tuple(nearest), fallbacks=tuple(fallbacks),
    )


def rounding_images(layer, output_shape: tuple[int, ...], available: int, minimum: int,
                    positions_per_weight: float) -> int:
    """How many calibration images adaptive rounding of ``layer`` reads: ``minimum``, or more
    where its output has few positions per image, so that the rounding of each output channel's
    fan-in weights is fitted on at least ``positions_per_weight`` x fan-in positions; 0 when
    even all ``available`` images are fewer (the rounding, fitted on all of them, is then
    checked on held-out folds: ``adaround(validate=True)``).

    The rule, measured: rounding fitted on too few positions fits their noise. On a real
    MobileNetV2 (160x160, fan-in up to 1,280) adaptive rounding of every layer from 64 images
    agreed with float on 90.6% of 500 cross-fitted images (TFLite); with this rule at 4, 16 and
    64 positions per weight 92.0%, 93.2% and 94.8% (benchmarks/crossfit_levers.py --model;
    docs/experiments/rounding-images.md)."""
    per_image = int(np.prod(output_shape[1:-1]))  # output positions per image; 1 for Dense
    kernel_shape = tuple(layer.weights[0].shape)  # the kernel; its shape without copying its values
    fan_in = int(np.prod(kernel_shape[:2] if type(layer).__name__ == "DepthwiseConv2D" else kernel_shape[:-1]))
    needed = positions_per_weight * fan_in
    images = min(available, max(minimum, int(np.ceil(needed / per_image))))
    return images if images * per_image >= needed else 0


def adaround(layer, x_quant: np.ndarray, x_float: np.ndarray, sweeps: int = 6, per_channel: bool = True,
             validate: bool = False) -> bool:
    """Round ``layer``'s kernel up or down per weight to minimise E[(w_q·x_q - w·x_f)²] for
    each output channel. Starts from round-to-nearest; keeps every weight on its channel's
    int8 grid (the largest |w| stays at ±127, so the converters recompute the same scale).

    With ``validate`` the rounding must earn its place on images it was not fitted on: the
    images are cut into ``VALIDATION_FOLDS`` folds, and for each fold the rounding fitted on the
    others is scored on it against round-to-nearest (output error after removing its mean,
    which bias correction absorbs). Unless it wins on every fold, the kernel is rounded to
    nearest. Returns whether the rounding is adaptive."""
    weights = layer.get_weights()
    kernel = np.asarray(weights[0], np.float64)
    flat = _flat(kernel, type(layer).__name__)
    folds = VALIDATION_FOLDS if validate and len(x_quant) >= VALIDATION_FOLDS else 0
    if folds:
        bounds = np.linspace(0, len(x_quant), folds + 1).astype(int)
        parts = [_layer_moments(layer, x_quant[a:b], x_float[a:b]) for a, b in zip(bounds, bounds[1:])]
        sizes = np.diff(bounds)
        full = _pooled(parts, sizes)
    else:
        full = _layer_moments(layer, x_quant, x_float)
    scale = np.max(np.abs(flat), axis=0 if per_channel else None, keepdims=True) / LEVELS
    scale = np.where(scale == 0, 1.0, scale)
    nearest = np.round(flat / scale)
    for k in range(folds):  # stops at the first fold that nearest rounding wins
        others = [i for i in range(folds) if i != k]
        fitted = _descend(flat / scale, *_pooled([parts[i] for i in others], sizes[others])[:2], sweeps)
        if _held_out_error(fitted * scale, flat, parts[k]) >= _held_out_error(nearest * scale, flat, parts[k]):
            quantize_weights(layer, per_channel)
            return False
    rounded = _descend(flat / scale, full[0], full[1], sweeps)
    weights[0] = (np.clip(rounded, -LEVELS, LEVELS) * scale).reshape(kernel.shape).astype(np.float32)
    layer.set_weights(weights)
    return True


def _pooled(parts: list[list[np.ndarray]], sizes: np.ndarray) -> list[np.ndarray]:
    """The moments of several image sets together, from each set's moments and image count."""
    shares = np.asarray(sizes, np.float64) / np.sum(sizes)
    return [sum(share * part[i] for share, part in zip(shares, parts)) for i in range(len(parts[0]))]


def _flat(kernel: np.ndarray, kind: str) -> np.ndarray:
    """The kernel as (fan-in, output channels)."""
    if kind == "Dense":
        return kernel
    if kind == "DepthwiseConv2D":
        kh, kw, channels, mult = kernel.shape
        return kernel.reshape(kh * kw, channels * mult)
    return kernel.reshape(-1, kernel.shape[-1])


def _layer_moments(layer, xq: np.ndarray, xf: np.ndarray) -> list[np.ndarray]:
    """[E[xq xqᵀ], E[xq xfᵀ], E[xq], E[xf]] over the layer's input vectors (patches): shared
    by all output channels, or one set per output channel for a depthwise layer."""
    kind = type(layer).__name__
    if kind == "Dense":
        return _moments(xq.reshape(-1, xq.shape[-1]), xf.reshape(-1, xf.shape[-1]))
    if kind == "DepthwiseConv2D":
        return [np.repeat(m, layer.depth_multiplier, axis=0)  # one per output channel
                for m in _conv_moments(layer, xq, xf, depthwise=True)]
    return _conv_moments(layer, xq, xf, depthwise=False)


def _held_out_error(wq: np.ndarray, w: np.ndarray, moments: list[np.ndarray]) -> float:
    """Sum over output channels of Var(wq·xq - w·x_f) on other images' moments, up to a constant
    that does not depend on ``wq`` (wᵀE[xf xfᵀ]w)."""
    a, b, mq, mf = moments
    if a.ndim == 2:
        square = np.sum(wq * (a @ wq), axis=0) - 2 * np.sum(wq * (b @ w), axis=0)
        mean = mq @ wq - mf @ w
    else:
        square = np.einsum("ko,okl,lo->o", wq, a, wq) - 2 * np.einsum("ko,okl,lo->o", wq, b, w)
        mean = np.einsum("ok,ko->o", mq, wq) - np.einsum("ok,ko->o", mf, w)
    return float(np.sum(square - mean ** 2))


def _descend(w: np.ndarray, a: np.ndarray, b: np.ndarray, sweeps: int) -> np.ndarray:
    """Coordinate descent over q_k in {floor(w_k), ceil(w_k)} for f(q) = qᵀAq - 2qᵀBw (in
    units of the grid). ``a``/``b`` are (d, d) shared by all output channels, or (O, d, d)."""
    q = np.round(w)
    alternative = np.where(q > w, np.floor(w), np.ceil(w))
    shared = a.ndim == 2
    target = (b @ w) if shared else np.einsum("okl,lo->ko", b, w)  # (d, O)
    grad = ((a @ q) if shared else np.einsum("okl,lo->ko", a, q)) - target
    diag = np.diag(a)[:, None] if shared else np.einsum("okk->ko", a)
    for _ in range(sweeps):
        changed = 0
        for k in range(w.shape[0]):
            step = alternative[k] - q[k]
            delta = step * step * diag[k] + 2 * step * grad[k]
            take = (delta < -1e-12) & (step != 0)
            if not take.any():
                continue
            columns = np.flatnonzero(take)
            if len(columns) * 8 > len(take):  # many channels flip: update all (adding 0 changes nothing)
                step = np.where(take, step, 0.0)
                alternative[k] = np.where(take, q[k], alternative[k])
                q[k] += step
                grad += (a[:, k][:, None] * step) if shared else a[:, :, k].T * step
            else:  # few flip (most sweeps after the first): only their gradients move
                step = step[columns]
                alternative[k, columns] = q[k, columns]
                q[k, columns] += step
                grad[:, columns] += (a[:, k][:, None] * step) if shared else a[columns, :, k].T * step
            changed += len(columns)
        if changed == 0:
            break
    return q


def _moments(xq: np.ndarray, xf: np.ndarray) -> list[np.ndarray]:
    """E[xq xqᵀ], E[xq xfᵀ], E[xq], E[xf]. Adaptive rounding uses the uncentred moments:
    centring (leaving the mean to bias correction) measured 0.2 dB worse output SQNR on the
    shared MobileNet."""
    xq, xf = np.asarray(xq, np.float64), np.asarray(xf, np.float64)
    return [xq.T @ xq / len(xq), xq.T @ xf / len(xq), xq.mean(axis=0), xf.mean(axis=0)]


def _conv_moments(layer, xq: np.ndarray, xf: np.ndarray, depthwise: bool, chunk: int = 4) -> list[np.ndarray]:
    """``_moments`` over all input patches, accumulated a few images at a time (patches of a
    whole calibration set would take gigabytes). Depthwise: one (k, k) pair and (k,) means
    per channel."""
    sums = None
    count = 0
    for start in range(0, len(xq), chunk):
        pq = _patches(layer, xq[start:start + chunk])
        pf = _patches(layer, xf[start:start + chunk])
        if depthwise:
            channels = xq.shape[-1]
            pq, pf = pq.reshape(len(pq), -1, channels), pf.reshape(len(pf), -1, channels)
            parts = [np.einsum("pkc,plc->ckl", pq, pq), np.einsum("pkc,plc->ckl", pq, pf),
                     pq.sum(axis=0).T, pf.sum(axis=0).T]
        else:
            parts = [pq.T @ pq, pq.T @ pf, pq.sum(axis=0), pf.sum(axis=0)]
        parts = [np.asarray(x, np.float64) for x in parts]
        sums = parts if sums is None else [s + x for s, x in zip(sums, parts)]
        count += len(pq)
    return [s / count for s in sums]


def _patches(layer, x: np.ndarray) -> np.ndarray:
    """Input patches of a convolution, (positions, kh*kw*C) in the kernel's (kh, kw, C) order.
    A 1x1 kernel's patches are its input's pixels (every ``stride``-th, no padding either way)."""
    import tensorflow as tf

    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    if kh == kw == 1:
        return np.ascontiguousarray(np.asarray(x, np.float32)[:, ::sh, ::sw, :]).reshape(-1, x.shape[-1])
    patches = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
                                       rates=[1, dh, dw, 1], padding=layer.padding.upper())
    return np.asarray(patches, np.float32).reshape(-1, kh * kw * x.shape[-1])


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


def quantize_weights(layer, per_channel: bool = True) -> None:
    kind = type(layer).__name__
    weights = layer.get_weights()
    if kind == "SeparableConv2D":
        weights[0] = quantize_kernel(weights[0], "DepthwiseConv2D", per_channel)
        weights[1] = quantize_kernel(weights[1], "Conv2D", per_channel)
    else:
        weights[0] = quantize_kernel(weights[0], kind, per_channel)
    layer.set_weights(weights)


def rounded_outputs(graph: dict[str, dict]) -> set[str]:
    """The layers whose output tensor the converters round to int8: the input, and every layer
    but the identities and the weighted layers fused with the activation after them (the
    converters fuse the two, so the pre-activation tensor is never rounded)."""
    fused = {name for name, node in graph.items()
             if node["kind"] in WEIGHTED and len(node["consumers"]) == 1
             and graph.get(node["consumers"][0], {}).get("kind") in ACTIVATIONS}
    return {name for name, node in graph.items()
            if node["kind"] == "InputLayer" or (node["kind"] not in PASS_THROUGH and name not in fused)}
