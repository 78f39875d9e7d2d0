import numpy as np
import pytest

from conftest import randomize_batchnorm
from mobiledeploy.passes.folding import batchnorm_affine, fold_batchnorm, folded_weights, verify_fold


def _outputs(model, x):
    return np.asarray(model(x, training=False), np.float64)


def test_folds_every_batchnorm_and_keeps_outputs(tiny_model):
    folded, report = fold_batchnorm(tiny_model)
    assert not [l for l in folded.layers if type(l).__name__ == "BatchNormalization"]
    assert dict(report.folded) == {"stem_bn": "stem", "dw_bn": "dw", "pw_bn": "pw", "sep_bn": "sep"}
    assert report.unfolded == ()
    x = np.random.default_rng(3).uniform(-1, 1, (8, 24, 24, 3)).astype("float32")
    np.testing.assert_allclose(_outputs(folded, x), _outputs(tiny_model, x), atol=2e-6)
    checked = verify_fold(tiny_model, folded, [x], report)
    assert checked.passed and checked.samples == 8 and checked.max_abs_diff < 2e-6


def test_folded_conv_gets_a_bias(tiny_model):
    folded, _ = fold_batchnorm(tiny_model)
    for name in ("stem", "dw", "sep"):
        assert tiny_model.get_layer(name).use_bias is False
        assert folded.get_layer(name).use_bias is True


def test_folding_math_matches_the_definition():
    """Exact check of W' = W * s and b' = s * (b - mean) + beta for a depthwise multiplier of 2."""
    import keras

    inputs = keras.Input((5, 5, 3))
    conv = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=True)
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    keras.Model(inputs, bn(conv(inputs)))
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(3, 3, 3, 2)), rng.normal(size=6)
    conv.set_weights([kernel, bias])
    gamma, beta, mean, var = rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.5, 2, 6)
    bn.set_weights([gamma, beta, mean, var])
    # the layers store float32: compare against the stored values, in float64
    kernel, bias = (np.asarray(w, np.float64) for w in conv.get_weights())
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + 1e-3)
    new_kernel, new_bias = folded_weights(conv, bn)
    # output channel c * 2 + m of a depthwise conv comes from input channel c, multiplier m
    np.testing.assert_allclose(new_kernel, kernel * scale.reshape(3, 2), rtol=1e-6)
    np.testing.assert_allclose(new_bias, scale * (bias - mean) + beta, rtol=1e-6)
    s, shift = batchnorm_affine(bn)
    np.testing.assert_allclose(s, scale, rtol=1e-12)
    np.testing.assert_allclose(shift, beta - scale * mean, rtol=1e-12)


def test_batchnorm_after_activation_or_shared_output_is_left_alone():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 3, activation="relu", name="conv_act")(inputs)
    a = layers.BatchNormalization(name="bn_after_act")(a)
    b = layers.Conv2D(4, 3, name="conv_shared")(inputs)
    c = layers.BatchNormalization(name="bn_shared")(b)
    out = layers.Add()([a, c, b])
    model = keras.Model(inputs, out)
    randomize_batchnorm(model, 1)
    folded, report = fold_batchnorm(model)
    assert report.folded == ()
    assert any("bn_after_act" in u and "activation" in u for u in report.unfolded)
    assert any("bn_shared" in u and "used elsewhere" in u for u in report.unfolded)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(_outputs(folded, x), _outputs(model, x), atol=1e-5)


@pytest.mark.parametrize("version,alpha,size", [("v1", 0.25, 128), ("v1", 1.0, 32), ("v2", 0.5, 96), ("v2", 1.0, 32)])
def test_keras_applications_mobilenets_fold_exactly(version, alpha, size):
    import keras

    ctor = keras.applications.MobileNet if version == "v1" else keras.applications.MobileNetV2
    model = ctor(alpha=alpha, input_shape=(size, size, 3), weights=None, classes=10)
    randomize_batchnorm(model, 2)
    folded, report = fold_batchnorm(model)
    bns = [l for l in model.layers if type(l).__name__ == "BatchNormalization"]
    assert len(report.folded) == len(bns) and report.unfolded == ()
    x = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    checked = verify_fold(model, folded, [x], report)
    assert checked.passed, checked.to_dict()


def test_verify_fold_detects_a_wrong_fold(tiny_model):
    folded, report = fold_batchnorm(tiny_model)
    layer = folded.get_layer("pw")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 1.01, bias])
    x = np.random.default_rng(3).uniform(-1, 1, (4, 24, 24, 3)).astype("float32")
    assert not verify_fold(tiny_model, folded, [x], report).passed
