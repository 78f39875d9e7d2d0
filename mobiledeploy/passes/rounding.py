"""How a layer's weights land on the symmetric int8 grid the converters reproduce: rounded to
nearest (``quantize_kernel``, ``quantize_weights``), or up or down per weight so that the layer's
outputs on int8 inputs best match the float layer's (``adaround``), on as many calibration
images as its fan-in needs (``rounding_images``). ``refine`` decides which layer gets which."""

from __future__ import annotations

import numpy as np

LEVELS = 127  # symmetric int8 weights: the converters' scale is max|w| / 127
BLOCK = 64  # coordinates whose flips _descend hands to the other gradient rows in one product
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


def quantize_weights(layer, per_channel: bool = True) -> None:
    kind = type(layer).__name__
    weights = layer.get_weights()
    if kind == "SeparableConv2D":
        weights[0] = quantize_kernel(weights[0], "DepthwiseConv2D", per_channel)
        weights[1] = quantize_kernel(weights[1], "Conv2D", per_channel)
    else:
        weights[0] = quantize_kernel(weights[0], kind, per_channel)
    layer.set_weights(weights)


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
                for m in _depthwise_moments(layer, xq, xf)]
    return _conv_moments(layer, xq, xf)


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
    units of the grid). ``a``/``b`` are (d, d) shared by all output channels, or (O, d, d).

    Each flip of q_k moves the gradient of every coordinate by a column of A. With A shared the
    coordinates go in blocks of ``BLOCK``: a flip moves the gradient of its own block's rows at
    once (the next decisions read them), and the other rows take the whole block's flips in one
    matrix product after it, so every decision reads the same gradient as one row at a time."""
    q = np.round(w)
    alternative = np.where(q > w, np.floor(w), np.ceil(w))
    shared = a.ndim == 2
    target = (b @ w) if shared else np.einsum("okl,lo->ko", b, w)  # (d, O)
    grad = ((a @ q) if shared else np.einsum("okl,lo->ko", a, q)) - target
    diag = np.diag(a)[:, None] if shared else np.einsum("okk->ko", a)
    size = w.shape[0]
    block = BLOCK if shared else size  # one A per channel: a kernel's few taps, one block
    for _ in range(sweeps):
        changed = 0
        for start in range(0, size, block):
            end = min(start + block, size)
            rows = slice(start, end) if shared else slice(None)  # the gradient rows a flip moves at once
            steps = np.zeros((end - start, w.shape[1]))
            for k in range(start, end):
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
                    steps[k - start] = step
                    grad[rows] += (a[rows, k][:, None] * step) if shared else a[:, :, k].T * step
                else:  # few flip (most sweeps after the first): only their gradients move
                    step = step[columns]
                    alternative[k, columns] = q[k, columns]
                    q[k, columns] += step
                    steps[k - start, columns] = step
                    grad[rows, columns] += (a[rows, k][:, None] * step) if shared else a[columns, :, k].T * step
                changed += len(columns)
            if shared and steps.any():  # the rows outside the block: its flips in one product each side
                grad[:start] += a[:start, start:end] @ steps
                grad[end:] += a[end:, start:end] @ steps
        if changed == 0:
            break
    return q


def _moments(xq: np.ndarray, xf: np.ndarray) -> list[np.ndarray]:
    """E[xq xqᵀ], E[xq xfᵀ], E[xq], E[xf]. Adaptive rounding uses the uncentred moments:
    centring (leaving the mean to bias correction) measured 0.2 dB worse output SQNR on the
    shared MobileNet."""
    xq, xf = np.asarray(xq, np.float64), np.asarray(xf, np.float64)
    return [xq.T @ xq / len(xq), xq.T @ xf / len(xq), xq.mean(axis=0), xf.mean(axis=0)]


def _conv_moments(layer, xq: np.ndarray, xf: np.ndarray, chunk: int = 4) -> list[np.ndarray]:
    """``_moments`` over all input patches, accumulated a few images at a time (patches of a
    whole calibration set would take gigabytes); the matrix products use every core themselves."""
    sums = None
    count = 0
    for start in range(0, len(xq), chunk):
        pq = _patches(layer, xq[start:start + chunk])
        pf = _patches(layer, xf[start:start + chunk])
        parts = [np.asarray(x, np.float64) for x in (pq.T @ pq, pq.T @ pf, pq.sum(axis=0), pf.sum(axis=0))]
        sums = parts if sums is None else [s + x for s, x in zip(sums, parts)]
        count += len(pq)
    return [s / count for s in sums]


def _depthwise_moments(layer, xq: np.ndarray, xf: np.ndarray, chunk: int = 4) -> list[np.ndarray]:
    """A depthwise layer's ``_moments``, one (k, k) pair and (k,) means per input channel, a few
    images at a time. Each entry is read straight off two of the kernel taps' views of the padded
    input (``_tap_views``), with no patch array; E[xq xqᵀ]'s symmetric half only. The entries are
    shared between this thread and a second one (numpy's einsum runs on one core and lets the other
    thread run), each computed whole by one of them."""
    from concurrent.futures import ThreadPoolExecutor

    sums = None
    count = 0
    with ThreadPoolExecutor(1, thread_name_prefix="moments") as pool:
        for start in range(0, len(xq), chunk):
            vq, vf = _tap_views(layer, xq[start:start + chunk]), _tap_views(layer, xf[start:start + chunk])
            parts = [np.asarray(x, np.float64) for x in _tap_sums(vq, vf, pool)]
            sums = parts if sums is None else [s + x for s, x in zip(sums, parts)]
            count += int(np.prod(vq[0].shape[:3]))
    return [s / count for s in sums]


def _tap_sums(vq: list[np.ndarray], vf: list[np.ndarray], pool) -> list[np.ndarray]:
    """Over one chunk's tap views, per channel: the sums of vq[k] * vq[l] (C, k, k; each pair
    once), of vq[k] * vf[l], of vq[k] and of vf[k] (C, k), every other entry computed in ``pool``'s
    thread. A view whose pixels and channels lie side by side in each row (stride 1) is summed as
    rows of width x channels values, and the row's sums then per channel: a long inner loop where
    a thin layer's channels alone make a short one."""
    taps, channels = len(vq), vq[0].shape[-1]
    square, cross = (np.empty((channels, taps, taps), np.float32) for _ in range(2))
    mean_q, mean_f = (np.empty((channels, taps), np.float32) for _ in range(2))
    rows_q, rows_f = [_rows(v) for v in vq], [_rows(v) for v in vf]

    def product(out: np.ndarray, k: int, m: int, b: list[np.ndarray], rows_b: list) -> None:
        if rows_q[k] is not None and rows_b[m] is not None:
            out[:, k, m] = np.einsum("nhx,nhx->x", rows_q[k], rows_b[m]).reshape(-1, channels).sum(axis=0)
        else:
            out[:, k, m] = np.einsum("nhwc,nhwc->c", vq[k], b[m])
        if out is square:
            out[:, m, k] = out[:, k, m]

    def total(out: np.ndarray, k: int, views: list[np.ndarray]) -> None:
        out[:, k] = views[k].sum(axis=(0, 1, 2))

    entries = [(product, square, k, m, vq, rows_q) for k in range(taps) for m in range(k, taps)]
    entries += [(product, cross, k, m, vf, rows_f) for k in range(taps) for m in range(taps)]
    entries += [(total, mean_q, k, vq) for k in range(taps)] + [(total, mean_f, k, vf) for k in range(taps)]

    def compute(some: list[tuple]) -> None:
        for function, *args in some:
            function(*args)

    other = pool.submit(compute, entries[1::2])
    compute(entries[0::2])
    other.result()
    return [square, cross, mean_q, mean_f]


