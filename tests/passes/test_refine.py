"""Refinement levers on tiny real models: each must do what it claims, measured."""

import json

import numpy as np
import pytest

from conftest import cli
from mobiledeploy.passes.refine import fake_quantize, mse_clip, refine_for_int8
from mobiledeploy.passes.rounding import _descend, adaround, quantize_kernel, rounding_images


def test_mse_clip_picks_the_lowest_error_clip():
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, 150_000).astype(np.float32)
    values[0] = 1.08  # one outlier stretches min-max calibration by 8%
    clip = mse_clip(values, 6.0)
    error = lambda c: np.mean((values - fake_quantize(np.minimum(values, c), 0, c)) ** 2)  # noqa: E731
    assert clip < 1.01 and error(clip) < error(1.08)
    for quantile in (0.99, 0.999, 1.0):
        assert error(clip) <= error(float(np.quantile(values, quantile))) + 1e-12
    # int8 has 256 levels: clipping a ReLU6 that often saturates only adds error, so 6 stays
    saturated = np.where(rng.uniform(size=100_000) < 0.3, 6.0, rng.uniform(0, 6, 100_000)).astype(np.float32)
    assert mse_clip(saturated, 6.0) == pytest.approx(6.0)


def test_adaptive_rounding_never_loses_to_nearest():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (4000, 16)) @ rng.normal(0, 1, (16, 16))  # correlated inputs
    w = rng.normal(0, 1, (16, 8)) * 20
    a, b = x.T @ x / len(x), x.T @ x / len(x)

    def loss(q):
        return np.sum((x @ (q - w)) ** 2)

    q = _descend(w, a, b, sweeps=10)
    assert np.all((q == np.floor(w)) | (q == np.ceil(w)))
    assert loss(q) < 0.7 * loss(np.round(w))  # the quadratic objective falls well below nearest


def test_adaptive_rounding_fitted_on_too_few_samples_loses_to_nearest_out_of_sample():
    """The premise of rounding_images: the rounding fits the samples it is given. On many more
    samples than weights it beats nearest on fresh samples; on fewer it loses to nearest."""
    rng = np.random.default_rng(4)
    mixing = rng.normal(0, 1, (64, 64))
    w = rng.normal(0, 1, (64, 16)) * 20
    fresh = rng.normal(0, 1, (20_000, 64)) @ mixing

    def held_out_loss(n):
        x = rng.normal(0, 1, (n, 64)) @ mixing
        a = x.T @ x / n
        q = _descend(w, a, a, sweeps=10)
        return np.sum((fresh @ (q - w)) ** 2)

    nearest = np.sum((fresh @ (np.round(w) - w)) ** 2)
    assert held_out_loss(16 * 64) < 0.9 * nearest
    assert held_out_loss(32) > nearest


def test_validated_rounding_keeps_adaround_only_where_it_wins_on_held_out_samples():
    """Where a layer has too few positions for rounding_images, adaround is fitted on three
    folds of the samples and scored on the fourth, four times: on too few samples it loses to
    nearest and the kernel is rounded to nearest; on plenty it wins every fold and the kernel
    is the rounding fitted on all samples."""
    import keras

    rng = np.random.default_rng(4)
    mixing = rng.normal(0, 1, (64, 64))
    layer = keras.layers.Dense(16)
    layer.build((None, 64))
    kernel = rng.normal(0, 1, (64, 16)).astype(np.float32)
    layer.set_weights([kernel, np.zeros(16, np.float32)])
    few = (rng.normal(0, 1, (48, 64)) @ mixing).astype(np.float32)
    assert adaround(layer, few, few, validate=True) is False
    assert np.array_equal(layer.get_weights()[0], quantize_kernel(kernel, "Dense"))
    many = (rng.normal(0, 1, (4096, 64)) @ mixing).astype(np.float32)
    layer.set_weights([kernel, np.zeros(16, np.float32)])
    assert adaround(layer, many, many, validate=True) is True
    validated = layer.get_weights()[0]
    layer.set_weights([kernel, np.zeros(16, np.float32)])
    adaround(layer, many, many)
    assert np.array_equal(validated, layer.get_weights()[0])
    assert not np.array_equal(validated, quantize_kernel(kernel, "Dense"))


