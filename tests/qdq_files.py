"""Small QDQ ONNX files built from code, as other tools write them; shared by the tests that
check how mobiledeploy's runners load such files on this machine and under ARM emulation."""

import numpy as np


def qdq_conv(int8_weights: bool):
    """x -> Q -> DQ -> Conv(weights, float bias) -> Q -> DQ -> y: an int8 unit as AIMET writes it
    (int8 weights behind a DequantizeLinear, the bias left in float), or with float weights, as a
    layer kept in float by mixed precision."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    constants = [numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
                 numpy_helper.from_array(np.array(0, np.int8), "zero"),
                 numpy_helper.from_array(np.array(0.5, np.float32), "out_scale"),
                 numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"])]
    if int8_weights:
        constants.append(numpy_helper.from_array(weights, "wq"))
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"]))
    else:
        constants.append(numpy_helper.from_array(weights.astype(np.float32) * 0.02, "w"))
    nodes += [helper.make_node("Conv", ["xdq", "w", "bias"], ["conv"], pads=[1, 1, 1, 1]),
              helper.make_node("QuantizeLinear", ["conv", "out_scale", "zero"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "out_scale", "zero"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
