"""Conformance, part 1: MobileNet v1 (RGB and 1-channel), FD-MobileNet and MobileNetV2 (square and
not), each in every save format with Keras' default layer names, and with names of their own."""

import pytest

from checks import conformance_tests
from families import FORMATS

pytestmark = pytest.mark.slow
FAMILIES = ("v1", "fd", "v2", "v1_grey", "v2_wide")
# every format with Keras' default names (what files in the wild carry); own names once per family
MATRIX = [(f, fmt, "keras") for f in FAMILIES[:3] for fmt in FORMATS] + \
         [(f, "keras3.keras", "keras") for f in FAMILIES[3:]] + [(f, "keras3.keras", "own") for f in FAMILIES]

models, test_quantizes_to_full_int8_with_the_defaults = conformance_tests(MATRIX)
