"""Which layer hurts: per-layer drift between the float model and each int8 artifact.

The float model is the one the int8 files were made from: the folded model, or the equalized
one after cross-layer equalization, whose channels are rescaled (the folded model's tensors
would differ from the int8 files' by those scales, not by quantization), or the dithered one,
whose first layers have more channels (dither.py).

For every activation tensor the int8 file materializes, the same tensor of the float model is
computed on the same images and compared: SQNR (accumulated up to that layer), the SQNR lost
at that layer, the share of the 256 int8 levels the tensor actually uses, and the spread of
the per-channel weight ranges of the layer that produced it (the depthwise pathology: after
BatchNorm folding one channel's weights can span 100x another's, so per-tensor int8 leaves
the small channels a handful of levels).

TFLite: the interpreter keeps every intermediate tensor (``experimental_preserve_all_tensors``).
ONNX: the file cut after each activation's DequantizeLinear, each cut run by ONNX Runtime with
the same fused int8 kernels as the whole file (OnnxTaps).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..model.graph import WEIGHTED
from .. import manifest
from ..data import calibration, datasets
from ..errors import MobiledeployError
from ..model.loading import float_model, load_model
from ..options import WEIGHT_ONLY, Progress
from ..passes.logit_floor import apply_floor
from ..reports import AnalyzeReport, LayerDrift
from ..runtime.onnx_session import disabled_optimizers, session_options
from ..runtime.runners import TFLiteRunner, quantize



class TFLiteTaps:
    """An int8 .tflite file that also returns its intermediate activation tensors, dequantized.
    ``tensor_map`` (the build's record, ``export.tensor_map``) names the tensor of each layer."""

    def __init__(self, path: Path, tensor_map: dict[str, str]):
        self.runner = TFLiteRunner(path, preserve_all_tensors=True)
        interpreter = self.runner.interpreter
        produced = {i for op in interpreter._get_ops_details() for i in op["outputs"]}
        by_name = {d["name"]: d for d in interpreter.get_tensor_details()
                   if d["index"] in produced and d["dtype"] in (np.int8, np.int16)}
        self.taps: dict[str, dict] = {layer: by_name[name] for layer, name in tensor_map.items() if name in by_name}

    def run(self, batch: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """layer -> (dequantized values, int8 codes)."""
        self.runner.bind(batch)()
        out = {}
        for layer, detail in self.taps.items():
            codes = self.runner.interpreter.get_tensor(detail["index"])
            scale, zero = detail["quantization"]
            out[layer] = ((codes.astype(np.float32) - zero) * scale, codes)
        return out


class OnnxTaps:
    """A QDQ .onnx file's activation tensors as ONNX Runtime computes them when it runs the file.

    One session per tensor runs the file cut after that tensor's DequantizeLinear, so each runs
    the fused int8 kernels the whole file runs. Making the tensors extra outputs of one graph
    would not: ONNX Runtime leaves a QDQ node unit unfused when its QuantizeLinear output is read
    twice, and an unfused unit computes in float between its Q and DQ nodes, which rounds a few
    values differently from the fused kernel (and later layers amplify them).
    """

    def __init__(self, path: Path, tensor_map: dict[str, str]):
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        initializers = {i.name: i for i in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        readers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        self.taps: dict[str, str] = {}
        self.grids: dict[str, dict] = {}  # layer -> its codes' dtype and (scale, zero point)
        self.channels_first: dict[str, bool] = {}
        for layer, source in tensor_map.items():
            quantize_node = next((n for n in readers.get(source, []) if n.op_type == "QuantizeLinear"), None)
            node = next((n for n in readers.get(quantize_node.output[0], []) if n.op_type == "DequantizeLinear"),
                        None) if quantize_node is not None else None
            if node is None:
                continue
            self.taps[layer] = node.output[0]
            zero = onnx.numpy_helper.to_array(initializers[node.input[2]]) if len(node.input) > 2 \
                else np.zeros((), np.int32)  # none: 0, and the codes are kept as int32
            scale = onnx.numpy_helper.to_array(initializers[node.input[1]])
            self.grids[layer] = {"dtype": zero.dtype.type, "quantization": (float(scale), int(zero))}
            self.channels_first[layer] = _channels_first(source, producers)
        options = session_options()
        extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
        inputs = [i.name for i in model.graph.input if i.name not in initializers]
        self.input_name = inputs[0]
        disabled = disabled_optimizers(model)
        self.sessions = {
            layer: ort.InferenceSession(extractor.extract_model(inputs, [tensor]).SerializeToString(), options,
                                        providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
            for layer, tensor in self.taps.items()}

    def run(self, batch: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """layer -> (dequantized values, int8 codes), in the Keras (channels-last) layout."""
        feed = {self.input_name: batch.astype(np.float32)}
        out = {}
        for layer, session in self.sessions.items():
            tensor = session.run(None, feed)[0]
            if self.channels_first[layer] and tensor.ndim == 4:
                tensor = np.transpose(tensor, (0, 2, 3, 1))
            out[layer] = (tensor, quantize(tensor, self.grids[layer]))
        return out


# Ops that keep their input's layout: follow them back to the op that fixed it.
LAYOUT_KEEPING = {"Relu", "Clip", "Add", "Mul", "Sub", "Div", "QuantizeLinear", "DequantizeLinear", "Pad",
                  "Identity", "Sigmoid", "HardSigmoid", "LeakyRelu"}
CHANNELS_FIRST_OPS = {"Conv", "QLinearConv", "ConvInteger", "MaxPool", "AveragePool", "GlobalAveragePool",
                      "BatchNormalization"}


def _channels_first(tensor: str, producers: dict) -> bool:
    """Whether tf2onnx left ``tensor`` in NCHW: ONNX convolutions and pools are NCHW, and
    tf2onnx removes the transposes between them, so the op that produced a tensor (through
    layout-keeping element-wise ops) decides its layout."""
    seen = set()
    while tensor in producers and tensor not in seen:
        seen.add(tensor)
        node = producers[tensor]
        if node.op_type in CHANNELS_FIRST_OPS:
            return True
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [])
            return perm == [0, 3, 1, 2]
        if node.op_type not in LAYOUT_KEEPING:
            return False
        tensor = node.input[0]
    return False


def analyze(float_model, artifacts: dict[str, tuple[Path, dict]], batches: Iterable[np.ndarray],
            on_batch: Callable[[int], None] | None = None) -> dict[str, tuple[LayerDrift, ...]]:
    """Per-layer drift of every int8 artifact (name -> its path and its tensor map, as the build
    recorded it) against ``float_model`` over ``batches``."""
    import keras

    taps = {}
    for name, (path, tensors) in artifacts.items():
        taps[name] = TFLiteTaps(path, tensors) if path.suffix == ".tflite" else OnnxTaps(path, tensors)
    wanted = [layer.name for layer in float_model.layers if any(layer.name in t.taps for t in taps.values())]
    probe = keras.Model(float_model.inputs[0], [float_model.get_layer(n).output for n in wanted])
    # per layer: signal, error, lowest and highest code, and how many codes its type has
    sums = {artifact: {layer: [0.0, 0.0, 1 << 31, -(1 << 31), 256] for layer in t.taps} for artifact, t in taps.items()}
    done = 0
    for batch in batches:
        reference = dict(zip(wanted, (np.asarray(o, np.float32) for o in _as_list(probe.predict_on_batch(batch)))))
        for artifact, tap in taps.items():
            for layer, (values, codes) in tap.run(batch).items():
                if layer not in reference or layer not in sums[artifact]:
                    continue
                ref = reference[layer]
                if values.size != ref.size:  # a name-alike tensor of another shape (e.g. a transposed input)
                    sums[artifact].pop(layer, None)
                    continue
                values = _like(values, ref)
                acc = sums[artifact][layer]
                acc[0] += float(np.sum(ref.astype(np.float64) ** 2))
                acc[1] += float(np.sum((values.astype(np.float64) - ref) ** 2))
                acc[2], acc[3] = min(acc[2], int(codes.min())), max(acc[3], int(codes.max()))
                acc[4] = 2 ** (8 * codes.dtype.itemsize)
        done += len(batch)
        if on_batch:
            on_batch(done)
    spreads = weight_spreads(float_model)
    order = {name: i for i, name in enumerate(wanted)}
    result = {}
    for artifact, per_layer in sums.items():
        rows, previous = [], math.inf
        for layer in sorted(per_layer, key=lambda n: order.get(n, 1 << 30)):
            if layer not in order:
                continue
            signal, error, low, high, levels = per_layer[layer]
            sqnr = math.inf if error == 0 else 10 * math.log10(max(signal, 1e-30) / error)
            source, spread = spreads.get(layer, (None, None))
            rows.append(LayerDrift(
                layer=layer, depth=order[layer], kind=type(float_model.get_layer(layer)).__name__,
                sqnr_db=sqnr, lost_db=(previous - sqnr) if math.isfinite(previous) and math.isfinite(sqnr) else 0.0,
                levels_used=(high - low + 1) / levels if high >= low else 0.0,
                weight_layer=source, weight_spread=spread,
            ))
            previous = sqnr
        result[artifact] = tuple(rows)
    return result


def weight_spreads(model) -> dict[str, tuple[str, float]]:
    """For each layer: the weighted layer that feeds it (itself, or through an activation)
    and the ratio of its largest per-channel weight range to the 10th-percentile one."""
    spreads: dict[str, tuple[str, float]] = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in WEIGHTED:
            kernel = np.abs(np.asarray(layer.get_weights()[0]))
            axes = (0, 1) if kind == "DepthwiseConv2D" else tuple(range(kernel.ndim - 1))
            ranges = kernel.max(axis=axes).reshape(-1)
            floor = float(np.percentile(ranges, 10)) if ranges.size else 0.0
            # max / 10th percentile: dead channels (all-zero after folding) would make max/min infinite
            spread = float(ranges.max() / floor) if floor > 0 else float("inf")
            spreads[layer.name] = (layer.name, spread)
        else:
            inbound = layer._inbound_nodes[0].input_tensors if layer._inbound_nodes else []
            if len(inbound) == 1:
                parent = inbound[0]._keras_history.operation.name
                if parent in spreads and type(model.get_layer(parent)).__name__ in WEIGHTED:
                    spreads[layer.name] = spreads[parent]
    return spreads


def _like(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The same values in the reference's shape (e.g. (N, C, 1, 1) against Keras (N, C))."""
    return values if values.shape == reference.shape else values.reshape(reference.shape)


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def analyze_build(build_dir: str | Path, data: str | Path, max_images: int = 200, batch_size: int = 32,
                  progress: Progress | None = None) -> AnalyzeReport:
    """``mobiledeploy analyze``: per-layer drift of every int8 artifact in ``build_dir`` against
    the float model they were made from: the folded model, or, when equalization rescaled its
    channels or dithering copied some (dither.py), the model they wrote (the same function, but
    only its intermediate tensors match the int8 files' channel by channel)."""
    report = progress or (lambda step, done, total: None)
    build = manifest.open_build(build_dir)
    files = build.verified_files()
    dataset = datasets.open_data(data)
    # the last stage that rewrote the float model's channels wrote the model the int8 files mirror
    reference = build.manifest.reference
    model = load_model(build.path(reference)).model if reference is not None else float_model(build.directory)
    build.check_input(tuple(int(d) for d in model.inputs[0].shape[1:]))
    if build.manifest.logit_floor:  # the int8 files' logits are floored: compare them with the same floored tensor
        model = apply_floor(model, *build.manifest.logit_floor)
    int8 = {e.file: (build.path(e), e.details.get("tensor_map", {})) for e in files if e.quantized and e.details.get("tensor_map")}
    if not int8:
        quantized = [e for e in files if e.quantized]
        if quantized and all(e.precision in WEIGHT_ONLY for e in quantized):
            raise MobiledeployError(
                f"{build_dir}: analyze compares the quantized activations of a build's files with float's, and "
                f"{', '.join(e.file for e in quantized)} hold float activations ({quantized[0].precision}); use "
                "mobiledeploy eval for their drift, or quantize with --precision int8, int16x8 or mixed")
        raise MobiledeployError(f"{build_dir}: no quantized file records which tensor holds each layer's output; "
                                "re-run mobiledeploy quantize")
    total = min(max_images, len(dataset.items))
    batches = datasets.iter_batches(dataset, build.manifest.preprocessing, batch_size)
    limited = calibration.first_samples(batches, total)
    layers = analyze(model, int8, limited, lambda done: report("per-layer drift", done, total))
    return AnalyzeReport(str(build_dir), str(data), total, layers)