def test_rounding_images_reads_more_images_for_small_layers_and_gives_up_below_the_ratio():
    import keras

    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 18, 18, 8))  # fan-in 72
    dense = keras.layers.Dense(10)
    dense.build((None, 64))  # fan-in 64
    depthwise = keras.layers.DepthwiseConv2D(3)
    depthwise.build((None, 9, 9, 32))  # fan-in 9 per output channel
    assert rounding_images(conv, (1, 16, 16, 4), 200, 64, 16) == 64  # 64 x 256 positions >= 16 x 72
    assert rounding_images(conv, (1, 2, 2, 4), 400, 64, 16) == 288  # 16 x 72 / 4 positions per image
    assert rounding_images(conv, (1, 2, 2, 4), 200, 64, 16) == 0  # 800 positions < 1152: nearest
    assert rounding_images(dense, (1, 10), 2000, 64, 16) == 1024
    assert rounding_images(dense, (1, 10), 1000, 64, 16) == 0
    assert rounding_images(depthwise, (1, 1, 1, 32), 200, 64, 16) == 144
    assert rounding_images(dense, (1, 10), 30, 64, 0) == 30  # 0: every layer, on what there is


def test_refine_checks_rounding_where_calibration_is_too_small(tiny_model):
    from mobiledeploy.passes.folding import fold_batchnorm

    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(5).uniform(-1, 1, (48, 24, 24, 3)).astype(np.float32)
    guarded, report = refine_for_int8(folded, calib)
    everywhere, report_all = refine_for_int8(folded, calib, positions_per_weight=0)
    # 48 images, fan-in 16: checked on held-out folds, where nearest wins
    assert report.validated == report.rounded_to_nearest == ("logits",)
    assert report_all.validated == report_all.rounded_to_nearest == ()
    float_kernel = folded.get_layer("logits").get_weights()[0]
    assert np.array_equal(guarded.get_layer("logits").get_weights()[0], quantize_kernel(float_kernel, "Dense"))
    assert not np.array_equal(everywhere.get_layer("logits").get_weights()[0], quantize_kernel(float_kernel, "Dense"))
    for name in ("stem", "pw"):  # the layers with enough positions are rounded adaptively either way
        assert np.array_equal(guarded.get_layer(name).get_weights()[0], everywhere.get_layer(name).get_weights()[0])


def test_rounding_cache_gives_what_a_fresh_refinement_gives(tiny_model):
    """The mixed-precision search refines again with one more layer kept in float: the layers
    before it take their rounding from the cache, the others are fitted again, and the model and
    report are a fresh refinement's, value for value."""
    from mobiledeploy.model.graph import layer_graph
    from mobiledeploy.passes.folding import fold_batchnorm

    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(6).uniform(-1, 1, (48, 24, 24, 3)).astype(np.float32)
    cache: dict = {}
    refine_for_int8(folded, calib, rounding_cache=cache)
    fitted = {name for name, _ in cache}
    assert {"stem", "pw", "logits"} <= fitted and "sep" not in fitted  # separable layers round to nearest
    for keep in ({"pw"}, {"pw", "stem"}):
        before = len(cache)
        cached, report = refine_for_int8(folded, calib, keep_float=frozenset(keep), rounding_cache=cache)
        fresh, fresh_report = refine_for_int8(folded, calib, keep_float=frozenset(keep))
        assert all(np.array_equal(a, b) for a, b in zip(cached.get_weights(), fresh.get_weights()))
        assert report.per_layer == fresh_report.per_layer and report.validated == fresh_report.validated
        graph = layer_graph(folded)
        after: set[str] = set()
        for name, node in graph.items():  # the layers downstream of a kept one
            if any(p in keep or p in after for p in node["inputs"]):
                after.add(name)
        refitted = {name for name in fitted if name in after and name not in keep}
        assert len(cache) - before == len(refitted) > 0  # only they were fitted again


def test_adaround_layer_output_error_below_nearest(tiny_model):
    import keras

    layer = tiny_model.get_layer("pw")
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 6, (8, 12, 12, 16)).astype(np.float32)
    reference = np.asarray(layer(x))
    clone = keras.layers.Conv2D.from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    adaround(clone, x, x)
    nearest = [quantize_kernel(layer.get_weights()[0], "Conv2D"), layer.get_weights()[1]]
    rounded_error = np.mean((np.asarray(clone(x)) - reference) ** 2)
    clone.set_weights(nearest)
    assert rounded_error < np.mean((np.asarray(clone(x)) - reference) ** 2)


