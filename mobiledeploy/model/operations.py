"""Known, side-effect-free operations that models carry outside layers, turned into layers.

MobileNetV3's hard-swish is ``x * relu6(x + 3) / 6``: Keras 3 saves ``x + 3`` and ``* (1/6)`` as
operations of the functional graph (``keras.src.ops.numpy.Add``), not layers, and tf-keras saves
them as ``TFOpLambda`` layers (``tf.__operators__.add``, ``tf.math.multiply``). Folding,
refinement and the per-layer reports work on layers, so each becomes the layer that computes the
same thing: arithmetic with a constant number a ``Rescaling``, arithmetic of two tensors an
``Add``/``Subtract``/``Multiply`` layer, an activation function an ``Activation`` or ``ReLU``.
They name a function of Keras or TensorFlow rather than carry code; any other operation is
refused with its name.
"""

from __future__ import annotations

from numbers import Real

from ..errors import ModelLoadError

# Keras 3 operation classes (keras.src.ops.*) and the layers that compute them
ARITHMETIC = frozenset({"Add", "Subtract", "Multiply", "Divide", "TrueDivide"})
ACTIVATIONS = {"Relu": ("ReLU", {}), "Relu6": ("ReLU", {"max_value": 6.0}), "Sigmoid": ("Activation", {"activation": "sigmoid"}),
               "HardSigmoid": ("Activation", {"activation": "hard_sigmoid"}),
               "Silu": ("Activation", {"activation": "silu"}), "HardSilu": ("Activation", {"activation": "hard_silu"})}
KNOWN_OPERATIONS = ARITHMETIC | frozenset(ACTIVATIONS)
# tf-keras TFOpLambda functions with one tensor and a constant number y -> (scale, offset) of Rescaling
_SCALAR_FUNCTIONS = {
    "math.truediv": lambda y: (1.0 / y, 0.0),
    "math.divide": lambda y: (1.0 / y, 0.0),
    "math.multiply": lambda y: (y, 0.0),
    "math.add": lambda y: (1.0, y),
    "__operators__.add": lambda y: (1.0, y),
    "math.subtract": lambda y: (1.0, -y),
}
# tf-keras TFOpLambda activation functions of one tensor -> Keras 3 operation class
_ACTIVATION_FUNCTIONS = {"nn.relu": "Relu", "nn.relu6": "Relu6", "math.sigmoid": "Sigmoid", "nn.silu": "Silu",
                         "nn.swish": "Silu"}


def is_operation(entry: dict) -> bool:
    """Whether a Keras 3 config entry is an operation of the graph rather than a layer."""
    return str(entry.get("module") or "").startswith("keras.src.ops")


def as_layer(operation):
    """What runs in place of a Keras 3 operation node of a loaded model: a call that builds the
    equivalent layer on the node's arguments (``flatten`` rebuilds the graph with it)."""
    import keras

    kind = type(operation).__name__
    name = operation.name

    def call(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, keras.KerasTensor)]
        numbers = [a for a in args if isinstance(a, Real) and not isinstance(a, bool)]
        if kwargs or len(tensors) + len(numbers) != len(args):
            raise _refused(name, kind, "arguments other than tensors and numbers")
        if kind in ACTIVATIONS and len(tensors) == 1 and not numbers:
            layer, config = ACTIVATIONS[kind]
            return getattr(keras.layers, layer)(name=name, **config)(tensors[0])
        if kind in ARITHMETIC and len(tensors) == 2:
            layer = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply"}.get(kind)
            if layer is None:
                raise _refused(name, kind, "a division of two tensors")
            return getattr(keras.layers, layer)(name=name)(list(tensors))
        if kind in ARITHMETIC and len(tensors) == 1 and len(numbers) == 1:
            scale, offset = _rescaling(kind, float(numbers[0]), tensor_first=args[0] is tensors[0], name=name)
            return keras.layers.Rescaling(scale, offset, name=name)(tensors[0])
        raise _refused(name, kind, f"{len(tensors)} tensor(s) and {len(numbers)} number(s)")

    return call


def _rescaling(kind: str, number: float, tensor_first: bool, name: str) -> tuple[float, float]:
    """(scale, offset) of x + c, x - c, c - x, x * c, x / c."""
    if kind == "Add":
        return 1.0, number
    if kind == "Multiply":
        return number, 0.0
    if kind == "Subtract":
        return (1.0, -number) if tensor_first else (-1.0, number)
    if not tensor_first or number == 0:
        raise _refused(name, kind, "a division by a tensor or by zero")
    return 1.0 / number, 0.0


