"""The converter's calibration statistics taken on every core (tflite_calibration.py): the same
bytes as the converter's own calibration, or the converter's own where they would not be."""

from __future__ import annotations

import numpy as np
import pytest

from mobiledeploy.export import tflite, tflite_calibration
from mobiledeploy.options import ExportSettings
from mobiledeploy.reports import Artifact
from conftest import build_tiny_mobilenet, randomize_batchnorm


def _chain(seed: int = 0):
    """A MobileNet v1 of 32x32 images (no residual: every operator writes its own output), with a
    padding, a MEAN, a FULLY_CONNECTED and a concatenation besides."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = layers.ZeroPadding2D(1)(inputs)
    x = layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    branch = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    branch = layers.BatchNormalization()(branch)
    branch = layers.ReLU(6.0)(branch)
    x = layers.Concatenate()([layers.AveragePooling2D(2)(x), layers.AveragePooling2D(2)(branch)])
    x = layers.Conv2D(16, 1)(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    randomize_batchnorm(model, seed)
    return model


def _images(count: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1.5, (count, 32, 32, 3)).astype(np.float32)


def _representative(images: np.ndarray):
    return lambda: (images[i:i + 10] for i in range(0, len(images), 10))  # batches, the last one short


def _calibrated(model, representative) -> bytes:
    """The converter's own calibration (the route tflite.export takes before quantizing)."""
    import tensorflow as tf

    converter = tflite._calibrating(model, representative, ExportSettings(), tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
    converter._experimental_calibrate_only = True
    return tflite._convert(converter)


@pytest.fixture(scope="module")
def chain():
    return _chain()


def test_statistics_on_every_core_are_the_converters_own(chain):
    images = _images()
    representative = _representative(images)
    first = _calibrated(chain, tflite_calibration.first_image(representative))
    fast = tflite_calibration.statistics(first, representative)
    assert fast is not None and fast != first  # the first image's statistics gave way to all images'
    assert fast == _calibrated(chain, representative)  # byte for byte


def test_nan_is_skipped_as_the_calibrators_logger_skips_it(chain):
    images = _images(seed=1)
    images[3, 5:9, 5:9, :] = np.nan  # spreads through the convolutions into some outputs
    representative = _representative(images)
    fast = tflite_calibration.statistics(_calibrated(chain, tflite_calibration.first_image(representative)),
                                         representative)
    assert fast == _calibrated(chain, representative)

    nothing = np.full((4, 32, 32, 3), np.nan, np.float32)  # no value at all: the converter's own way
    assert tflite_calibration.statistics(_calibrated(chain, _representative(images)), _representative(nothing)) is None


def test_a_graph_with_an_operator_in_place_is_calibrated_the_converters_way(tmp_path, monkeypatch):
    """The tiny MobileNet's residual ADD: TensorFlow Lite writes the sum into one of its inputs,
    whose statistics the calibrator then takes with the sum's values in them (what a run keeping
    every tensor apart cannot give), so the fast route declines and the export calibrates as the
    converter does."""
    model = build_tiny_mobilenet(input_size=32)
    images = _images(seed=2)
    representative = _representative(images)
    converters = _calibrated(model, representative)
    assert tflite_calibration.statistics(_calibrated(model, tflite_calibration.first_image(representative)),
                                         representative) is None
    assert tflite._calibrated(model, representative, ExportSettings()) == converters


def test_the_export_writes_the_int8_file_the_converters_calibration_gives(chain, tmp_path, monkeypatch):
    images = _images(seed=3)
    fast = tmp_path / "fast"
    slow = tmp_path / "slow"
    fast.mkdir(), slow.mkdir()
    taken = []
    statistics = tflite_calibration.statistics
    monkeypatch.setattr(tflite_calibration, "statistics", lambda *args: taken.append(statistics(*args)) or taken[-1])
    written = tflite.export(chain, _representative(images), fast, ExportSettings())
    assert len(taken) == 1 and taken[0] is not None  # the export took the fast route
    monkeypatch.setattr(tflite_calibration, "statistics", lambda *args, **kwargs: None)  # the converter's own way
    tflite.export(chain, _representative(images), slow, ExportSettings())
    int8 = next(a for a in written if isinstance(a, Artifact) and a.quantized).file
    assert (fast / int8).read_bytes() == (slow / int8).read_bytes()
