import json
import zipfile

import numpy as np
import pytest

from conftest import randomize_batchnorm
from mobiledeploy.errors import ModelLoadError
from mobiledeploy.model.loading import load_model


def _x(model, n=2, seed=0):
    shape = (n, *model.inputs[0].shape[1:])
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


def _same_outputs(a, b, x):
    np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), atol=1e-5)


@pytest.mark.parametrize("version,alpha,size,suffix", [
    ("v1", 0.25, 128, ".h5"), ("v1", 0.5, 96, ".keras"), ("v1", 1.0, 32, ".h5"),
    ("v2", 0.25, 64, ".keras"), ("v2", 0.5, 96, ".h5"), ("v2", 1.0, 32, ".keras"),
])
def test_keras3_applications_roundtrip(tmp_path, version, alpha, size, suffix):
    import keras

    ctor = keras.applications.MobileNet if version == "v1" else keras.applications.MobileNetV2
    model = ctor(alpha=alpha, input_shape=(size, size, 3), weights=None, classes=7)
    randomize_batchnorm(model, 4)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = load_model(path)
    assert loaded.source_format == suffix[1:]
    assert loaded.model.count_params() == model.count_params()
    _same_outputs(model, loaded.model, _x(model))


def test_hand_built_functional_model(tiny_model_file, tiny_model):
    loaded = load_model(tiny_model_file)
    _same_outputs(tiny_model, loaded.model, _x(tiny_model))


def test_sequential_model_becomes_functional(tmp_path):
    import keras

    model = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(4, 3, use_bias=False), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    path = tmp_path / "seq.h5"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded.model, keras.Model) and not isinstance(loaded.model, keras.Sequential)
    _same_outputs(model, loaded.model, _x(model) * 255)


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory):
    """Real Keras 2 files, written by the tf-keras package (what most users have)."""
    tf_keras = pytest.importorskip("tf_keras")
    folder = tmp_path_factory.mktemp("keras2")
    model = tf_keras.applications.MobileNet(alpha=0.25, input_shape=(64, 64, 3), weights=None, classes=5)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape) for w in layer.get_weights()])
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    expected = model.predict(x, verbose=0)
    model.save(folder / "k2.h5")
    model.save(folder / "k2_savedmodel", save_format="tf")
    v2 = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(48, 48, 3), weights=None, classes=4)
    v2_x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    v2_expected = v2.predict(v2_x, verbose=0)
    v2.save(folder / "k2_v2.h5")
    return folder, x, expected, v2_x, v2_expected


def test_keras2_h5_loads_although_keras3_load_model_fails(keras2_files):
    import keras

    folder, x, expected, _, _ = keras2_files
    with pytest.raises(Exception):
        keras.models.load_model(folder / "k2.h5")  # the bug users hit: DepthwiseConv2D 'groups'
    loaded = load_model(folder / "k2.h5")
    assert loaded.saved_by.startswith("2.") and loaded.source_format == "h5"
    np.testing.assert_allclose(np.asarray(loaded.model(x)), expected, atol=1e-5)


def test_keras2_mobilenet_v2_h5(keras2_files):
    folder, _, _, x, expected = keras2_files
    loaded = load_model(folder / "k2_v2.h5")
    np.testing.assert_allclose(np.asarray(loaded.model(x)), expected, atol=1e-5)


def test_keras2_savedmodel_directory(keras2_files):
    folder, x, expected, _, _ = keras2_files
    loaded = load_model(folder / "k2_savedmodel")
    assert loaded.source_format == "savedmodel"
    np.testing.assert_allclose(np.asarray(loaded.model(x)), expected, atol=1e-5)


def _lambda_model(marker):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0 + (open(marker, "w").close() or 0.0), name="evil")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_lambda_layer_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    model = _lambda_model(str(marker))
    marker.unlink()  # building the model called the lambda once
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"lambda{suffix}"
        model.save(path)
        marker.unlink(missing_ok=True)
        with pytest.raises(ModelLoadError, match="layer 'evil' is a Lambda layer.*--trust-model-code"):
            load_model(path)
        assert not marker.exists()


def test_lambda_layer_loads_when_trusted(tmp_path):
    marker = tmp_path / "marker"
    model = _lambda_model(str(marker))
    path = tmp_path / "lambda.keras"
    model.save(path)
    loaded = load_model(path, trust=True)
    assert loaded.trusted and "evil" in [l.name for l in loaded.model.layers]


