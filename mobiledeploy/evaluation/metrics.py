"""Drift metrics between a float model's outputs and a quantized artifact's outputs.

Class decisions (agreement, top-1, per-class accuracy) read the outputs through the model's
``Head`` (heads.py): the argmax of several outputs, one output against its threshold, or, for
a multi-label head, every label against its threshold."""

from __future__ import annotations

import base64
import math
import time
from typing import Callable, Iterable

import numpy as np

from ..reports import Drift, Head

ARGMAX = Head("classes")


def collect(runners: dict, batches: Iterable[np.ndarray], on_batch: Callable[[int], None] | None = None,
            seconds: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Every runner's outputs, flattened to (N, features), from ONE pass over the batches.

    Decoding images costs more than running a small model, so each batch is read once and
    fed to all runners. ``on_batch(samples_done)`` reports progress; ``seconds``, when given, gets
    each runner's time spent running.
    """
    outputs: dict[str, list] = {name: [] for name in runners}
    done = 0
    for batch in batches:
        for name, runner in runners.items():
            started = time.perf_counter()
            outputs[name].append(runner.run(batch).reshape(len(batch), -1))
            if seconds is not None:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
        done += len(batch)
        if on_batch:
            on_batch(done)
    return {name: np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
            for name, chunks in outputs.items()}


def agreement(reference: np.ndarray, candidate: np.ndarray, head: Head = ARGMAX) -> float:
    """Fraction of samples where both outputs pick the same class (multi-label: the same labels)."""
    if len(reference) == 0:
        return float("nan")
    return float(np.mean(head.agrees(reference, candidate)))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when the outputs are identical."""
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference.astype(np.float64) - candidate)))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def drift(name: str, reference: np.ndarray, candidate: np.ndarray, head: Head = ARGMAX) -> Drift:
    if reference.shape != candidate.shape:
        raise ValueError(f"{name}: output shape {candidate.shape} differs from float {reference.shape}")
    max_abs = float(np.max(np.abs(reference - candidate))) if reference.size else float("nan")
    share = agreement(reference, candidate, head)
    return Drift(name, len(reference), share, sqnr_db(reference, candidate), max_abs,
                 share_interval(share, len(reference)))


def topk_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int = 1, head: Head = ARGMAX) -> float:
    """Share of samples whose label is among the k highest outputs. Ties go to the lower class
    index, as argmax (and so ``agreement``, and an app's argmax) breaks them: an int8 softmax
    steps by 1/256, so its top classes often tie. A single-output head scores its decision."""
    return float(np.mean(topk_hits(outputs, labels, k, head)))


def topk_hits(outputs: np.ndarray, labels: np.ndarray, k: int = 1, head: Head = ARGMAX) -> np.ndarray:
    """Per sample, whether its label is among the k highest outputs (as ``topk_accuracy``)."""
    if head.binary:
        return head.decide(outputs) == labels if k == 1 else np.ones(len(labels), bool)
    k = min(k, outputs.shape[1])
    top = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
    return np.any(top == labels[:, None], axis=1)


def change_interval(reference_hits: np.ndarray, hits: np.ndarray) -> float:
    """Half-width of the 95% interval of a top-1 change measured on these samples.

    The change is paired: per sample it is +1 (right only here), -1 (right only in the
    reference) or 0, so only the b + c samples on which the two differ widen the interval. It is
    Agresti and Min's (2005) interval for matched proportions: the Wald interval with half a
    sample added to each cell of the 2x2 table, 1.96 * sqrt(b' + c' - (b' - c')^2 / n') / n'
    with b' = b + 0.5, c' = c + 0.5, n' = n + 2, which unlike the plain Wald interval does not
    shrink to nothing when few or no samples differ. On 500 ImageNet images and 95% agreement it
    is about +-1.3 points: how much of a change the sampling of the images alone could explain."""
    hits, reference_hits = np.asarray(hits, bool), np.asarray(reference_hits, bool)
    if len(hits) == 0:
        return float("nan")
    only_here = float(np.sum(hits & ~reference_hits)) + 0.5
    only_there = float(np.sum(reference_hits & ~hits)) + 0.5
    total = len(hits) + 2.0
    return 1.96 * math.sqrt(only_here + only_there - (only_here - only_there) ** 2 / total) / total


def paired_intervals(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """Half-widths of the 95% intervals of our file's lead over theirs on the same samples, from
    each file's ``sample_hits``: agreement with the reference and (with labels) top-1, each
    paired sample by sample."""
    return {metric: change_interval(theirs[metric], ours[metric]) for metric in ("agreement", "top1")
            if metric in ours and metric in theirs}


def sample_hits(reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None,
                head: Head = ARGMAX) -> dict[str, np.ndarray]:
    """Per sample, what the rows' shares count: agreement with the reference and, with labels,
    top-1 (and top-5 where there are more than 5 classes) hits."""
    hits = {"agreement": np.asarray(head.agrees(reference, outputs), bool)}
    if labels is not None:
        hits["top1"] = topk_hits(outputs, labels, 1, head)
        if head.classes(outputs) > 5:
            hits["top5"] = topk_hits(outputs, labels, 5, head)
    return hits


def pack_hits(hits: np.ndarray) -> str:
    """Per-sample booleans as text for a JSON file: 1 bit each, base64."""
    return base64.b64encode(np.packbits(np.asarray(hits, bool)).tobytes()).decode("ascii")


def unpack_hits(text: str, samples: int) -> np.ndarray | None:
    """``pack_hits``'s booleans back, or None when ``text`` does not hold ``samples`` of them."""
    try:
        packed = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), np.uint8)
    except (ValueError, UnicodeEncodeError, AttributeError):
        return None
    if len(packed) != (samples + 7) // 8:
        return None
    return np.unpackbits(packed)[:samples].astype(bool)


