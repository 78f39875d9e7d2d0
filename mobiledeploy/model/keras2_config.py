"""Keras 2 model configs translated for Keras 3, which rejects some of them as saved.

Only the config (JSON) changes, never the weights, and only where the meaning is the same:
- tf-keras' {"class_name": "__tuple__", "items": [...]} become plain lists;
- mixed-precision dtype policies ({"class_name": "Policy", "config": {"name": "mixed_float16"}})
  become "float32": the variables of a mixed-precision model are float32 already, only its
  compute ran in float16, and float32 compute is the exact version of the same function;
- BatchNormalization's ``axis`` saved as a one-item list becomes that int (Keras 3 wants an int);
- a nested model's single input and output, saved as one-item lists, become the item: Keras 3
  would otherwise pass a one-item list to the next layer (a Dense after a nested base in a
  Sequential model then fails to build);
- DepthwiseConv2D loses its ``groups`` key (always 1 in Keras 2; Keras 3 has no such key),
  data augmentation layers their ``rng_type``;
- a nested model's first call is node 1 in Keras 2 (its construction was node 0), node 0 in
  Keras 3;
- TFOpLambda layers that divide, multiply, add or subtract a constant number (what
  ``keras.applications.*.preprocess_input`` leaves in a fine-tuned model) become the
  equivalent Rescaling layer. They name a TensorFlow function rather than carry code; any
  other TFOpLambda is still refused by the loader.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .flatten import INFERENCE_IDENTITY

MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
_SCALAR_OPS = {  # function -> (scale, offset) of Rescaling for the constant y
    "math.truediv": lambda y: (1.0 / y, 0.0),
    "math.divide": lambda y: (1.0 / y, 0.0),
    "math.multiply": lambda y: (y, 0.0),
    "math.add": lambda y: (1.0, y),
    "__operators__.add": lambda y: (1.0, y),
    "math.subtract": lambda y: (1.0, -y),
}


def scalar_op(layer: dict) -> tuple[float, float] | None:
    """(scale, offset) when ``layer`` is a TFOpLambda applying x/y, x*y, x+y or x-y with a
    constant number y to one tensor, else None."""
    if layer.get("class_name") != "TFOpLambda":
        return None
    function = (layer.get("config") or {}).get("function")
    rule = _SCALAR_OPS.get(function)
    nodes = layer.get("inbound_nodes") or []
    entries = _entries(nodes[0]) if len(nodes) == 1 and isinstance(nodes[0], list) else []
    if rule is None or len(entries) != 1:
        return None
    entry = entries[0]
    kwargs = entry[3] if isinstance(entry, list) and len(entry) == 4 and isinstance(entry[3], dict) else None
    y = None if kwargs is None else kwargs.get("y")
    if not isinstance(y, (int, float)) or isinstance(y, bool) or set(kwargs) - {"y", "name"} \
            or (y == 0 and "div" in function):
        return None
    return rule(float(y))


def to_keras3(config: dict) -> dict:
    config = _plain(config)
    _translate(config["config"]["layers"], config["config"])
    return config


def _translate(layers: list, model: dict) -> None:
    nested = {layer.get("config", {}).get("name") for layer in layers if layer.get("class_name") in MODEL_CLASSES}
    calls = [node for layer in layers for node in layer.get("inbound_nodes") or [] if isinstance(node, list)]
    for entry in [e for node in calls for e in _entries(node)] + list(model.get("output_layers") or []):
        if isinstance(entry, list) and len(entry) >= 2 and entry[0] in nested and isinstance(entry[1], int) \
                and entry[1] >= 1:
            entry[1] -= 1
    for layer in layers:
        cfg = layer.get("config", {})
        kind = layer.get("class_name")
        if kind in MODEL_CLASSES:
            _translate(cfg.get("layers") or [], cfg)
            for key in ("input_layers", "output_layers"):
                ends = cfg.get(key)
                if isinstance(ends, list) and len(ends) == 1 and isinstance(ends[0], list):
                    cfg[key] = ends[0]
        elif kind == "DepthwiseConv2D":
            if cfg.get("groups", 1) != 1:
                raise ModelLoadError(
                    f"layer '{cfg.get('name')}': DepthwiseConv2D with groups={cfg['groups']} "
                    "has no Keras 3 equivalent"
                )
            cfg.pop("groups", None)
        elif kind == "BatchNormalization" and isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1:
            cfg["axis"] = cfg["axis"][0]
        elif kind in INFERENCE_IDENTITY:  # data augmentation, dropped after loading
            cfg.pop("rng_type", None)
        elif (rescaling := scalar_op(layer)) is not None:
            scale, offset = rescaling
            source = _entries(layer["inbound_nodes"][0])[0]
            layer["inbound_nodes"] = [[[source[0], source[1], source[2], {}]]]
            layer["class_name"] = "Rescaling"
            layer["module"] = "keras.layers"
            layer["config"] = {"name": cfg.get("name"), "dtype": cfg.get("dtype", "float32"),
                               "trainable": False, "scale": scale, "offset": offset}


def _entries(node: list) -> list:
    """The [layer, node index, tensor index, kwargs] entries of one Keras 2 inbound node; op
    layers (TFOpLambda) save a single entry without the enclosing list."""
    return [node] if node and isinstance(node[0], str) else [e for e in node if isinstance(e, list)]


def _plain(value: Any) -> Any:
    """A copy where tf-keras' {"class_name": "__tuple__", "items": [...]} become plain lists and
    its dtype policies their float32 (or plain dtype) name."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and "items" in value:
            return [_plain(v) for v in value["items"]]
        if value.get("class_name") == "Policy" and isinstance(value.get("config"), dict):
            name = str(value["config"].get("name", "float32"))
            return "float32" if name.startswith("mixed_") else name
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
