"""The converter's calibration statistics taken on every core (tflite_calibration.py): the same
bytes as the converter's own calibration, or the converter's own where they would not be."""

from __future__ import annotations

import numpy as np
import pytest

from mobiledeploy.export import tflite, tflite_calibration
from mobiledeploy.options import ExportSettings
from calibrations import calibrated, random_images, representative_of
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


@pytest.fixture(scope="module")
def chain():
    return _chain()


def test_statistics_on_every_core_are_the_converters_own(chain):
    images = random_images()
    representative = representative_of(images)
    first = calibrated(chain, tflite_calibration.first_image(representative))
    fast = tflite_calibration.statistics(first, representative)
    assert fast is not None and fast != first  # the first image's statistics gave way to all images'
    assert fast == calibrated(chain, representative)  # byte for byte


def test_nan_is_skipped_as_the_calibrators_logger_skips_it(chain):
    images = random_images(seed=1)
    images[3, 5:9, 5:9, :] = np.nan  # spreads through the convolutions into some outputs
    representative = representative_of(images)
    fast = tflite_calibration.statistics(calibrated(chain, tflite_calibration.first_image(representative)),
                                         representative)
    assert fast == calibrated(chain, representative)

    nothing = np.full((4, 32, 32, 3), np.nan, np.float32)  # no value at all: the converter's own way
    assert tflite_calibration.statistics(calibrated(chain, representative_of(images)), representative_of(nothing)) is None


def test_an_add_in_place_is_read_as_the_calibrator_reads_it():
    """The tiny MobileNet's residual ADD: TensorFlow Lite writes the sum into the memory of the
    input no other operator reads, and the calibrator logs that input afterwards, so its statistics
    hold the sum's values too; the fast route gives them the same."""
    model = build_tiny_mobilenet(input_size=32)
    representative = representative_of(random_images(seed=2))
    fast = tflite_calibration.statistics(calibrated(model, tflite_calibration.first_image(representative)),
                                         representative)
    assert fast is not None and fast == calibrated(model, representative)


def _two_branches(join: str):
    """Two 1x1 convolutions of the input joined by ``join``: an ADD whose two inputs are both read by
    it alone (which one TensorFlow Lite overwrites, the rule cannot say), or a SUB (not known)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    a, b = layers.Conv2D(4, 1)(inputs), layers.Conv2D(4, 1)(inputs)
    x = layers.Add()([a, b]) if join == "add" else layers.Subtract()([a, b])
    return keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("join", ["add", "sub"])
def test_an_operator_the_rule_cannot_read_is_calibrated_the_converters_way(join):
    model = _two_branches(join)
    representative = representative_of(random_images(seed=4))
    assert tflite_calibration.statistics(calibrated(model, tflite_calibration.first_image(representative)),
                                         representative) is None
    assert tflite._calibrated(model, representative, ExportSettings()) == calibrated(model, representative)


def test_the_export_writes_the_int8_file_the_converters_calibration_gives(chain, tmp_path, monkeypatch):
    images = random_images(seed=3)
    fast = tmp_path / "fast"
    slow = tmp_path / "slow"
    fast.mkdir(), slow.mkdir()
    taken = []
    statistics = tflite_calibration.statistics
    monkeypatch.setattr(tflite_calibration, "statistics", lambda *args: taken.append(statistics(*args)) or taken[-1])
    written = tflite.export(chain, representative_of(images), fast, ExportSettings())
    assert len(taken) == 1 and taken[0] is not None  # the export took the fast route
    monkeypatch.setattr(tflite_calibration, "statistics", lambda *args, **kwargs: None)  # the converter's own way
    tflite.export(chain, representative_of(images), slow, ExportSettings())
    int8 = next(a for a in written if a.quantized).file
    assert (fast / int8).read_bytes() == (slow / int8).read_bytes()
