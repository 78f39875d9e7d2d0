"""Warnings for results that mean little although every number is computed right: a float model
that gives one answer whatever the image (untrained, broken or fed the wrong scaling), int8 files
whose outputs are mostly noise, and evaluation images the build was calibrated on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..reports import Drift, Head

MIN_IMAGES = 20  # fewer say nothing about a model answering one class
ONE_ANSWER_SHARE = 0.98  # of the images given the same class by the float model
NOISE_SQNR_DB = 3.0  # int8 outputs this close to their error are mostly noise


def float_model(outputs: np.ndarray, head: Head, what: str) -> list[str]:
    """Warnings about the float model's ``outputs`` on ``what`` (e.g. "calibration images")."""
    count = len(outputs)
    if count < MIN_IMAGES:
        return []
    if float(np.ptp(outputs, axis=0).max(initial=0.0)) == 0.0:
        return [f"the float model gives the same output for all {count} {what}: it is untrained or broken, "
                "so agreement with it means nothing"]
    if head.multi_label:
        return []
    answer, times = Counter(head.decide(outputs).tolist()).most_common(1)[0]
    if times >= ONE_ANSWER_SHARE * count:
        return [f"the float model answers class {answer} for {times} of {count} {what}: untrained, broken or "
                "given the wrong input scaling (--preprocess)? Agreement with it says little"]
    return []


def int8_files(drift: tuple[Drift, ...]) -> list[str]:
    """Warnings about int8 files whose outputs are mostly noise against float."""
    return [f"{row.artifact}: output SQNR {row.sqnr_db:.1f} dB, the int8 outputs are mostly noise; calibrate "
            "on images like the model's inputs and check --preprocess" for row in drift if row.sqnr_db < NOISE_SQNR_DB]


def calibrated_on(items: tuple, calibration: tuple[str, ...]) -> list[str]:
    """A warning when evaluation image files (``items``: paths) are among the build's calibration
    images (paths relative to the folder quantize read): the same trailing path, which an image
    copied or evaluated from the calibration folder itself keeps."""
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for relative in calibration:
        parts = Path(relative).parts
        if parts:
            by_name.setdefault(parts[-1], []).append(parts)
    paths = [Path(item) for item in items if isinstance(item, (str, Path))]  # an array's rows are numbers
    shared = [path for path in paths if any(path.parts[-len(parts):] == parts for parts in by_name.get(path.name, ()))]
    if not shared:
        return []
    return [f"{len(shared)} of the {len(items)} evaluation images are calibration images of this build "
            f"(e.g. {shared[0]}; manifest.json lists them): int8 scores on them look better than on new images"]
