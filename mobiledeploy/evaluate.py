"""Drift metrics between a float model's outputs and a quantized artifact's outputs."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .types import Drift


def collect(runner, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenate a runner's outputs over batches, flattened to (N, features)."""
    outputs = [runner.run(batch).reshape(len(batch), -1) for batch in batches]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of samples where both outputs pick the same top-1 class."""
    if len(reference) == 0:
        return float("nan")
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when the outputs are identical."""
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference.astype(np.float64) - candidate)))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def drift(name: str, reference: np.ndarray, candidate: np.ndarray) -> Drift:
    if reference.shape != candidate.shape:
        raise ValueError(f"{name}: output shape {candidate.shape} differs from float {reference.shape}")
    max_abs = float(np.max(np.abs(reference - candidate))) if reference.size else float("nan")
    return Drift(name, len(reference), agreement(reference, candidate), sqnr_db(reference, candidate), max_abs)
