"""The layer graph's forward pass, a layer at a time (refinement's float side)."""

import numpy as np
import pytest


def test_layer_outputs_are_the_models_own_intermediate_outputs(tiny_model):
    """Every layer's output, run a layer ahead in a thread, is what the model computes for that
    layer; the last one is the model's output; the input layer's is the images themselves."""
    import keras

    from mobiledeploy.model.graph import layer_graph, layer_outputs

    images = np.random.default_rng(3).normal(size=(10, *tiny_model.inputs[0].shape[1:])).astype(np.float32)
    outputs = list(layer_outputs(tiny_model, images, chunk=4))
    assert [name for name, _ in outputs] == list(layer_graph(tiny_model))
    assert outputs[0][1] is images
    probe = keras.Model(tiny_model.inputs[0], [tiny_model.get_layer(name).output for name, _ in outputs[1:]])
    for (name, value), expected in zip(outputs[1:], probe(images, training=False)):
        np.testing.assert_allclose(value, np.asarray(expected), rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(outputs[-1][1], np.asarray(tiny_model(images, training=False)), rtol=1e-5, atol=1e-6)


def test_layer_outputs_resume_from_the_outputs_the_rest_still_reads(tiny_model):
    """From the k-th layer on, given the outputs of the earlier layers that later ones read (the
    tiny model's residual block reads one from before the separable conv), the same outputs."""
    from mobiledeploy.model.graph import layer_graph, layer_outputs, uses_after

    images = np.random.default_rng(4).normal(size=(6, *tiny_model.inputs[0].shape[1:])).astype(np.float32)
    whole = list(layer_outputs(tiny_model, images, chunk=4))
    order = list(layer_graph(tiny_model).items())
    start = [name for name, _ in order].index("sep")
    live = {name: value for (name, value) in whole[:start] if uses_after(order, start)[name]}
    assert set(live) == {"pw_relu"}  # read by the separable conv and by the residual Add
    resumed = list(layer_outputs(tiny_model, images, 4, start, live))
    assert [name for name, _ in resumed] == [name for name, _ in whole[start:]]
    for (name, value), (_, expected) in zip(resumed, whole[start:]):
        assert np.array_equal(value, expected), name


def test_relus_and_zero_padding_run_in_numpy_give_the_layers_values():
    """ReLU, ReLU6 (both spellings) and zero padding are computed by numpy in run_layer, not by the
    layer: the values must be the layer's own, value for value (a -0.0 included); a leaky ReLU still
    runs as a layer."""
    import keras

    from mobiledeploy.model.graph import _in_numpy, run_layer

    x = (np.random.default_rng(0).normal(size=(5, 6, 7, 3)) * 5).astype(np.float32)
    x[0, 0, 0] = [-0.0, 6.0, 1e30]
    layers = [keras.layers.ReLU(), keras.layers.ReLU(max_value=6.0), keras.layers.Activation("relu6"),
              keras.layers.Activation("relu"), keras.layers.ZeroPadding2D(((1, 2), (0, 3))),
              keras.layers.ZeroPadding2D(1)]
    for layer in layers:
        assert _in_numpy(layer, [x]) is not None
        expected = np.asarray(layer(x), np.float32)
        found = run_layer(layer, [x], chunk=2)
        assert found.shape == expected.shape and np.array_equal(found, expected), layer.name
    assert _in_numpy(keras.layers.ReLU(negative_slope=0.1), [x]) is None


@pytest.mark.parametrize("whole", [True, False])
def test_weighted_layers_read_aligned_arrays_where_they_lie_with_the_values_of_a_copy(monkeypatch, whole):
    """run_layer lends a weighted layer an aligned, writable float32 array without a copy
    (DLPack), and hands back the output of one call on all the images where it fits
    WHOLE_CALL_BYTES (else a chunk at a time, copied): the layer's values on a copy either way, a
    writable array of its own, the input left as it was; anything TensorFlow cannot take as it is
    (read-only, unaligned, strided) is copied as before."""
    import keras

    from mobiledeploy.model import graph
    from mobiledeploy.model.graph import ALIGNMENT, _lent, empty_aligned, run_layer

    if not whole:
        monkeypatch.setattr(graph, "WHOLE_CALL_BYTES", 0)
    rng = np.random.default_rng(1)
    x = empty_aligned((6, 8, 8, 16))
    x[...] = rng.normal(size=x.shape)
    before = x.copy()
    assert x.ctypes.data % ALIGNMENT == 0
    layers = [keras.layers.Conv2D(4, 3, padding="same"), keras.layers.DepthwiseConv2D(3, strides=2),
              keras.layers.Dense(5)]
    for layer in layers:
        expected = np.asarray(layer(before), np.float32)
        calls, call = [], layer.call
        layer.call = lambda *args, **kwargs: (calls.append(len(args[0])), call(*args, **kwargs))[1]
        found = run_layer(layer, [x], chunk=4)  # whole, or an aligned chunk of 4 images, then one of 2
        assert calls == ([6] if whole else [4, 2])
        assert np.array_equal(found, expected) and found.ctypes.data % ALIGNMENT == 0, layer.name
        found += 1.0  # the refinement rounds and corrects it in place
        assert np.array_equal(found, expected + 1.0) and np.array_equal(x, before)
    lent = _lent(x)
    x[0, 0, 0, 0] = 123.0  # the tensor is the array's memory
    assert not isinstance(lent, np.ndarray) and float(lent[0, 0, 0, 0]) == 123.0
    read_only = before.copy()
    read_only.flags.writeable = False
    unaligned = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)
    assert unaligned.ctypes.data % ALIGNMENT != 0
    for other in (read_only, unaligned, x[:, ::2]):
        assert _lent(other) is other


def _relu_fork_model():
    """conv_a -> relu_a, whose input the Add reads too; conv_b -> relu_b, read by it alone."""
    import keras

    keras.utils.set_random_seed(5)
    x = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    relu_a = keras.layers.ReLU(name="relu_a")(a)
    both = keras.layers.Add(name="add")([a, relu_a])
    b = keras.layers.Conv2D(4, 1, name="conv_b")(both)
    out = keras.layers.ReLU(6.0, name="relu_b")(b)
    return keras.Model(x, out)


@pytest.mark.parametrize("allowed", [True, False])
def test_a_relu_overwrites_its_input_only_where_it_alone_reads_it_and_the_caller_is_done(allowed):
    """``forward(in_place=...)``: a plain ReLU whose input no other layer reads asks the caller
    (when its output is taken) whether it may write its output into that input's array, and does
    so if allowed; a ReLU whose input another layer reads too never asks. The values are those of
    ``layer_outputs`` either way."""
    from mobiledeploy.model.graph import forward, layer_outputs

    model = _relu_fork_model()
    images = np.random.default_rng(6).normal(size=(5, 6, 6, 3)).astype(np.float32)
    expected = dict(layer_outputs(model, images, chunk=2))
    asked: list[str] = []
    taken, values = {}, {}
    for name, take in forward(model, images, 2, in_place=lambda parent: asked.append(parent) or allowed):
        taken[name] = take()
        values[name] = taken[name].copy()  # before a later ReLU may overwrite it
    assert asked == ["conv_b"]
    assert (taken["relu_b"] is taken["conv_b"]) is allowed
    assert taken["relu_a"] is not taken["conv_a"]
    for name, value in expected.items():
        assert np.array_equal(values[name], value), name
