"""Conformance, part 2: MobileNetV3 Small and Large (minimalistic), an EfficientNet-Lite-style net
and a Dense-MobileNet, each in every save format with Keras' default layer names, and with names
of their own."""

import pytest

from checks import conformance_tests
from families import FORMATS

pytestmark = pytest.mark.slow
FAMILIES = ("v3small", "v3large", "efflite", "dense")
MATRIX = [(f, fmt, "keras") for f in FAMILIES for fmt in FORMATS] + [(f, "keras3.keras", "own") for f in FAMILIES]

models, test_quantizes_to_full_int8_with_the_defaults = conformance_tests(MATRIX)