def _refused(name: str, kind: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"operation '{name}' ({kind}) applied to {what} has no equivalent layer; rebuild the "
                          "model with Keras layers (Rescaling, Add, Multiply, Activation) in its place")


def legacy_h5_operations(layers: list) -> None:
    """Keras 3's .h5 files drop an operation's module, so MobileNetV3's ``x + 3`` reads as a layer
    ``Add`` with a number among its arguments, which Keras itself then fails to rebuild. Such
    entries become the layer that computes them (in place): a Rescaling for a tensor and a
    number, an Add/Subtract/Multiply layer (its inputs as one list) for two tensors."""
    for layer in layers:
        kind, nodes = layer.get("class_name"), layer.get("inbound_nodes")
        if kind not in ARITHMETIC or not isinstance(nodes, list) or len(nodes) != 1 or not isinstance(nodes[0], dict):
            continue
        args = nodes[0].get("args")
        if not isinstance(args, list) or len(args) != 2:
            continue
        tensors = [a for a in args if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"]
        numbers = [a for a in args if isinstance(a, Real) and not isinstance(a, bool)]
        name = (layer.get("config") or {}).get("name", layer.get("name"))
        if len(tensors) == 1 and len(numbers) == 1:
            scale, offset = _rescaling(kind, float(numbers[0]), tensor_first=args[0] is tensors[0], name=name)
            layer.update(class_name="Rescaling", config={"name": name, "dtype": "float32", "trainable": False,
                                                         "scale": scale, "offset": offset})
            nodes[0]["args"] = [tensors[0]]
        elif len(tensors) == 2 and kind in ("Add", "Subtract", "Multiply"):
            nodes[0]["args"] = [tensors]


# --- tf-keras TFOpLambda layers (config level) ------------------------------------------


def scalar_op(layer: dict) -> tuple[float, float] | None:
    """(scale, offset) when ``layer`` is a TFOpLambda applying x/y, x*y, x+y or x-y with a
    constant number y to one tensor, else None."""
    if layer.get("class_name") != "TFOpLambda":
        return None
    function = (layer.get("config") or {}).get("function")
    rule = _SCALAR_FUNCTIONS.get(function)
    kwargs = _single_call_kwargs(layer)
    y = None if kwargs is None else kwargs.get("y")
    if rule is None or not isinstance(y, (int, float)) or isinstance(y, bool) or set(kwargs) - {"y", "name"} \
            or (y == 0 and "div" in function):
        return None
    return rule(float(y))


def activation_op(layer: dict) -> str | None:
    """The Keras 3 operation class of a TFOpLambda that applies an activation function (relu,
    relu6, sigmoid, silu) to one tensor, else None."""
    if layer.get("class_name") != "TFOpLambda":
        return None
    kind = _ACTIVATION_FUNCTIONS.get((layer.get("config") or {}).get("function"))
    kwargs = _single_call_kwargs(layer)
    return kind if kind is not None and kwargs is not None and not set(kwargs) - {"name"} else None


def translated(layer: dict) -> dict | None:
    """The layer config a known TFOpLambda becomes (a Rescaling, ReLU or Activation), or None."""
    cfg = layer.get("config") or {}
    base = {"name": cfg.get("name"), "dtype": cfg.get("dtype", "float32"), "trainable": False}
    rescaling = scalar_op(layer)
    if rescaling is not None:
        return {"class_name": "Rescaling", "config": {**base, "scale": rescaling[0], "offset": rescaling[1]}}
    kind = activation_op(layer)
    if kind is not None:
        class_name, config = ACTIVATIONS[kind]
        return {"class_name": class_name, "config": {**base, **config}}
    return None


def _single_call_kwargs(layer: dict) -> dict | None:
    """The keyword arguments of a TFOpLambda called once on one tensor, else None."""
    nodes = layer.get("inbound_nodes") or []
    entries = call_entries(nodes[0]) if len(nodes) == 1 and isinstance(nodes[0], list) else []
    if len(entries) != 1:
        return None
    entry = entries[0]
    return entry[3] if isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], dict) else None


def call_entries(node: list) -> list:
    """The [layer, node index, tensor index, kwargs] entries of one Keras 2 inbound node; op
    layers (TFOpLambda) save a single entry without the enclosing list."""
    return [node] if node and isinstance(node[0], str) else [e for e in node if isinstance(e, list)]