def test_bias_correction_removes_the_mean_error(tiny_model):
    from mobiledeploy.passes.folding import fold_batchnorm

    folded, _ = fold_batchnorm(tiny_model)
    rng = np.random.default_rng(3)
    calib = rng.uniform(-1, 1, (48, 24, 24, 3)).astype(np.float32)
    refined, report = refine_for_int8(folded, calib, adaptive_rounding=False)
    assert report.layers == 5 and report.max_shift > 0  # stem, dw, pw, sep, logits
    for name in ("stem", "dw", "pw", "logits"):  # weights sit on the per-channel int8 grid
        kernel = refined.get_layer(name).get_weights()[0]
        kind = type(refined.get_layer(name)).__name__
        assert np.allclose(quantize_kernel(kernel, kind), kernel, rtol=1e-6, atol=0)
    plain_out = _rounded_model_output(folded, calib)
    float_out = np.asarray(folded(calib))
    assert np.abs((np.asarray(refined(calib)) - float_out).mean(0)).sum() < np.abs((plain_out - float_out).mean(0)).sum()


def _rounded_model_output(model, x):
    import keras

    clone = keras.Model.from_config(model.get_config())
    weights = []
    for layer in model.layers:
        values = layer.get_weights()
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"):
            values[0] = quantize_kernel(values[0], type(layer).__name__)
        weights += values
    clone.set_weights(weights)
    return np.asarray(clone(x))


@pytest.fixture(scope="module")
def lever_builds(tmp_path_factory):
    """The reference MobileNet (real MNIST digits) quantized with each lever; drift on 100
    calibration-folder images held out from calibration."""
    from conftest import REFERENCE_MODEL, ROOT

    builds = {}
    for refine in ("none", "bias", "adaround"):
        out = tmp_path_factory.mktemp(refine) / "build"
        result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out,
                     "--num-calib", 200, "--num-holdout", 100, "--refine", refine, "--json")
        assert result.exit_code == 0, result.output
        builds[refine] = (out, json.loads(result.output))
    return builds


@pytest.mark.slow  # whole builds: the full tier (.ci/run)
def test_levers_lower_int8_error_end_to_end(lever_builds):
    sqnr = {refine: {d["artifact"]: d["sqnr_db"] for d in data["drift"]} for refine, (_, data) in lever_builds.items()}
    # measured: 31.7, 34.6, 43.6 dB on an AVX-512 VNNI CPU; 31.7, 34.7, 36.4 dB on an AVX2 CPU,
    # where the same code and images give other adaptive roundings (the fits' float arithmetic
    # runs in other kernels; each CPU's builds are reproducible)
    for artifact in ("model_int8.tflite", "model_int8.onnx"):
        assert sqnr["bias"][artifact] > sqnr["none"][artifact] + 2.0
        assert sqnr["adaround"][artifact] > sqnr["bias"][artifact] + 1.0
    manifest = json.loads((lever_builds["adaround"][0] / "manifest.json").read_text())
    assert manifest["settings"]["refine"] == "adaround"
    assert manifest["refinement"]["method"] == "adaround+bias-correction" and "seconds" not in manifest["refinement"]
    # 2x2 and 1x1 outputs on 200 images: too few positions per weight for the late layers and the
    # classifier, whose rounding is checked on held-out folds; nearest wins at least at the end
    assert manifest["settings"]["rounding_positions_per_weight"] == 64
    refinement = manifest["refinement"]
    assert refinement["validated"][0] == "conv_pw_5" and refinement["validated"][-1] == "conv_preds"
    assert len(refinement["validated"]) == 12 and set(refinement["rounded_to_nearest"]) <= set(refinement["validated"])
    assert refinement["rounded_to_nearest"][-2:] == ["conv_pw_13", "conv_preds"]
    assert json.loads((lever_builds["none"][0] / "manifest.json").read_text())["refinement"] is None


