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

from ..errors import MobiledeployError
from ..model.loading import load_model
from ..quiet import captured_output
from .onnx_session import open_session, session_options, utf8_path
from ..quiet import import_tensorflow


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
        return np.asarray(self.model.predict_on_batch(batch), np.float32)  # graph mode, traced once

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
                source = {"model_path": str(path)} if utf8_path(path) else {"model_content": Path(path).read_bytes()}
                self.interpreter = Interpreter(**source, num_threads=num_threads,
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
            self.session = open_session(path, options, disabled)
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
        tf = import_tensorflow()
        if num_threads:  # only before TensorFlow's first op: fine in the benchmark's own process
            tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        # a .keras file is an input like any other: loaded through the checked loader
        return KerasRunner(load_model(path).model, Path(path).name)
    raise MobiledeployError(f"{path}: no runner for '{suffix}' files; expected .tflite, .onnx or .keras")


def open_artifact(spec: dict, threads: int | None = None, profile_dir: str | None = None):
    """The runner for the artifact a spec names (``artifact_spec``); only the runtime it needs is
    imported."""
    path, fmt = spec["path"], spec["format"]
    if Path(path).suffix.lower().lstrip(".") != fmt:
        raise MobiledeployError(f"{path}: the file name does not match its format '{fmt}'")
    return open_runner(path, threads, str(Path(profile_dir) / "ort_profile") if profile_dir else None,
                       spec.get("onnx_disabled"))


QUANTIZED_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                                "MatMulInteger", "DynamicQuantizeLinear"})


def is_quantized(path: str | Path) -> bool:
    """Whether a .tflite/.onnx file holds int8/uint8 tensors (QDQ or integer operators)."""
    if Path(path).suffix.lower() == ".onnx":
        import onnx

        return any(node.op_type in QUANTIZED_ONNX_OPS for node in onnx.load(str(path), load_external_data=False).graph.node)
    from ai_edge_litert.interpreter import Interpreter

    with captured_output():
        source = {"model_path": str(path)} if utf8_path(path) else {"model_content": Path(path).read_bytes()}
        tensors = Interpreter(**source).get_tensor_details()
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