def share_interval(share: float, samples: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a share (such as agreement) measured on ``samples``
    samples: unlike share +- 1.96 standard errors it stays inside [0, 1] and is not empty at
    100%, where agreement usually sits."""
    if samples == 0 or math.isnan(share):
        return float("nan"), float("nan")
    z = 1.96
    centre = (share + z * z / (2 * samples)) / (1 + z * z / samples)
    spread = z * math.sqrt(share * (1 - share) / samples + z * z / (4 * samples * samples)) / (1 + z * z / samples)
    return max(centre - spread, 0.0), min(centre + spread, 1.0)


def mean_kl(reference: np.ndarray, candidate: np.ndarray, head: Head = ARGMAX) -> float:
    """Mean KL(float || quantized) between softmax distributions (softmax applied if needed);
    for a multi-label head, the sum over labels of each label's Bernoulli KL.

    Probabilities are floored at 1e-6: an int8 softmax output rounds small probabilities to
    exactly 0, and an unfloored log(0) would let those rounding zeros dominate the mean.
    The float reference says whether the outputs are a softmax: an int8 softmax over 1000
    classes can lose a fifth of its mass to those zeros, so it is renormalised, not read as logits.
    """
    eps = 1e-6
    if head.multi_label:  # independent labels: their KLs add up
        p, q = (_decision_probabilities(o, head) for o in (reference, candidate))
        kl = p * (np.log(p + eps) - np.log(q + eps)) + (1 - p) * (np.log(1 - p + eps) - np.log(1 - q + eps))
        return float(np.mean(np.sum(kl, axis=1)))
    softmax = _is_softmax(reference)
    p, q = (_as_probabilities(o, head, softmax) for o in (reference, candidate))
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


def _decision_probabilities(outputs: np.ndarray, head: Head) -> np.ndarray:
    """The probability of each yes/no decision of a binary or multi-label head: a sigmoid output
    as it is, a logit (decided above 0) through the sigmoid."""
    outputs = outputs.astype(np.float64)
    return 1 / (1 + np.exp(-outputs)) if head.threshold == 0 else np.clip(outputs, 0, 1)


def _is_softmax(outputs: np.ndarray) -> bool:
    """Whether float outputs are already probabilities over classes (each row sums to 1)."""
    return bool(outputs.min() >= 0 and np.allclose(outputs.astype(np.float64).sum(axis=1), 1.0, atol=2e-2))


def _as_probabilities(outputs: np.ndarray, head: Head, softmax: bool) -> np.ndarray:
    outputs = outputs.astype(np.float64)
    if head.binary:  # one output: the probability of class 1
        one = _decision_probabilities(outputs[:, :1], head)
        return np.concatenate([1 - one, one], axis=1)
    if softmax:  # a softmax, maybe quantized: its rounding zeros lose mass, so renormalise
        outputs = np.clip(outputs, 0, None)
        sums = outputs.sum(axis=1, keepdims=True)
        return np.where(sums > 0, outputs / np.where(sums > 0, sums, 1), 1 / outputs.shape[1])
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def per_class_accuracy(outputs: np.ndarray, labels: np.ndarray, classes: int,
                       head: Head = ARGMAX) -> list[float | None]:
    predicted = head.decide(outputs)
    return [float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None for c in range(classes)]


def artifact_metrics(name: str, reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None,
                     head: Head = ARGMAX, hits: dict[str, np.ndarray] | None = None,
                     reference_hits: dict[str, np.ndarray] | None = None) -> dict:
    """Everything ``eval`` reports for one artifact against the float reference outputs.
    ``hits`` and ``reference_hits`` are the two files' ``sample_hits``, when the caller has them."""
    result = {**drift(name, reference, outputs, head).to_dict(), "mean_kl": mean_kl(reference, outputs, head)}
    identical = np.array_equal(reference, outputs)  # the reference itself: nothing was sampled
    if identical:
        result["agreement_ci95"] = [1.0, 1.0]
    if labels is not None:
        classes = head.classes(outputs)
        mine = per_class_accuracy(outputs, labels, classes, head)
        ref = per_class_accuracy(reference, labels, classes, head)
        if hits is None:
            hits = sample_hits(reference, outputs, labels, head)
        if reference_hits is None:
            reference_hits = sample_hits(reference, reference, labels, head)
        result.update({
            "top1": float(np.mean(hits["top1"])),
            # the top-1 change against the reference, +- this, is what these samples can resolve
            "top1_change_ci95": 0.0 if identical else change_interval(reference_hits["top1"], hits["top1"]),
            # with 5 classes or fewer every label is in the top 5: nothing to report or gate
            **({"top5": float(np.mean(hits["top5"]))} if "top5" in hits else {}),
            "per_class_change": {
                str(c): round(m - r, 6) for c, (m, r) in enumerate(zip(mine, ref))
                if m is not None and r is not None and m != r
            },
        })
    return result


def bit_exactness(host: np.ndarray, device: np.ndarray, head: Head = ARGMAX) -> dict:
    """How closely another device reproduced this CPU's outputs of the same artifact.

    int8 kernels are integer arithmetic, so identical bytes are expected; float kernels may
    sum in another order (NEON vs AVX), so a small max |diff| is normal there.
    """
    host = np.ascontiguousarray(host, np.float32).reshape(len(host), -1)
    device = np.ascontiguousarray(device, np.float32).reshape(len(device), -1)
    same = np.all(host.view(np.uint32) == device.view(np.uint32), axis=1)
    return {
        "x86_identical": float(same.mean()) if len(same) else 1.0,
        "x86_max_abs_diff": float(np.max(np.abs(host - device))) if host.size else 0.0,
        "x86_top1_agreement": agreement(host, device, head),
    }
