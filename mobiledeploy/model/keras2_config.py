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
  ``keras.applications.*.preprocess_input`` leaves in a fine-tuned model, and MobileNetV3's
  hard-swish) become the equivalent Rescaling layer, and those applying relu, relu6, sigmoid or
  silu the equivalent activation layer (``operations``). They name a TensorFlow function rather
  than carry code; any other TFOpLambda is still refused by the loader;
- layer names with '/' (tf-keras' MobileNetV3: 'Conv/BatchNorm'), which Keras 3 refuses, get '_';
- and, in .h5 files Keras 3 wrote, the arithmetic operations that lost their module on the way
  (``x + 3`` saved as a layer Add with a number argument) become the layers that compute them.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .flatten import INFERENCE_IDENTITY
from .operations import call_entries, legacy_h5_operations, translated

MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
def to_keras3(config: dict) -> tuple[dict, dict[str, str]]:
    """The config in Keras 3's terms, and the layers it renamed (Keras 2 name -> new name)."""
    config = _plain(config)
    renamed = _legal_names(config["config"])
    _translate(config["config"]["layers"], config["config"])
    return config, renamed


def _legal_names(model: dict) -> dict[str, str]:
    """Keras 2 allowed '/' in layer names (tf-keras' MobileNetV3 has 'Conv/BatchNorm'); Keras 3
    does not. Such layers get '_' instead, unique in the model; every reference follows."""
    layers = model.get("layers") or []
    taken = {str(layer.get("config", {}).get("name")) for layer in layers}
    renamed: dict[str, str] = {}
    for layer in layers:
        cfg = layer.get("config", {})
        name = cfg.get("name")
        if isinstance(name, str) and "/" in name:
            new = name.replace("/", "_")
            while new in taken:
                new += "_"
            taken.add(new)
            renamed[name] = cfg["name"] = new
            if "name" in layer:
                layer["name"] = new
        if layer.get("class_name") in MODEL_CLASSES:
            renamed.update(_legal_names(cfg))
    if renamed:
        _rename_references(model, renamed)
    return renamed


def _rename_references(value: Any, renamed: dict[str, str]) -> None:
    """Every [layer, node, tensor(, kwargs)] reference to a renamed layer, in place."""
    if isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and value[0] in renamed and isinstance(value[1], int):
            value[0] = renamed[value[0]]
        for item in value:
            _rename_references(item, renamed)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("inbound_nodes", "input_layers", "output_layers") or isinstance(item, (list, dict)):
                _rename_references(item, renamed)


def _translate(layers: list, model: dict) -> None:
    nested = {layer.get("config", {}).get("name") for layer in layers if layer.get("class_name") in MODEL_CLASSES}
    calls = [node for layer in layers for node in layer.get("inbound_nodes") or [] if isinstance(node, list)]
    for entry in [e for node in calls for e in call_entries(node)] + list(model.get("output_layers") or []):
        if isinstance(entry, list) and len(entry) >= 2 and entry[0] in nested and isinstance(entry[1], int) \
                and entry[1] >= 1:
            entry[1] -= 1
    legacy_h5_operations(layers)
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
        elif (equivalent := translated(layer)) is not None:  # a known TFOpLambda: its layer
            source = call_entries(layer["inbound_nodes"][0])[0]
            layer["inbound_nodes"] = [[[source[0], source[1], source[2], {}]]]
            layer.update(equivalent, module="keras.layers")


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