def test_unsupported_layer_is_named(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Reshape((8, 24))(inputs)
    x = keras.layers.LSTM(4, name="my_lstm")(x)
    path = tmp_path / "lstm.keras"
    keras.Model(inputs, x).save(path)
    with pytest.raises(ModelLoadError, match="layer 'my_lstm' has unsupported type LSTM"):
        load_model(path)


def test_bad_files_give_clear_errors(tmp_path, tiny_model_file):
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError, match="not a readable HDF5 file"):
        load_model(junk)
    junk_keras = tmp_path / "junk.keras"
    junk_keras.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match="not a valid .keras archive"):
        load_model(junk_keras)
    with pytest.raises(ModelLoadError, match="unknown model format '.pt'"):
        (tmp_path / "m.pt").write_bytes(b"x")
        load_model(tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_model(tmp_path)


def test_weights_only_h5_and_broken_config(tmp_path, tiny_model):
    weights = tmp_path / "only.weights.h5"
    tiny_model.save_weights(weights)
    with pytest.raises(ModelLoadError, match="not a full Keras model"):
        load_model(weights)
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("config.json", "{ this is not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(broken)
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Adam", "config": {}}))
    with pytest.raises(ModelLoadError, match="expected a Functional or Sequential Keras model"):
        load_model(other)


def test_two_inputs_are_refused(tmp_path):
    import keras

    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    path = tmp_path / "two.keras"
    keras.Model([a, b], keras.layers.Add()([a, b])).save(path)
    with pytest.raises(ModelLoadError, match="2 inputs"):
        load_model(path)


@pytest.fixture(scope="module")
def nested_files(tmp_path_factory):
    """Fine-tuned classifiers saved the usual way: a MobileNet base called as one layer."""
    import keras

    tf_keras = pytest.importorskip("tf_keras")
    folder = tmp_path_factory.mktemp("nested")
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 1, (2, 48, 48, 3)).astype("float32")
    made = {}
    for api, suffixes in ((tf_keras, ("h5", "savedmodel")), (keras, ("keras", "h5"))):
        base = api.applications.MobileNetV2(alpha=0.35, input_shape=(48, 48, 3), include_top=False, weights=None)
        for layer in base.layers:
            if "BatchNormalization" in type(layer).__name__:
                layer.set_weights([rng.uniform(0.5, 2, w.shape) for w in layer.get_weights()])
        inputs = api.Input((48, 48, 3))
        h = api.layers.Rescaling(2.0, offset=-1.0)(inputs)  # [0, 1] input
        h = api.layers.GlobalAveragePooling2D()(base(h, training=False))
        model = api.Model(inputs, api.layers.Dense(4, activation="softmax")(h))
        expected = np.asarray(model(x, training=False))
        for suffix in suffixes:
            path = folder / f"{'k2' if api is tf_keras else 'k3'}_nested.{suffix}"
            model.save(path, save_format="tf") if suffix == "savedmodel" else model.save(path)
            made[path.name] = (path, expected)
    return made, x


@pytest.mark.parametrize("name", ["k2_nested.h5", "k2_nested.savedmodel", "k3_nested.keras", "k3_nested.h5"])
def test_nested_models_are_inlined_with_their_weights(nested_files, name):
    import keras

    from mobiledeploy.passes.folding import fold_batchnorm

    made, x = nested_files
    path, expected = made[name]
    model = load_model(path).model
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert "Conv1" in [layer.name for layer in model.layers]  # the base's own layers, by name
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-5)
    folded, report = fold_batchnorm(model)
    assert len(report.folded) == 52 and not report.unfolded
    np.testing.assert_allclose(np.asarray(folded(x)), expected, atol=1e-5)


def test_code_inside_a_nested_model_is_still_refused(tmp_path):
    import keras

    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Lambda(lambda t: t * 2.0, name="code")(inner_in), name="inner")
    outer_in = keras.Input((8, 8, 3))
    keras.Model(outer_in, keras.layers.Flatten()(inner(outer_in))).save(tmp_path / "nested_lambda.keras")
    with pytest.raises(ModelLoadError, match="'code' is a Lambda layer"):
        load_model(tmp_path / "nested_lambda.keras")


def test_keras2_transfer_learning_tutorial_model(tmp_path):
    """The shape of TensorFlow's transfer-learning tutorial: augmentation, preprocess_input
    (TFOpLambda x/127.5 - 1) and a nested MobileNetV2. Augmentation is dropped, the scaling
    becomes Rescaling layers, and the outputs are unchanged."""
    import keras

    from mobiledeploy.data.calibration import preprocessing_for

    tf_keras = pytest.importorskip("tf_keras")
    base = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(48, 48, 3), include_top=False, weights=None)
    augment = tf_keras.Sequential([tf_keras.layers.RandomFlip("horizontal"), tf_keras.layers.RandomRotation(0.2)])
    inputs = tf_keras.Input((48, 48, 3))
    h = tf_keras.applications.mobilenet_v2.preprocess_input(augment(inputs))
    h = tf_keras.layers.GlobalAveragePooling2D()(base(h, training=False))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3)(tf_keras.layers.Dropout(0.2)(h)))
    model.save(tmp_path / "tutorial.h5")
    x = np.random.default_rng(2).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    loaded = load_model(tmp_path / "tutorial.h5").model
    kinds = [type(layer).__name__ for layer in loaded.layers]
    assert kinds[:3] == ["InputLayer", "Rescaling", "Rescaling"]
    assert not any(k.startswith("Random") or isinstance(layer, keras.Model) for k, layer in zip(kinds, loaded.layers))
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x, training=False).numpy(), atol=1e-5)
    assert preprocessing_for(loaded).scaling == "raw"  # the model scales its own [0, 255] input


