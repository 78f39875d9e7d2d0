"""The int8 scale of each layer's tensor in an int8 TFLite or ONNX file, found through the tensor
map its build recorded: what the range tests compare with the ranges they asked for."""

from __future__ import annotations


def tflite_scales(path, tensors: dict[str, str]) -> dict[str, float]:
    """Scale of the int8 tensor of each layer, found through the tensor map the export recorded."""
    from ai_edge_litert.interpreter import Interpreter

    details = {t["name"]: t["quantization"][0] for t in Interpreter(str(path)).get_tensor_details()}
    return {layer: details[name] for layer, name in tensors.items() if name in details}


def onnx_scales(path, tensors: dict[str, str]) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layer = {name: layer for layer, name in tensors.items()}
    return {layer[node.input[0]]: float(constants[node.input[1]]) for node in graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] in layer and node.input[1] in constants}