def test_refined_files_are_deterministic(tiny_model_file, calib_folder, tmp_path):
    for run in ("a", "b"):
        assert cli("quantize", tiny_model_file, "--calib", calib_folder, "-o", tmp_path / run, "--num-calib", 30,
                   "--num-holdout", 0).exit_code == 0
    for name in ("model_int8.tflite", "model_int8.onnx", "model_float.onnx"):  # two runs in one process
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_rounded_outputs_are_the_tensors_the_converters_round(tiny_model):
    """Convolutions followed by their activation are fused (never rounded), identities add no
    rounding; everything else, the input included, is an int8 tensor."""
    from mobiledeploy.passes.folding import fold_batchnorm
    from mobiledeploy.model.graph import layer_graph
    from mobiledeploy.passes.refine import rounded_outputs

    folded, _ = fold_batchnorm(tiny_model)
    assert rounded_outputs(layer_graph(folded)) == {
        "image", "stem_relu", "dw_relu", "pw_relu", "sep", "residual", "pool", "logits", "probs"}


@pytest.mark.parametrize("kernel, height, width, stride, padding", [
    (1, 14, 14, 1, "same"), (1, 15, 13, 2, "same"), (1, 16, 16, 2, "valid"), (1, 7, 9, 2, "valid"),
    (3, 15, 13, 2, "same"), (3, 16, 16, 2, "valid"), (5, 12, 11, 1, "same")])
def test_patches_are_the_pixels_tensorflow_extracts(kernel, height, width, stride, padding):
    """A convolution's patches are read off the input directly (no TensorFlow call): they must be
    exactly what tf.image.extract_patches gives, in the same order (a 1x1 kernel's at stride 1,
    the input's own memory)."""
    import keras
    import tensorflow as tf

    from mobiledeploy.passes.rounding import _patches

    x = np.random.default_rng(0).normal(size=(3, height, width, 5)).astype(np.float32)
    layer = keras.layers.Conv2D(4, kernel, strides=stride, padding=padding)
    layer.build((None, height, width, 5))
    expected = tf.image.extract_patches(x, sizes=[1, kernel, kernel, 1], strides=[1, stride, stride, 1],
                                        rates=[1, 1, 1, 1], padding=padding.upper())
    assert np.array_equal(_patches(layer, x), np.asarray(expected, np.float32).reshape(-1, kernel * kernel * 5))
    if kernel == stride == 1:  # every pixel, in place: the input itself, not a copy
        assert np.shares_memory(_patches(layer, x), x)


@pytest.mark.parametrize("kernel, stride, padding, dilation, size", [(3, 1, "same", 1, (14, 14)), (3, 2, "same", 1, (15, 12)),
                                                                   (3, 2, "valid", 1, (15, 15)), (5, 2, "same", 1, (16, 13)),
                                                                   (3, 1, "same", 2, (13, 13))])
def test_depthwise_moments_are_those_of_tensorflows_patches(kernel, stride, padding, dilation, size):
    """A depthwise layer's moments are read off strided views of the padded input (no patch
    array): per channel, the moments of the patches tf.image.extract_patches gives."""
    import keras
    import tensorflow as tf

    from mobiledeploy.passes.rounding import _depthwise_moments

    rng = np.random.default_rng(0)
    xq = rng.normal(size=(5, *size, 3)).astype(np.float32)
    xf = xq + rng.normal(0, 0.1, xq.shape).astype(np.float32)
    layer = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, dilation_rate=dilation)
    layer.build((None, *size, 3))

    def patches(x):
        found = tf.image.extract_patches(x, sizes=[1, kernel, kernel, 1], strides=[1, stride, stride, 1],
                                         rates=[1, dilation, dilation, 1], padding=padding.upper())
        return np.asarray(found, np.float64).reshape(-1, kernel * kernel, 3)

    pq, pf = patches(xq), patches(xf)
    expected = [np.einsum("pkc,plc->ckl", pq, pq) / len(pq), np.einsum("pkc,plc->ckl", pq, pf) / len(pq),
                pq.mean(axis=0).T, pf.mean(axis=0).T]
    for found, wanted in zip(_depthwise_moments(layer, xq, xf, chunk=2), expected):
        np.testing.assert_allclose(found, wanted, rtol=1e-5, atol=1e-6)


