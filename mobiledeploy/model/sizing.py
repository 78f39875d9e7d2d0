"""A model saved without a fixed input size, given one.

keras.applications bases built with ``input_shape=(None, None, 3)`` run at any size; an int8 file
has one. The size to deploy at comes from the user (``--input-size``); the model is rebuilt on a
fixed-size input with the same layers and weights.
"""

from __future__ import annotations

from ..errors import ModelLoadError, first_line


def fixed_size(model, input_size: tuple[int, int] | None):
    """The model with a fixed input height and width: its own, or ``input_size`` where it has
    none (the same layers and weights, rebuilt on a fixed-size input)."""
    import keras

    shape = tuple(model.inputs[0].shape)
    if input_size is None:
        if None in shape[1:3]:
            raise ModelLoadError(
                f"model input shape is {shape}: its height and width are not fixed; choose the size "
                "to deploy at with --input-size (e.g. 224, or 192x160 for height x width)"
            )
        return model
    if None not in shape[1:3]:
        if tuple(shape[1:3]) != tuple(input_size):
            raise ModelLoadError(
                f"--input-size {input_size[0]}x{input_size[1]} does not match the model's fixed input "
                f"{shape[1]}x{shape[2]}; drop --input-size"
            )
        return model
    config = model.get_config()
    first = next(layer for layer in config["layers"] if layer["class_name"] == "InputLayer")
    first["config"]["batch_shape"] = [None, *input_size, shape[3]]
    try:
        sized = keras.Model.from_config(config)
        sized.set_weights(model.get_weights())
    except Exception as exc:  # a layer that needs another size (a Reshape, a too small input)
        raise ModelLoadError(
            f"the model does not run at --input-size {input_size[0]}x{input_size[1]} ({first_line(exc)}); "
            "pick the size it was trained at"
        ) from None
    return sized
