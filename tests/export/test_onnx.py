"""The ONNX exporter gives a Reshape whose target shape tf2onnx left computed at run time a
constant one, so that ONNX Runtime can fuse the int8 node units around it; the function, the
dynamic batch included, is unchanged."""

import numpy as np
import pytest

from mobiledeploy.export.onnx_edits import canonical, fixed_reshapes
from qdq_files import qdq_conv


def _dynamic_reshape():
    """x [N, 12] -> Shape -> Gather(0) -> Unsqueeze -> Concat with [3, 4] -> Reshape: Keras'
    Reshape as tf2onnx writes it when it does not fold the batch size."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch_1d"]),
        helper.make_node("Concat", ["batch_1d", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["reshaped"]),
        helper.make_node("Relu", ["reshaped"], ["y"]),
    ]
    constants = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                 numpy_helper.from_array(np.array([0], np.int64), "axes"),
                 numpy_helper.from_array(np.array([3, 4], np.int64), "rest")]
    graph = helper.make_graph(nodes, "reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(proto, x):
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_run_time_reshape_target_becomes_a_constant_and_the_function_stays():
    from onnx import checker, numpy_helper

    original = _dynamic_reshape()
    fixed = fixed_reshapes(_dynamic_reshape())
    checker.check_model(fixed)
    assert [node.op_type for node in fixed.graph.node] == ["Reshape", "Relu"]  # the shape subgraph is gone
    constants = {t.name: numpy_helper.to_array(t) for t in fixed.graph.initializer}
    assert constants[fixed.graph.node[0].input[1]].tolist() == [-1, 3, 4] and len(constants) == 1
    rng = np.random.default_rng(0)
    for batch in (1, 5):  # the batch stays dynamic
        x = rng.normal(size=(batch, 12)).astype(np.float32)
        assert np.array_equal(_run(fixed, x), _run(original, x))


def test_a_constant_reshape_is_left_as_it_is():
    proto = fixed_reshapes(_dynamic_reshape())
    before = proto.SerializeToString()
    assert fixed_reshapes(proto).SerializeToString() == before


def _reshape_named(shape_name: str, clip_name: str):
    """x -> Reshape (target: a constant named ``shape_name``) -> Clip(0, 6): tf2onnx's names."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["x", shape_name], ["m/reshape/Reshape:0"]),
             helper.make_node("Clip", ["m/reshape/Reshape:0", clip_name, "m/relu/Relu6__9"], ["y"])]
    constants = [numpy_helper.from_array(np.array([-1, 3, 4], np.int64), shape_name),
                 numpy_helper.from_array(np.array(0, np.float32), clip_name),
                 numpy_helper.from_array(np.array(6, np.float32), "m/relu/Relu6__9")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_two_exports_that_named_their_constants_differently_become_the_same_bytes():
    """tf2onnx names a Reshape's target "<tensor>/shape" in one process and "<tensor>/shape__<n>"
    in another, and numbers its constants on from whatever it made before."""
    first = canonical(_reshape_named("m/reshape/Reshape:0/shape", "const_fold_opt__12"))
    second = canonical(_reshape_named("m/reshape/Reshape:0/shape__57", "const_fold_opt__3"))
    assert first.SerializeToString() == second.SerializeToString()
    assert [t.name for t in first.graph.initializer] == ["const__0", "const__1", "const__2"]
    x = np.random.default_rng(0).normal(size=(2, 12)).astype(np.float32) * 5
    assert np.array_equal(_run(first, x), np.clip(x.reshape(2, 3, 4), 0, 6))


def test_a_float_conv_fused_with_its_relu_counts_as_run_in_float(tmp_path):
    """Where ONNX Runtime cannot fuse a QDQ unit into QLinearConv (here: the convolution's output
    is never quantized, as in NNCF's files) it runs the convolution on dequantized int8 weights
    in float, fused with its Relu as FusedConv:
    still a float convolution, which the count of what the runtime runs in float must include."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mobiledeploy.runtime.onnx_session import float_ops_in, save_optimized_onnx

    rng = np.random.default_rng(0)
    constants = [numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
                 numpy_helper.from_array(np.array(0, np.int8), "zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"]),
             helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"]),
             helper.make_node("Conv", ["xdq", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["y"])]
    graph = helper.make_graph(nodes, "unfused", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "m.onnx")
    save_optimized_onnx(tmp_path / "m.onnx", tmp_path / "optimized.onnx")
    ran = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "FusedConv" in ran and "Conv" not in ran  # what ONNX Runtime made of it
    assert float_ops_in(tmp_path / "optimized.onnx") == {"FusedConv": 1}


def test_an_int8_file_with_float_biases_runs_as_onnx_runtime_runs_it_by_default(tmp_path):
    """ONNX Runtime quantizes a float bias on load so that an int8 unit fuses into QLinearConv.
    mobiledeploy turns that optimizer off only for files that keep float weights (where it would
    make a float layer per-tensor int8): another tool's full-int8 file must run, in eval --compare
    and everywhere else, as its users run it (with the exact int8 kernels, see the next test)."""
    import onnx
    import onnxruntime as ort

    from mobiledeploy.runtime.onnx_session import ORT_DISABLED_OPTIMIZERS, disabled_optimizers, save_optimized_onnx
    from mobiledeploy.runtime.runners import open_runner

    for int8_weights, fused in ((True, "QLinearConv"), (False, "Conv")):
        path = tmp_path / f"int8_weights_{int8_weights}.onnx"
        onnx.save(qdq_conv(int8_weights), path)
        assert disabled_optimizers(path) == ([] if int8_weights else ORT_DISABLED_OPTIMIZERS)
        save_optimized_onnx(path, tmp_path / "optimized.onnx")
        ran = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
        assert fused in ran and (int8_weights or "QLinearConv" not in ran)
        x = np.random.default_rng(2).uniform(-2, 2, (2, 3, 8, 8)).astype(np.float32)
        exact = ort.SessionOptions()
        exact.add_session_config_entry("session.x64quantprecision", "1")
        default = ort.InferenceSession(str(path), exact, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        ours = open_runner(path).run(x)
        if int8_weights:  # bit for bit what a session with the default optimizers computes
            np.testing.assert_array_equal(ours, default)


def test_int8_files_run_with_exact_integer_arithmetic_on_x86_cpus_without_vnni(tmp_path):
    """Without VNNI, ONNX Runtime's default x86-64 int8 kernels add each pair of uint8 x int8
    products into a saturating 16-bit sum, and this unit's activations (codes up to 228 once
    shifted to uint8) times its weights (up to 127) overflow it in many pairs: a default session
    was off by up to 7.5 on 149 of 512 outputs on an AVX2 CPU. mobiledeploy's runners ask for the
    exact kernels, so they compute the QDQ graph as written (each op on dequantized values, as
    ONNX Runtime does with its optimizations off) up to one output step; on a CPU with VNNI both
    kernels are exact and the check holds as well."""
    import onnx
    import onnxruntime as ort

    from mobiledeploy.runtime.runners import open_runner

    path = tmp_path / "int8.onnx"
    onnx.save(qdq_conv(True), path)
    x = np.random.default_rng(2).uniform(-2, 2, (2, 3, 8, 8)).astype(np.float32)
    as_written = ort.SessionOptions()
    as_written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(path), as_written, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    runner = open_runner(path)
    assert runner.session.get_session_options().get_session_config_entry("session.x64quantprecision") == "1"
    step = 0.5  # the output's scale
    assert np.abs(runner.run(x) - reference).max() <= step


def test_a_lowered_relu_cap_is_one_clip_rounded_once(tmp_path):
    """tf2onnx writes a ReLU capped below 6 (--activation-ranges mse lowers ReLU6 caps) as
    Relu -> Min -> Max, which ONNX Runtime's quantizer rounded twice: the Relu's output on its own
    uncapped range, then again after Min and Max, which ran in float. As one Clip the function is
    the same, and the int8 file rounds the convolution's output once, on [0, cap]."""
    import keras
    import onnx
    from onnx import numpy_helper

    from mobiledeploy.export import onnx as onnx_export
    from mobiledeploy.options import ExportSettings

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="first")(inputs)
    x = keras.layers.ReLU(max_value=2.5, name="capped")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="second")(x))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-4, 4, (8, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    assert float(np.max(keras.Model(inputs, model.get_layer("first").output)(batches[0]))) > 5  # the cap clips

    float_proto = onnx_export._to_onnx(model, 17)
    kinds = [node.op_type for node in float_proto.graph.node]
    assert "Clip" in kinds and not {"Relu", "Min", "Max"} & set(kinds)
    session_input = {float_proto.graph.input[0].name: batches[1]}
    import onnxruntime as ort
    ran = ort.InferenceSession(float_proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, session_input)[0]
    np.testing.assert_allclose(ran, np.asarray(model(batches[1])), atol=1e-5)

    onnx_export.export(model, lambda: iter(batches), tmp_path, ExportSettings())
    int8 = onnx.load(str(tmp_path / "model_int8.onnx")).graph
    assert not {"Relu", "Min", "Max", "Clip"} & {node.op_type for node in int8.node}
    constants = {t.name: numpy_helper.to_array(t) for t in int8.initializer}
    producer = {out: node for node in int8.node for out in node.output}
    second = next(n for n in int8.node if n.op_type == "Conv" and "second" in "".join(n.input[1:]))
    rounding = producer[producer[second.input[0]].input[0]]  # Conv <- DequantizeLinear <- QuantizeLinear
    assert rounding.op_type == "QuantizeLinear" and producer[rounding.input[0]].op_type == "Conv"
    assert float(constants[rounding.input[1]]) == pytest.approx(2.5 / 255, rel=1e-3)  # once, on [0, cap]


def _shared_constant(name: str):
    """x -> Add(three) -> Mul(three): one constant two layers read, named after one of them."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Add", ["x", name], ["m/a/add:0"]), helper.make_node("Mul", ["m/a/add:0", name], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.array(3, np.float32), name)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_constant_two_layers_share_gets_the_same_name_whichever_layer_tf2onnx_met_first():
    first = canonical(_shared_constant("m/activation_15/Const:0"))
    second = canonical(_shared_constant("m/add_6/Cast_1/x:0"))
    assert first.SerializeToString() == second.SerializeToString()
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    assert np.array_equal(_run(first, x), (x + 3) * 3)


def test_a_model_with_nothing_refined_is_converted_once(tmp_path, tiny_model, monkeypatch):
    """The plain settings quantize the float model itself: its int8 file is quantized from the
    float file's graph, not from a second tf2onnx conversion of the same model."""
    from mobiledeploy.export import onnx as onnx_export
    from mobiledeploy.options import ExportSettings

    converted = []
    convert = onnx_export._to_onnx
    monkeypatch.setattr(onnx_export, "_to_onnx", lambda model, opset: converted.append(model) or convert(model, opset))
    images = np.random.default_rng(0).normal(0, 1, (8, 24, 24, 3)).astype(np.float32)
    files = onnx_export.export(tiny_model, lambda: [images], tmp_path, ExportSettings(), int8_model=tiny_model)
    assert converted == [tiny_model]
    assert [a.file for a in files] == ["model_float.onnx", "model_int8.onnx"] and (tmp_path / "model_int8.onnx").stat().st_size
