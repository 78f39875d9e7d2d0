"""Conformance, part 1: MobileNet v1 (RGB and 1-channel), FD-MobileNet and MobileNetV2 (square and
not), each in every save format with Keras' default layer names, and with names of their own."""

import pytest

from checks import measuring_commands_run, quantize_and_check, zoo
from families import FORMATS

pytestmark = pytest.mark.slow
FAMILIES = ("v1", "fd", "v2", "v1_grey", "v2_wide")
# every format with Keras' default names (what files in the wild carry); own names once per family
MATRIX = [(f, fmt, "keras") for f in FAMILIES[:3] for fmt in FORMATS] + \
         [(f, "keras3.keras", "keras") for f in FAMILIES[3:]] + [(f, "keras3.keras", "own") for f in FAMILIES]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return zoo(tmp_path_factory.mktemp("zoo"), MATRIX)


@pytest.mark.parametrize("family, fmt, names", MATRIX, ids=["-".join(case) for case in MATRIX])
def test_quantizes_to_full_int8_with_the_defaults(models, tmp_path, family, fmt, names):
    out = tmp_path / "build"
    quantize_and_check(models[family, fmt, names], family, out)
    if fmt == "keras3.keras" and names == "keras":
        measuring_commands_run(out)
