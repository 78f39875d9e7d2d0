"""Every family's TFLite calibration on every core (export/tflite_calibration.py) is the
converter's own, byte for byte, where operators run in place: untrained weights, random images."""

import pytest

from calibrations import calibrated, random_images, representative_of
from conftest import randomize_batchnorm
from families import build
from mobiledeploy.export import tflite_calibration

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["v2", "v3small", "efflite"])
def test_every_residual_family_gets_the_calibrators_statistics(family):
    """Residual ADDs (MobileNetV2), squeeze-and-excitation MULs with hard-swish (V3 Small) and with
    sigmoids (EfficientNet-Lite style): the converter's bytes, untrained weights."""
    import keras

    model = build(family, keras)
    randomize_batchnorm(model)
    representative = representative_of(random_images(seed=5))
    fast = tflite_calibration.statistics(calibrated(model, tflite_calibration.first_image(representative)),
                                         representative)
    assert fast is not None and fast == calibrated(model, representative)
