"""A small runner contract over Keras, LiteRT and ONNX Runtime.

Every runner takes preprocessed float32 batches (N, H, W, C) and returns float32 outputs, so
callers never see a runtime's quantization or layout details. Quantized inputs/outputs of
int8 TFLite files are (de)quantized here with the file's own scale and zero point.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .errors import MobiledeployError
from .quiet import captured_output

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


class Runner(Protocol):
    name: str
    input_shape: tuple[int, ...]  # one sample, without the batch dimension

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for one preprocessed float32 batch."""

    def bind(self, batch: np.ndarray) -> Callable[[], object]:
        """Prepare ``batch`` once; the returned call runs one inference on it (for timing)."""


class KerasRunner:
    def __init__(self, model, name: str = "keras"):
        self.model = model
        self.name = name
        self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(batch, training=False), np.float32)

    def bind(self, batch: np.ndarray) -> Callable[[], object]:
        return lambda: self.model(batch, training=False)


class TFLiteRunner:
    """LiteRT interpreter (XNNPACK on CPU). Resizes the batch dimension as needed."""

    def __init__(self, path: str | Path, num_threads: int | None = None, preserve_all_tensors: bool = False):
        from ai_edge_litert.interpreter import Interpreter

        self.name = Path(path).name
        try:
            with captured_output(), warnings.catch_warnings():  # LiteRT announces XNNPACK on stderr
                # preserving all tensors is what per-layer analysis is for; the warning says so
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
                self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads,
                                               experimental_preserve_all_tensors=preserve_all_tensors)
        except (ValueError, RuntimeError) as exc:
            raise MobiledeployError(
                f"{path}: LiteRT cannot load this file ({str(exc).splitlines()[0][:160]}); "
                "it is not a valid .tflite model — re-run mobiledeploy quantize"
            ) from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"][1:])
        self._batch = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.bind(batch)()
        return dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)

    def bind(self, batch: np.ndarray) -> Callable[[], object]:
        if self._batch != len(batch):
            self.interpreter.resize_tensor_input(self.input["index"], [len(batch), *batch.shape[1:]])
            with captured_output():
                self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self._batch = len(batch)
        self.interpreter.set_tensor(self.input["index"], quantize(batch, self.input))
        return self.interpreter.invoke


class OnnxRunner:
    """ONNX Runtime on the CPU execution provider."""

    def __init__(self, path: str | Path, num_threads: int | None = None, profile_prefix: str | None = None,
                 disabled: list[str] | None = None):
        """``disabled``: the optimizers to turn off, as the host decided them for a worker that
        cannot read the graph itself; by default ``disabled_optimizers(path)``."""
        self.name = Path(path).name
        options = session_options()
        if num_threads:
            options.intra_op_num_threads = num_threads
        if profile_prefix:  # per-node timings, written by end_profiling()
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        try:
            self.session = _session(path, options, disabled)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise MobiledeployError(
                f"{path}: ONNX Runtime cannot load this file ({str(exc).splitlines()[0][:160]}); "
                "it is not a valid .onnx model — re-run mobiledeploy quantize"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in self.session.get_inputs()[0].shape[1:])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch.astype(np.float32)})[0], np.float32)

    def bind(self, batch: np.ndarray) -> Callable[[], object]:
        feed = {self.input_name: np.ascontiguousarray(batch, np.float32)}
        return lambda: self.session.run(None, feed)


def save_optimized_onnx(path: str | Path, target: str | Path, disabled: list[str] | None = None) -> None:
    """Write the graph ONNX Runtime on this machine actually runs ``path`` as: after its graph
    optimizations, which fuse each QDQ node unit into an integer kernel where they can.
    ``disabled`` as for ``OnnxRunner``."""
    options = session_options()
    options.optimized_model_filepath = str(target)  # specific to this CPU, which is the point
    _session(path, options, disabled)


def session_options():
    """ONNX Runtime session options as mobiledeploy runs every file: quiet, with
    ``ORT_SESSION_CONFIG`` (exact int8 arithmetic on x86-64 CPUs without VNNI)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    return options


def _session(path: str | Path, options, disabled: list[str] | None):
    """An ONNX Runtime CPU session for ``path`` with ``disabled`` optimizers turned off (by
    default, the ones ``disabled_optimizers`` picks for the file)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers(path) if disabled is None else list(disabled))


def disabled_optimizers(path_or_model) -> list[str]:
    """The ONNX Runtime optimizers to turn off for a file: ``WeightBiasQuantization`` where a
    quantized file keeps float weights (mixed precision), none where every weight is int8.
    Reading the graph needs the onnx package, which the worker under ARM emulation does not
    have: the host decides for it and passes the list in the worker's spec
    (``worker.artifact_spec``)."""
    from .export.onnx import float_compute_nodes

    return ORT_DISABLED_OPTIMIZERS if float_compute_nodes(path_or_model) else []


def open_runner(path: str | Path, num_threads: int | None = None, profile_prefix: str | None = None,
                onnx_disabled: list[str] | None = None) -> Runner:
    """The runner for an artifact file, chosen by extension; only that runtime is imported.
    ``profile_prefix`` turns on ONNX Runtime's per-node profiler; ``onnx_disabled`` is the host's
    choice of ONNX Runtime optimizers to turn off (see ``OnnxRunner``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tflite":
        return TFLiteRunner(path, num_threads)
    if suffix == ".onnx":
        return OnnxRunner(path, num_threads, profile_prefix, onnx_disabled)
    if suffix == ".keras":
        from .quiet import import_tensorflow

        tf = import_tensorflow()
        if num_threads:  # only before TensorFlow's first op: fine in the benchmark's own process
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        import keras

        return KerasRunner(keras.saving.load_model(path, compile=False), Path(path).name)
    raise MobiledeployError(f"{path}: no runner for '{suffix}' files; expected .tflite, .onnx or .keras")


QUANTIZED_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                                "MatMulInteger", "DynamicQuantizeLinear"})


def is_quantized(path: str | Path) -> bool:
    """Whether a .tflite/.onnx file holds int8/uint8 tensors (QDQ or integer operators)."""
    if Path(path).suffix.lower() == ".onnx":
        import onnx

        return any(node.op_type in QUANTIZED_ONNX_OPS for node in onnx.load(str(path), load_external_data=False).graph.node)
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():
        tensors = Interpreter(str(path)).get_tensor_details()
    return any(t["dtype"] in (np.int8, np.uint8) for t in tensors)


def quantize(batch: np.ndarray, details: dict) -> np.ndarray:
    """Float -> the tensor's dtype using its (scale, zero point); float tensors pass through."""
    dtype = details["dtype"]
    if np.issubdtype(dtype, np.floating):
        return batch.astype(dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, details: dict) -> np.ndarray:
    if np.issubdtype(values.dtype, np.floating):
        return values.astype(np.float32)
    scale, zero_point = details["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
