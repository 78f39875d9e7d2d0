"""The layer graph's forward pass, a layer at a time (refinement's float side)."""

import numpy as np


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