def _rows(view: np.ndarray) -> np.ndarray | None:
    """``view`` (n, h, w, c) as (n, h, w * c), the same memory, or None when a row's pixels are
    not adjacent (a strided tap)."""
    n, h, w, c = view.shape
    if view.strides[3] != view.itemsize or view.strides[2] != c * view.itemsize:
        return None
    return view.reshape(n, h, w * c)  # adjacent axes with matching strides: numpy returns a view


def _tap_views(layer, x: np.ndarray) -> list[np.ndarray]:
    """For each kernel tap (in the kernel's (kh, kw) order), the view of the padded input that the
    tap reads at every output position: what a patch array holds, as kh*kw strided views. Padding
    as TensorFlow's: 'same' pads the total (output - 1) * stride + reach - size, the smaller half first."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
    x = np.asarray(x, np.float32)
    size = x.shape[1:3]
    reach = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    if layer.padding == "same":
        out = [-(-n // s) for n, s in zip(size, (sh, sw))]
        pad = [max((o - 1) * s + r - n, 0) for o, s, r, n in zip(out, (sh, sw), reach, size)]
        if any(pad):  # (np.pad copies even nothing)
            x = np.pad(x, ((0, 0), (pad[0] // 2, pad[0] - pad[0] // 2), (pad[1] // 2, pad[1] - pad[1] // 2), (0, 0)))
    else:
        out = [(n - r) // s + 1 for n, r, s in zip(size, reach, (sh, sw))]
    return [x[:, a * dh:a * dh + (out[0] - 1) * sh + 1:sh, b * dw:b * dw + (out[1] - 1) * sw + 1:sw, :]
            for a in range(kh) for b in range(kw)]


def _patches(layer, x: np.ndarray) -> np.ndarray:
    """Input patches of a convolution, (positions, kh*kw*C) in the kernel's (kh, kw, C) order: the
    kernel taps' views of the padded input (``_tap_views``) side by side, what
    tf.image.extract_patches gives (a 1x1 kernel's: every ``stride``-th pixel, no padding)."""
    kh, kw = layer.kernel_size
    views = _tap_views(layer, x)
    if len(views) == 1:  # a 1x1 kernel: its one view, without the copy np.stack makes (when it is contiguous)
        return views[0].reshape(-1, x.shape[-1])
    return np.stack(views, axis=3).reshape(-1, kh * kw * x.shape[-1])
