"""How mobiledeploy opens ONNX Runtime sessions, and what a session reveals about a file: which
optimizers to turn off for it, which compute nodes it keeps in float, and which operators this
machine's ONNX Runtime still runs in float after fusing the QDQ node units."""

from __future__ import annotations

import tempfile
from pathlib import Path


# ONNX Runtime >= 1.21 quantizes, while loading, the float weights of a Conv that sits between a
# DequantizeLinear and a QuantizeLinear, one scale per tensor: it would silently turn the float
# layers of a mixed-precision file into per-tensor int8 (measured: 26.8 -> 13.3 dB on the shared
# MobileNet). Only such files run with it off (``disabled_optimizers``). In a file whose weights
# are all int8 it quantizes only float biases (to int32 on the input scale times the weight's), so
# that each unit fuses into an integer kernel: other tools' files (AIMET's) need it to run as int8.
ORT_DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


# On x86-64 CPUs without VNNI (AVX2 only, or AVX-512 without VNNI) ONNX Runtime's default int8
# kernels multiply uint8 activations by int8 weights with vpmaddubsw, which adds each pair of
# products into a saturating 16-bit sum: 255 x 127 x 2 does not fit, and a MobileNet's ReLU6
# outputs sit at the top of their range. Measured on the shared ImageNet MobileNet on an AVX2
# EPYC: the int8 file's agreement with float fell from 95.3% (its QDQ graph computed exactly) to
# 61.0%, output SQNR from 22.6 to 6.9 dB. This entry makes ONNX Runtime use its exact uint8 x
# uint8 kernels on such CPUs, and only there; CPUs with VNNI and ARM ignore it.
ORT_SESSION_CONFIG = {"session.x64quantprecision": "1"}


COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm"})


# float operators that ONNX Runtime leaves in a QDQ graph when it cannot fuse a node unit into
# its integer kernel (QLinearConv, QLinearAdd, ...): the file is int8, that part of the run is not.
# A float Conv, Gemm or MatMul followed by its activation runs as ORT's own Fused* operator.
RUNTIME_FLOAT_OPS = frozenset({*COMPUTE_OPS, "Add", "Mul", "FusedConv", "FusedGemm", "FusedMatMul"})


def save_optimized_onnx(path: str | Path, target: str | Path, disabled: list[str] | None = None) -> None:
    """Write the graph ONNX Runtime on this machine actually runs ``path`` as: after its graph
    optimizations, which fuse each QDQ node unit into an integer kernel where they can.
    ``disabled`` as for ``OnnxRunner``."""
    options = session_options()
    options.optimized_model_filepath = str(target)  # specific to this CPU, which is the point
    open_session(path, options, disabled)


def session_options():
    """ONNX Runtime session options as mobiledeploy runs every file: quiet, with
    ``ORT_SESSION_CONFIG`` (exact int8 arithmetic on x86-64 CPUs without VNNI)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


def open_session(path: str | Path, options, disabled: list[str] | None):
    """An ONNX Runtime CPU session for ``path`` with ``disabled`` optimizers turned off (by
    default, the ones ``disabled_optimizers`` picks for the file)."""
    import onnxruntime as ort

    source = str(path) if utf8_path(path) else Path(path).read_bytes()  # the runtime takes only UTF-8 names
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(path) if disabled is None else list(disabled))


def utf8_path(path) -> bool:
    """Whether a path's name can be handed to a C++ runtime as UTF-8 (a file name that is not UTF-8
    is held by Python as lone surrogates, which those bindings refuse)."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def disabled_optimizers(path_or_model) -> list[str]:
    """The ONNX Runtime optimizers to turn off for a file: ``WeightBiasQuantization`` where a
    quantized file keeps float weights (mixed precision), none where every weight is int8.
    Reading the graph needs the onnx package, which the worker under ARM emulation does not
    have: the host decides for it and passes the list in the worker's spec
    (``host.artifact_spec``)."""
    return ORT_DISABLED_OPTIMIZERS if float_compute_nodes(path_or_model) else []


def runtime_float_ops(path: Path, kept: set[str] = frozenset()) -> dict[str, int]:
    """Operator type -> count of the compute operators (outside ``kept``) that ONNX Runtime on
    this machine runs in float after its graph optimizations fuse the QDQ node units.

    An int8 QDQ file only says what may run in int8; the runtime decides per node unit. Measured
    with ONNX Runtime 1.31 on x86-64, int8 (S8) residual Adds are not fused into QLinearAdd, and
    the convolutions that share a tensor with them stay float too (15 of 52 convolutions and all
    10 Adds of a MobileNetV2); on aarch64 the same file fuses completely."""
    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        save_optimized_onnx(path, optimized)
        return float_ops_in(optimized, kept)


def float_ops_in(optimized: Path, kept: set[str] = frozenset()) -> dict[str, int]:
    """Operator type -> count of the float compute operators (outside ``kept``) in a graph
    ONNX Runtime has optimized (``save_optimized_onnx``)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(optimized)).graph.node:
        if node.op_type in RUNTIME_FLOAT_OPS and node.name not in kept:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def float_compute_nodes(path_or_model) -> list[str]:
    """Conv/MatMul/Gemm nodes whose weight input does not come from a DequantizeLinear (a file's
    path or its loaded model; only the graph's structure is read)."""
    import onnx

    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else \
        onnx.load(str(path_or_model), load_external_data=False)
    graph = model.graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return [
        node.name or node.op_type for node in graph.node
        if node.op_type in COMPUTE_OPS
        and any(producers.get(name) != "DequantizeLinear" for name in node.input[:2])
    ]
