"""The int8 grids the refinement rounds to: kernels on the converters' per-channel grid, and
activations as the converters round them (``refine.fake_quantize``)."""

import numpy as np

from mobiledeploy.passes.refine import fake_quantize
from mobiledeploy.passes.rounding import quantize_kernel


def test_kernels_land_on_a_grid_the_converters_reproduce():
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1, (3, 3, 4, 2)) * rng.uniform(0.01, 10, (1, 1, 4, 2))  # wild channel ranges
    q = quantize_kernel(kernel, "DepthwiseConv2D")
    scale = np.max(np.abs(kernel), axis=(0, 1), keepdims=True) / 127
    steps = q / scale
    assert np.allclose(steps, np.round(steps), atol=1e-3) and np.abs(steps).max() <= 127 + 1e-3
    assert np.allclose(np.max(np.abs(q), axis=(0, 1)), np.max(np.abs(kernel), axis=(0, 1)), rtol=1e-6)
    # a converter's max-abs requantization finds the same int8 codes (float32 values may move 1 ulp)
    codes = lambda k: np.round(k / (np.max(np.abs(k), axis=(0, 1), keepdims=True) / 127))  # noqa: E731
    assert np.array_equal(codes(q), codes(kernel.astype(np.float32) * 0 + q)) and np.array_equal(codes(q), np.round(steps))
    per_tensor = quantize_kernel(kernel, "Conv2D", per_channel=False)
    assert len(np.unique(np.round(per_tensor / (np.abs(kernel).max() / 127), 3) % 1)) == 1


def test_fake_quantize_keeps_zero_and_half_a_step():
    x = np.linspace(-1.0, 3.0, 1001).astype(np.float32)
    q = fake_quantize(x, -1.0, 3.0)
    assert fake_quantize(np.zeros(1, np.float32), -1.0, 3.0)[0] == 0.0
    assert np.max(np.abs(q - x)) <= 4.0 / 255 / 2 + 1e-6 and len(np.unique(q)) <= 256


def test_fake_quantize_of_float32_is_the_float64_formula_value_for_value():
    """The float32 path (slices, two threads, no float64 temporaries) gives what the formula
    computed in float64 gives: values inside and far outside the range, exact half steps, in place."""
    rng = np.random.default_rng(3)
    for low, high in ((-1.0, 3.0), (0.0, 6.0), (-0.013, 0.002), (-250.0, 40.0)):
        step = (max(high, 0) - min(low, 0)) / 255
        x = rng.normal(0, 2 * max(abs(low), abs(high)), 9 * (1 << 16) + 7).astype(np.float32)
        x[:600] = ((np.arange(600) - 300 + 0.5) * step).astype(np.float32)  # ties
        x[-3:] = [0.0, 1e30, -1e30]
        zero_point = np.round(-128 - min(low, 0) / step)
        codes = np.clip(np.round(x / step) + zero_point, -128, 127)
        expected = ((codes - zero_point) * step).astype(np.float32)
        np.testing.assert_array_equal(fake_quantize(x, low, high), expected)
        np.testing.assert_array_equal(fake_quantize(x[:1000], low, high), expected[:1000])  # one thread
        fake_quantize(x, low, high, in_place=True)
        np.testing.assert_array_equal(x, expected)
