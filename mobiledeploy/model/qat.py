"""Models trained with quantization-aware training: TensorFlow Model Optimization's quantize
wrappers, as tf-keras saves them in .h5 files.

Such a file holds the float model inside wrappers (``QuantizeWrapperV2``: the layer's own config
and weights, plus the ranges training learned; ``QuantizeLayer``: the ranges of the model's
input). Reading it runs nothing: the config is JSON, so each wrapper becomes the layer it wraps,
under the wrapper's name (the graph's links name the wrappers), the input quantizer an identity,
and the learned ranges are read off the weights by their names. Only the wrapping configs the
library ships (``QUANTIZE_CONFIGS``) are accepted: another one is a custom object. The pipeline
then quantizes with those ranges instead of calibrated ones and leaves the trained weights as they
are (no refinement).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError

WRAPPERS = frozenset({"QuantizeWrapperV2", "QuantizeWrapper"})
INPUT_QUANTIZER = "QuantizeLayer"
QUANTIZE_CONFIGS = frozenset({
    "Default8BitQuantizeConfig", "Default8BitConvQuantizeConfig", "Default8BitOutputQuantizeConfig",
    "NoOpQuantizeConfig", "Default8BitActivationQuantizeConfig",
})
# the names of a wrapper's learned ranges of its output: after its activation, or of its output
OUTPUT_RANGES = (("post_activation_min", "post_activation_max"), ("output_min", "output_max"))
INPUT_RANGE = ("quantize_layer_min", "quantize_layer_max")


@dataclass(frozen=True)
class LearnedRanges:
    """What quantization-aware training learned: each layer's output range and the input's."""

    layers: dict[str, tuple[float, float]]
    input: tuple[float, float] | None

    def to_dict(self) -> dict:
        return {"input_range": list(self.input) if self.input else None,
                "layers": {name: list(r) for name, r in sorted(self.layers.items())}}


def is_quantization_aware(config: dict) -> bool:
    """Whether a Keras 2 model config holds quantize wrappers (by their class names)."""
    layers = config.get("config", {}).get("layers") if isinstance(config.get("config"), dict) else None
    return isinstance(layers, list) and any(
        isinstance(layer, dict) and layer.get("class_name") in WRAPPERS | {INPUT_QUANTIZER} for layer in layers)


def unwrap(config: dict, path: Path) -> dict:
    """The config with each wrapper replaced by the layer it wraps (under the wrapper's name) and
    the input quantizer by an identity; a malformed or unknown wrapper is one clear error."""
    layers = []
    for layer in config["config"]["layers"]:
        kind = layer.get("class_name") if isinstance(layer, dict) else None
        if kind not in WRAPPERS | {INPUT_QUANTIZER}:
            layers.append(layer)
            continue
        try:
            cfg = layer["config"]
            name = cfg["name"]
            if kind == INPUT_QUANTIZER:
                inner = {"class_name": "Activation", "config": {"activation": "linear", "dtype": cfg.get("dtype", "float32")}}
            else:
                quantize_config = cfg["quantize_config"]["class_name"]
                if quantize_config not in QUANTIZE_CONFIGS:
                    raise ModelLoadError(
                        f"{path}: layer '{name}' is wrapped with the quantize config {quantize_config!r}, which is not "
                        f"one TensorFlow Model Optimization ships ({', '.join(sorted(QUANTIZE_CONFIGS))}); a custom "
                        "config is code: refused")
                inner = cfg["layer"]
            inner_config = {**inner["config"], "name": name}
            if "activation" in inner_config:
                inner_config["activation"] = _activation(inner_config["activation"], name, path)
            layers.append({**{k: v for k, v in layer.items() if k not in ("class_name", "config")},
                           "class_name": inner["class_name"], "config": inner_config})
        except (KeyError, TypeError) as exc:
            raise ModelLoadError(f"{path}: a quantize wrapper of the model config is malformed (no {exc}); "
                                 "the file is corrupt: re-save the model") from None
    return {**config, "config": {**config["config"], "layers": layers}}


def layer_weights(weights: dict[str, list]) -> dict[str, list]:
    """The wrapped layers' own weights: a wrapper saves them under the wrapped layer's name
    ('quant_conv2d/conv2d/kernel:0'), its quantizers' variables under its own
    ('quant_conv2d/quant_conv2d/kernel_min:0')."""
    return {layer: [(name, array) for name, array in saved if name.split("/")[-2:-1] != [layer]]
            for layer, saved in weights.items()}


def _activation(value, layer: str, path: Path):
    """A wrapped layer's activation without its training-time quantizer: the activation it wraps
    (NoOpActivation: none)."""
    if not (isinstance(value, dict) and value.get("class_name") == "QuantizeAwareActivation"):
        return value
    inner = (value.get("config") or {}).get("activation")
    if isinstance(inner, dict) and inner.get("class_name") == "NoOpActivation":
        return "linear"
    if isinstance(inner, str):
        return inner
    raise ModelLoadError(f"{path}: layer '{layer}' wraps the activation {inner!r}; expected a named activation: "
                         "the file is corrupt or was made by another library")


def learned_ranges(weights: dict[str, list], path: Path) -> LearnedRanges:
    """The output range each wrapper learned and the input quantizer's, from the weights saved
    under each layer's name ([(weight name, array)])."""
    import numpy as np

    layers: dict[str, tuple[float, float]] = {}
    source = None
    for layer, saved in weights.items():
        values = {name.rsplit("/", 1)[-1].split(":", 1)[0]: array for name, array in saved}
        for low, high in (*OUTPUT_RANGES, INPUT_RANGE):
            if low in values and high in values:
                pair = (float(np.asarray(values[low]).reshape(-1)[0]), float(np.asarray(values[high]).reshape(-1)[0]))
                if not all(np.isfinite(pair)) or pair[0] > pair[1]:
                    raise ModelLoadError(f"{path}: layer '{layer}' learned the range {pair}; expected finite "
                                         "numbers, low <= high: the file is corrupt")
                if (low, high) == INPUT_RANGE:
                    source = pair
                else:
                    layers[layer] = pair
                break
    return LearnedRanges(layers, source)