def test_fake_quantize_in_float32_rounds_as_in_float64():
    """Activations are rounded in place in float32; the result must be the float64 formula's,
    value for value, also at ranges that do not hold 0 and for values far outside the range."""
    values = (np.random.default_rng(1).normal(size=(4, 9, 9, 6)) * 4).astype(np.float32)
    for low, high in [(-3.1, 6.0), (0.0, 5.7), (1.0, 3.0), (-20.0, -2.0), (-1e-3, 2e-3)]:
        low, high = min(low, 0.0), max(high, 0.0)
        scale = (high - low) / 255.0
        zero_point = np.round(-128 - low / scale)  # the formula with numpy's own promotions
        expected = ((np.clip(np.round(values / scale) + zero_point, -128, 127) - zero_point) * scale).astype(np.float32)
        assert np.array_equal(fake_quantize(values, low, high), expected)


def test_fake_quantize_of_a_tensor_larger_than_a_slice_in_place_or_not():
    """Rounded a slice at a time (refine.SLICE values), each half in a thread of its own: every
    slice, the last one short, gives the float64 formula's values, in a new array or in place."""
    from mobiledeploy.passes.refine import SLICE

    values = (np.random.default_rng(2).normal(size=(9, 97, 101, 9)) * 3).astype(np.float32)
    assert values.size > 8 * SLICE and values.size % SLICE
    low, high = -2.5, 7.0
    scale = (high - low) / 255.0
    zero_point = np.round(-128 - low / scale)
    expected = ((np.clip(np.round(values / scale) + zero_point, -128, 127) - zero_point) * scale).astype(np.float32)
    copy = fake_quantize(values, low, high)
    assert np.array_equal(copy, expected) and not np.shares_memory(copy, values)
    in_place = fake_quantize(values, low, high, in_place=True)
    assert np.array_equal(in_place, expected) and np.shares_memory(in_place, values)


@pytest.mark.parametrize("shape", [(5, 61, 67, 9), (3, 7, 7, 1024), (40, 1000), (2, 3, 3, 1)])
def test_bias_correction_mean_is_numpys_value_for_value(shape):
    """The mean error a slice at a time (1000 values, the last short): numpy's float32 mean's values."""
    from mobiledeploy.passes.refine import channel_mean_difference

    rng = np.random.default_rng(3)
    a = (rng.normal(size=shape) + 0.5).astype(np.float32)
    b = a + rng.normal(0, 0.02, shape).astype(np.float32)
    expected = (a - b).reshape(-1, shape[-1]).mean(axis=0)
    assert np.array_equal(channel_mean_difference(a, b, values=1000), expected)


def _descend_reference(w, a, b, sweeps):
    """Coordinate descent as first written: every output channel's gradient moves at each step."""
    q = np.round(w)
    alternative = np.where(q > w, np.floor(w), np.ceil(w))
    shared = a.ndim == 2
    grad = ((a @ q) if shared else np.einsum("okl,lo->ko", a, q)) - \
        ((b @ w) if shared else np.einsum("okl,lo->ko", b, w))
    diag = np.diag(a)[:, None] if shared else np.einsum("okk->ko", a)
    for _ in range(sweeps):
        changed = 0
        for k in range(w.shape[0]):
            step = alternative[k] - q[k]
            take = (step * step * diag[k] + 2 * step * grad[k] < -1e-12) & (step != 0)
            step = np.where(take, step, 0.0)
            alternative[k] = np.where(take, q[k], alternative[k])
            q[k] += step
            grad += (a[:, k][:, None] * step) if shared else a[:, :, k].T * step
            changed += int(take.sum())
        if not changed:
            break
    return q


@pytest.mark.parametrize("fan_in, channels, shared", [(48, 64, True), (9, 24, False), (200, 16, True), (150, 90, True)])
def test_descent_in_blocks_that_updates_only_flipped_channels_finds_the_same_rounding(fan_in, channels, shared):
    """Fan-ins over rounding.BLOCK (64) take several blocks, the last one short."""
    rng = np.random.default_rng(fan_in)
    if shared:
        x = rng.normal(size=(2000, fan_in))
        a = x.T @ x / len(x)
    else:
        a = np.stack([np.cov(rng.normal(size=(fan_in, 100))) for _ in range(channels)])
    b = a + 0.01 * rng.normal(size=a.shape)
    w = rng.normal(size=(fan_in, channels)) * 20
    assert np.array_equal(_descend(w, a, b, 6), _descend_reference(w, a, b, 6))
