"""Nested models become one flat graph of layers, without the layers that do nothing at inference.

Fine-tuned MobileNets are usually saved nested: a ``keras.applications`` base called as one
layer inside the classifier (``x = base(x, training=False)``). Folding, refinement and the
per-layer reports work on layers, so every nested model is inlined: its layers are re-created
from their configs, called on the outer tensors and given the same weights. The function is
unchanged; the names are the inner layers' own. Data augmentation layers (random flips,
rotations, zooms...) are the identity at inference and are left out. Operations of a Keras 3
graph that are not layers (MobileNetV3's ``x + 3``) become the layers that compute them
(``operations.as_layer``).
"""

from __future__ import annotations

from ..errors import ModelLoadError
from .operations import as_layer

INFERENCE_IDENTITY = frozenset({"RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                                "RandomContrast", "RandomBrightness"})


def flatten(model):
    """``model`` itself when nothing is nested or left out, else a flat Functional copy with
    the same weights."""
    import keras

    if not any(isinstance(op, keras.Model) or type(op).__name__ in INFERENCE_IDENTITY
               or not isinstance(op, keras.layers.Layer) for op in model.operations):
        return model
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    outputs = _call(model, inputs)
    try:
        return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)
    except ValueError as exc:  # e.g. an outer and an inner layer with the same name
        raise ModelLoadError(f"model '{model.name}' has a nested model that cannot be inlined ({exc}); "
                             "rebuild it as one flat Functional model with unique layer names") from None


def _call(model, inputs: list):
    import keras

    if isinstance(model, keras.Sequential):
        x = inputs[0]
        for layer in model.layers:
            x = _operation(layer)(x)
        return x
    return model._run_through_graph(inputs, operation_fn=_operation)


def _operation(layer):
    """What runs in place of ``layer``: a nested model's own layers, or a fresh copy of ``layer``
    (a fresh layer has this graph's node only, as every later stage expects)."""
    import keras

    if isinstance(layer, keras.Model):
        return lambda *args, **kwargs: _call(layer, list(args))
    if not isinstance(layer, keras.layers.Layer):  # an operation of the graph: its equivalent layer
        return as_layer(layer)
    if type(layer).__name__ in INFERENCE_IDENTITY:
        return lambda *args, **kwargs: args[0]
    copy = type(layer).from_config(layer.get_config())

    def call(*args, **kwargs):
        outputs = copy(*args, **kwargs)
        copy.set_weights(layer.get_weights())
        return outputs

    return call
