"""What a model config declares, counted before Keras builds it: parameters and the largest layer
output per image.

Keras allocates every weight when it builds a layer from its config, before the stored weights
are compared with it: a config with ``Conv2D(filters=4_000_000)`` (or a huge input flattened into a
Dense) takes gigabytes from a file of a few kilobytes. So the shapes are followed through the
config's graph here, in plain arithmetic over the layers the loader accepts, and a model over
the budget (``limits``) is refused first. A layer of a kind not known here (only in files the
user trusts) passes its input shape on and counts no parameters.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ModelLoadError
from ..limits import MAX_ACTIVATION_ELEMENTS, MAX_PARAMETERS
from .keras2_config import MODEL_CLASSES
from .operations import call_entries

Shape = tuple  # per image, channels last; None where unknown


def check_declared_size(config: dict, path: Path) -> None:
    """Refuse a model config whose parameters or largest layer output exceed the budget."""
    parameters, largest, _ = _walk(config, [])
    if parameters > MAX_PARAMETERS:
        raise ModelLoadError(f"{path}: refused: its config declares {parameters:,} parameters, more than the "
                             f"{MAX_PARAMETERS:,} allowed; the file is damaged or not a MobileNet")
    if largest > MAX_ACTIVATION_ELEMENTS:
        raise ModelLoadError(f"{path}: refused: a layer of its config outputs {largest:,} values per image, more "
                             f"than the {MAX_ACTIVATION_ELEMENTS:,} allowed; use a smaller input size")


def _walk(model: dict, inputs: list[Shape]) -> tuple[int, int, list]:
    """(parameters, largest output elements, output shapes) of a Functional or Sequential config
    called on ``inputs`` (its own Input layers' shapes when empty)."""
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, dict) else config
    if not isinstance(layers, list):
        return 0, 0, [None]
    shapes: dict[str, list[Shape]] = {}
    parameters = largest = 0
    if model.get("class_name") == "Sequential":
        shape = inputs[0] if inputs else None
        for layer in layers:
            if not isinstance(layer, dict):
                continue
            if layer.get("class_name") == "InputLayer" or shape is None:
                shape = _input_shape(layer)
                if layer.get("class_name") == "InputLayer":
                    continue
            count, shape, big = _layer(layer, [shape] if shape is not None else [])
            parameters, largest = parameters + count, max(largest, big)
        return parameters, largest, [shape]
    given = list(inputs)
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        name = str((layer.get("config") or {}).get("name", layer.get("name")))
        if layer.get("class_name") == "InputLayer":
            shapes[name] = [given.pop(0) if given else _input_shape(layer)]
            continue
        sources = [shapes.get(ref[0], [None])[ref[2] if len(ref) > 2 and isinstance(ref[2], int) else 0]
                   if ref[0] in shapes else None for ref in _references(layer)]
        count, out, big = _layer(layer, [s for s in sources if s is not None])
        parameters, largest = parameters + count, max(largest, big)
        shapes[name] = [out]
    ends = config.get("output_layers") if isinstance(config, dict) else None
    ends = [ends] if isinstance(ends, list) and ends and isinstance(ends[0], str) else ends or []
    outputs = [shapes.get(end[0], [None])[0] if isinstance(end, list) and end else None for end in ends]
    return parameters, largest, outputs or [None]


def _references(layer: dict) -> list[list]:
    """[layer name, node, tensor] of each input of the layer's first call, Keras 2 or Keras 3."""
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, list):  # Keras 2: [[name, node, tensor, kwargs], ...]
        return [e for e in call_entries(node) if isinstance(e, list) and e and isinstance(e[0], str)]
    refs: list[list] = []
    stack = [node]
    while stack:  # Keras 3: {"args": [...], "kwargs": {...}} with __keras_tensor__ entries
        item = stack.pop(0)
        if isinstance(item, dict):
            history = (item.get("config") or {}).get("keras_history") if item.get("class_name") == "__keras_tensor__" \
                else None
            if isinstance(history, list) and history and isinstance(history[0], str):
                refs.append(history)
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return refs


