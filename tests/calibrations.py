"""The TFLite converter's own calibration of a model on random images, beside which the tests put
the calibration on every core (export/tflite_calibration.py)."""

from __future__ import annotations

import numpy as np

from mobiledeploy.export import tflite
from mobiledeploy.options import ExportSettings


def random_images(count: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1.5, (count, 32, 32, 3)).astype(np.float32)


def representative_of(images: np.ndarray):
    return lambda: (images[i:i + 10] for i in range(0, len(images), 10))  # batches, the last one short


def calibrated(model, representative) -> bytes:
    """The converter's own calibration (the route tflite.export takes before quantizing)."""
    import tensorflow as tf

    converter = tflite._calibrating(model, representative, ExportSettings(), tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
    converter._experimental_calibrate_only = True
    return tflite._convert(converter)
