"""What a model file's config may hold before Keras sees any of it: the MobileNet family's layer
types and activations, Keras 3 graph operations and tf-keras TFOpLambdas that have an equivalent
layer; no Lambda layer or custom object unless the caller trusts the file. Checked on the JSON,
so nothing from the file is deserialized or run to find out."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from ..errors import ModelLoadError, first_line
from .declared import check_declared_size
from .flatten import INFERENCE_IDENTITY
from .keras2_config import MODEL_CLASSES, to_keras3
from .operations import KNOWN_OPERATIONS, is_operation, translated

# Layer classes the pipeline (folding, converters, cost model) knows how to handle.
SUPPORTED_LAYERS = frozenset(
    {
        "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "BatchNormalization",
        "ReLU", "LeakyReLU", "Softmax", "Activation", "ZeroPadding2D", "MaxPooling2D",
        "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Add",
        "Multiply", "Concatenate", "Dropout", "Flatten", "Reshape", "Dense", "Rescaling",
        "Normalization",
    }
) | INFERENCE_IDENTITY  # data augmentation: dropped when the model is loaded
SUPPORTED_ACTIVATIONS = frozenset(
    {"linear", "relu", "relu6", "softmax", "sigmoid", "hard_sigmoid", "swish", "silu",
     "hard_swish", "hard_silu", "tanh", "elu", "gelu"}
)
CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})
# TensorFlow Model Optimization's wrappers: .h5 files unwrap them first (qat.py), other formats stop here
QUANTIZATION_AWARE = frozenset({"QuantizeWrapperV2", "QuantizeWrapper", "QuantizeLayer"})



def checked_keras2_config(config, path: Path, trust: bool = False) -> tuple[dict, dict[str, str]]:
    """A Keras 2 model config checked (allowlist, budgets) and translated for Keras 3, with the
    layers it renamed; everything before Keras sees it, with nothing built (what the fuzz target
    for model configs runs)."""
    with parsing(path):
        check_config(config, path, trust)
        config, renamed = to_keras3(config)
        check_declared_size(config, path)
    return config, renamed


@contextlib.contextmanager
def parsing(path: Path) -> Iterator[None]:
    """The boundary around code that walks a file's config: JSON of an unexpected shape (a list
    where an object belongs, a string where a number does) is the file's fault, not a bug, and
    becomes one line."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: the model config has an unexpected structure ({type(exc).__name__}: "
                             f"{first_line(exc)}); the file is damaged or was not written by Keras") from None


def check_config(config: dict, path: Path, trust: bool) -> None:
    """Refuse a model config unless it is a Functional or Sequential model whose every layer is
    on the allowlist (no code, no custom objects without ``trust``)."""
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: model config is not a JSON object; the file is corrupt")
    class_name = config.get("class_name")
    if class_name not in MODEL_CLASSES:
        raise ModelLoadError(
            f"{path}: top-level object is a '{class_name}', expected a Functional or "
            "Sequential Keras model"
        )
    inner = config.get("config")
    if class_name == "Sequential" and isinstance(inner, list):  # Keras 2.2: the layer list itself
        config["config"] = inner = {"name": "sequential", "layers": inner}
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ModelLoadError(f"{path}: model config has no layer list; the file is corrupt")
    for layer in layers:
        _check_layer(layer, path, trust)


def _check_layer(layer: dict, path: Path, trust: bool) -> None:
    if not isinstance(layer, dict) or not isinstance(layer.get("config", {}) or {}, dict):
        raise ModelLoadError(f"{path}: a layer of the model config is not a JSON object; the file is corrupt")
    kind = layer.get("class_name")
    cfg = layer.get("config", {}) or {}
    name = cfg.get("name") or layer.get("name") or "?"
    if translated(layer) is not None:  # a TFOpLambda x/127.5, relu6(x) etc.: becomes its layer
        return
    if is_operation(layer):  # a Keras 3 operation of the graph (x + 3): becomes its layer
        if kind in KNOWN_OPERATIONS:
            return
        raise ModelLoadError(
            f"{path}: '{name}' is the operation {layer.get('module')}.{kind}, which has no equivalent layer; "
            f"supported operations: {', '.join(sorted(KNOWN_OPERATIONS))}. Rebuild the model with Keras layers"
        )
    if kind in MODEL_CLASSES:  # a nested model (a base inside a fine-tuned classifier): check its layers
        for inner in cfg.get("layers") or []:
            _check_layer(inner, path, trust)
        return
    if kind in QUANTIZATION_AWARE:
        raise ModelLoadError(
            f"{path}: layer '{name}' is a {kind} of quantization-aware training, read from .h5 files only; "
            "save the model with tf-keras as model.save('model.h5') and quantize that")
    if kind in CODE_LAYERS or _has_custom_object(cfg):
        if trust:
            return
        what = "a Lambda layer" if kind in CODE_LAYERS else "a custom object"
        raise ModelLoadError(
            f"{path}: layer '{name}' is {what}, which would run code stored in the file; "
            "refused. Replace it with built-in layers, or pass --trust-model-code if you "
            "wrote or vetted this file"
        )
    if kind not in SUPPORTED_LAYERS:
        if trust and layer.get("module") not in (None, "keras.layers"):
            return
        raise ModelLoadError(
            f"{path}: layer '{name}' has unsupported type {kind}; supported: "
            f"{', '.join(sorted(SUPPORTED_LAYERS))}"
        )
    activation = cfg.get("activation")
    if isinstance(activation, str) and activation not in SUPPORTED_ACTIVATIONS:
        raise ModelLoadError(
            f"{path}: layer '{name}' uses unsupported activation '{activation}'; "
            f"supported: {', '.join(sorted(SUPPORTED_ACTIVATIONS))}"
        )


def _has_custom_object(value: Any) -> bool:
    """True when a config holds a serialized Python function or a class from outside Keras."""
    if isinstance(value, dict):
        if value.get("class_name") == "__lambda__":
            return True
        module = value.get("module")
        if isinstance(module, str) and module and not module.startswith(("keras", "builtins")):
            return True
        return any(_has_custom_object(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_custom_object(v) for v in value)
    return False