def _input_shape(layer: dict) -> Shape | None:
    cfg = layer.get("config") or {}
    shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
    return tuple(shape[1:]) if isinstance(shape, list) and shape else None


def _layer(layer: dict, inputs: list[Shape]) -> tuple[int, Shape | None, int]:
    """(parameters, output shape, output elements) of one layer on ``inputs``."""
    kind = layer.get("class_name")
    if kind in MODEL_CLASSES:
        count, big, outputs = _walk(layer, inputs)
        return count, outputs[0], big
    shape = inputs[0] if inputs else None
    cfg = layer.get("config") or {}
    if shape is None or not all(isinstance(d, int) or d is None for d in shape):
        return 0, None, 0
    channels = shape[-1] if shape and isinstance(shape[-1], int) else 0
    count, out = 0, shape
    if kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D") and len(shape) == 3:
        kernel = _pair(cfg.get("kernel_size"))
        spatial = _conv_size(shape[:2], kernel, _pair(cfg.get("strides", 1)), _pair(cfg.get("dilation_rate", 1)),
                             cfg.get("padding", "valid"))
        bias = bool(cfg.get("use_bias", True))
        multiplier = _int(cfg.get("depth_multiplier", 1))
        if kind == "Conv2D":
            filters = _int(cfg.get("filters"))
            count = kernel[0] * kernel[1] * channels // max(_int(cfg.get("groups", 1)), 1) * filters + bias * filters
        elif kind == "DepthwiseConv2D":
            filters = channels * multiplier
            count = kernel[0] * kernel[1] * filters + bias * filters
        else:
            filters = _int(cfg.get("filters"))
            count = kernel[0] * kernel[1] * channels * multiplier + channels * multiplier * filters + bias * filters
        out = (*spatial, filters)
    elif kind == "Dense":
        units = _int(cfg.get("units"))
        count, out = channels * units + units * bool(cfg.get("use_bias", True)), (*shape[:-1], units)
    elif kind == "BatchNormalization":
        count = 4 * channels
    elif kind == "ZeroPadding2D" and len(shape) == 3:
        pad = cfg.get("padding", 1)
        rows, cols = (pad[0], pad[1]) if isinstance(pad, list) and len(pad) == 2 else (pad, pad)
        rows, cols = _pair(rows), _pair(cols)
        out = (_add(shape[0], rows[0] + rows[1]), _add(shape[1], cols[0] + cols[1]), channels)
    elif kind in ("MaxPooling2D", "AveragePooling2D") and len(shape) == 3:
        pool = _pair(cfg.get("pool_size", 2))
        out = (*_conv_size(shape[:2], pool, _pair(cfg.get("strides") or pool), (1, 1), cfg.get("padding", "valid")),
               channels)
    elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        out = (1, 1, channels) if cfg.get("keepdims") else (channels,)
    elif kind == "Flatten":
        out = (math.prod(shape) if all(isinstance(d, int) for d in shape) else None,)
    elif kind == "Reshape":
        target = cfg.get("target_shape")
        out = tuple(target) if isinstance(target, list) else shape
    elif kind == "Concatenate" and all(len(s) == len(shape) for s in inputs):
        out = (*shape[:-1], sum(s[-1] or 0 for s in inputs))
    elif kind == "Normalization":
        count = 2 * channels + 1
    elif len(inputs) > 1 and all(len(s) == len(shape) for s in inputs):  # element-wise: broadcast
        out = tuple(max((s[i] or 0) for s in inputs) or None for i in range(len(shape)))
    elements = math.prod(d for d in out if isinstance(d, int)) if out else 0
    return count, out, elements


def _conv_size(size, kernel, strides, dilation, padding) -> tuple:
    out = []
    for n, k, s, d in zip(size, kernel, strides, dilation):
        if not isinstance(n, int):
            out.append(None)
        elif padding == "same":
            out.append(-(-n // max(s, 1)))
        else:
            out.append(max((n - (k - 1) * d - 1) // max(s, 1) + 1, 0))
    return tuple(out)


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return _int(value[0]), _int(value[1])
    return _int(value), _int(value)


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _add(size, extra: int):
    return size + extra if isinstance(size, int) else None