def test_tf_op_lambda_other_than_constant_arithmetic_stays_refused(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    import tensorflow as tf

    inputs = tf_keras.Input((8, 8, 3))
    model = tf_keras.Model(inputs, tf.math.truediv(inputs, inputs + 1.0))  # y is a tensor, not a number
    model.save(tmp_path / "op.h5")
    with pytest.raises(ModelLoadError, match="Lambda layer"):
        load_model(tmp_path / "op.h5")


def test_tf_keras_dot_keras_file_gets_a_clear_error(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    inputs = tf_keras.Input((8, 8, 3))
    tf_keras.Model(inputs, tf_keras.layers.Conv2D(2, 3)(inputs)).save(tmp_path / "k2.keras")
    with pytest.raises(ModelLoadError, match=r"saved by Keras 2\.\d+.*model\.save\('model\.h5'\)"):
        load_model(tmp_path / "k2.keras")


def test_keras2_mixed_precision_model_loads_in_float32(tmp_path):
    """A model trained with tf-keras' mixed_float16 policy saves float32 variables and a Policy
    object per layer, which Keras 3 cannot read; it loads as the float32 model, matching a
    float32 twin with the same weights."""
    tf_keras = pytest.importorskip("tf_keras")

    def build():
        inputs = tf_keras.Input((32, 32, 3))
        base = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), include_top=False,
                                                 weights=None, pooling="avg")
        logits = tf_keras.layers.Dense(3)(base(inputs))
        return tf_keras.Model(inputs, tf_keras.layers.Activation("softmax", dtype="float32")(logits))

    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build()
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(4)
    mixed.set_weights([rng.uniform(0.5, 1.5, w.shape) if w.ndim == 1 else w for w in mixed.get_weights()])
    mixed.save(tmp_path / "mixed.h5")
    twin = build()
    twin.set_weights(mixed.get_weights())
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    loaded = load_model(tmp_path / "mixed.h5").model
    assert {layer.compute_dtype for layer in loaded.layers} == {"float32"}
    np.testing.assert_allclose(np.asarray(loaded(x)), twin(x).numpy(), atol=1e-5)


def test_keras2_sequential_around_a_nested_base(tmp_path):
    """Sequential([Rescaling, MobileNetV2 base, Dense(1, sigmoid)]) saved by tf-keras: the base's
    single output is saved as a one-item list, which Keras 3 passed on as a list to the Dense."""
    tf_keras = pytest.importorskip("tf_keras")
    from mobiledeploy.model.heads import head_of

    base = tf_keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), include_top=False,
                                             weights=None, pooling="avg")
    model = tf_keras.Sequential([tf_keras.Input((32, 32, 3)), tf_keras.layers.Rescaling(1 / 127.5, offset=-1),
                                 base, tf_keras.layers.Dense(1, activation="sigmoid")])
    model.save(tmp_path / "seq.h5")
    x = np.random.default_rng(6).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    loaded = load_model(tmp_path / "seq.h5").model
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x).numpy(), atol=1e-5)
    assert head_of(loaded).kind == "sigmoid"


def test_model_without_a_fixed_input_size_needs_one(tmp_path):
    """keras.applications bases built with input_shape=(None, None, 3) run at any size; an int8
    file has one. load_model asks for it, and rebuilds the same weights at the size given."""
    tf_keras = pytest.importorskip("tf_keras")

    base = tf_keras.applications.MobileNet(alpha=0.25, input_shape=(None, None, 3), include_top=False,
                                           weights=None, pooling="avg")
    model = tf_keras.Model(base.input, tf_keras.layers.Dense(3, activation="softmax")(base.output))
    model.save(tmp_path / "any_size.h5")
    with pytest.raises(ModelLoadError, match=r"\(None, None, None, 3\).*--input-size"):
        load_model(tmp_path / "any_size.h5")
    loaded = load_model(tmp_path / "any_size.h5", input_size=(40, 48)).model
    assert tuple(loaded.inputs[0].shape) == (None, 40, 48, 3)
    x = np.random.default_rng(8).uniform(-1, 1, (2, 40, 48, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x).numpy(), atol=1e-5)
    with pytest.raises(ModelLoadError, match="does not match the model's fixed input 32x32"):
        load_model(_fixed_tiny(tf_keras, tmp_path), input_size=(40, 48))


def _fixed_tiny(tf_keras, folder):
    inputs = tf_keras.Input((32, 32, 3))
    path = folder / "fixed32.h5"
    tf_keras.Model(inputs, tf_keras.layers.Conv2D(2, 3)(inputs)).save(path)
    return path
