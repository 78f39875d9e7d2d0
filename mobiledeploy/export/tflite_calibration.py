"""The TFLite converter's calibration statistics, computed on every core.

The converter calibrates (``_experimental_calibrate_only``) by running its float graph one image
at a time in a logging interpreter that records each tensor's min and max in a scalar loop, on
one core: most of a TFLite export's time. Here the converter calibrates on the first image alone,
which gives the calibrated graph and marks the tensors the calibrator logs; then TensorFlow's own
interpreter (the calibrator's kernels), with every tensor kept and every core, runs that graph on
all the images one at a time, and each marked tensor's min and max over them replace the first
image's. A min or a max does not depend on the order of the images, and the calibrator's rules are
kept (NaN skipped, a max never below the smallest normal float32, where its logger starts it), so
the statistics are the calibrator's and the file the same bytes (``tests/export/`` checks it).

Where TensorFlow Lite runs an operator in place (the ADD of a residual block writes its sum into
the memory of one of its inputs), the calibrator logs that input after the operator overwrote it:
its statistics span the input's values and the output's. So does ``_in_place``'s rule, which gives
the calibrator's statistics on every MobileNet family the tests build: an ADD or a MUL writes into
its one input of the output's shape that no other operator reads and the graph does not take in or
hand out. A graph with another operator that reads a logged tensor and may write into it (not in
``IN_PLACE_FREE``), or an ADD or MUL the rule cannot decide, is calibrated the converter's way, as
where this cannot run at all (several subgraphs or inputs, a logged tensor the interpreter does not
keep, no value but NaN, no TensorFlow interpreter): ``statistics`` then says None.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Iterable

import numpy as np

from ..quiet import captured_output

FLOOR = np.finfo(np.float32).tiny  # where the calibrator's logger starts a max (FLT_MIN)
CEILING = np.finfo(np.float32).max  # and a min
# operators that write only their own output (a RESHAPE may share its input's memory, unchanged;
# a SHAPE reads its input's shape alone)
IN_PLACE_FREE = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D",
                           "MEAN", "SOFTMAX", "RESHAPE", "PAD", "CONCATENATION", "SHAPE", "HARD_SWISH", "LOGISTIC"})
IN_PLACE = frozenset({"ADD", "MUL"})  # operators that write into an input's memory (``_in_place``)


def first_image(representative: Callable[[], Iterable[np.ndarray]]) -> Callable[[], Iterable[np.ndarray]]:
    """``representative`` cut to its first image: what the converter calibrates on here."""
    def first():
        for batch in representative():
            yield batch[:1]
            return
    return first


def statistics(calibrated: bytes, representative: Callable[[], Iterable[np.ndarray]],
               threads: int | None = None) -> bytes | None:
    """``calibrated`` (the converter's calibration on the first image of ``representative``) with
    the min and max of every tensor it holds statistics for taken over all the images; None where
    the interpreter cannot give them (the caller then calibrates the converter's way)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    if len(model.subgraphs) != 1:
        return None
    graph = model.subgraphs[0]
    recorded = [(i, len(tensor.quantization.min)) for i, tensor in enumerate(graph.tensors)
                if tensor.quantization is not None and tensor.quantization.min is not None]
    if any(size != 1 for _, size in recorded):  # the calibrator keeps one min and max per tensor
        return None
    marked = [i for i, _ in recorded]
    try:
        ranges = _ranges(calibrated, marked, representative, threads)
    except Exception:  # noqa: BLE001 - a shortcut: where the interpreter fails, the converter calibrates
        return None
    if ranges is None:
        return None
    for index, (low, high) in ranges.items():
        recorded = graph.tensors[index].quantization
        recorded.min, recorded.max = [float(low)], [float(high)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _ranges(content: bytes, marked: list[int], representative: Callable[[], Iterable[np.ndarray]],
            threads: int | None) -> dict[int, tuple[np.float32, np.float32]] | None:
    """Each marked tensor's (min, max) over the images, as the calibrator's logger keeps them."""
    # at least two threads: TensorFlow Lite's one-thread kernels round a MEAN or a FULLY_CONNECTED
    # differently from the calibrator's
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    interpreter = _interpreter(content, threads or max(2, cores))
    if interpreter is None:
        return None
    inputs = interpreter.get_input_details()
    if len(inputs) != 1:
        return None
    index = inputs[0]["index"]
    low = dict.fromkeys(marked, CEILING)
    high = dict.fromkeys(marked, -CEILING)
    shape = overwritten = None
    for batch in representative():
        for i in range(len(batch)):
            image = np.ascontiguousarray(batch[i:i + 1], np.float32)
            if image.shape != shape:  # as the calibrator: the interpreter takes the images' shape
                interpreter.resize_tensor_input(index, list(image.shape))
                interpreter.allocate_tensors()
                shape = image.shape
            interpreter.set_tensor(index, image)
            interpreter.invoke()
            if overwritten is None:  # once the tensors have their shapes
                overwritten = _in_place(interpreter, set(marked))
                if overwritten is None:
                    return None
            for tensor in marked:
                values = interpreter.tensor(tensor)()  # the interpreter's memory: read, not kept
                if values.dtype != np.float32:
                    return None
                least, most = values.min(initial=CEILING), values.max(initial=-CEILING)
                if np.isnan(least) or np.isnan(most):  # the logger skips NaN
                    least, most = np.nanmin(values, initial=CEILING), np.nanmax(values, initial=-CEILING)
                low[tensor], high[tensor] = min(low[tensor], least), max(high[tensor], most)
                del values
    if overwritten is None or any(low[t] > high[t] for t in marked):  # no image, or no value but NaN
        return None
    own_low, own_high = dict(low), dict(high)  # each tensor's own values, before the unions below
    for tensor, output in overwritten.items():  # what the calibrator read there after the operator ran
        low[tensor], high[tensor] = min(low[tensor], own_low[output]), max(high[tensor], own_high[output])
    return {t: (low[t], max(high[t], FLOOR)) for t in marked}


def _in_place(interpreter, marked: set[int]) -> dict[int, int] | None:
    """Logged tensor -> the logged output of the operator that overwrites it in place (an ADD or a
    MUL: its one input of the output's shape that no other operator reads, nor the graph takes in or
    hands out); None where an operator not known to keep its inputs reads a logged tensor, or an ADD
    or a MUL has several such inputs."""
    ops = interpreter._get_ops_details()  # (TensorFlow Lite's only per-operator API)
    shapes = {d["index"]: tuple(d["shape"]) for d in interpreter.get_tensor_details()}
    ends = {d["index"] for d in (*interpreter.get_input_details(), *interpreter.get_output_details())}
    readers: dict[int, int] = {}
    for op in ops:
        for tensor in op["inputs"]:
            readers[tensor] = readers.get(tensor, 0) + 1
    overwritten = {}
    for op in ops:
        if op["op_name"] in IN_PLACE_FREE or not marked & set(op["inputs"]):
            continue
        output = op["outputs"][0] if len(op["outputs"]) == 1 else None
        if op["op_name"] not in IN_PLACE or output not in marked:
            return None
        candidates = [t for t in op["inputs"] if t in marked and readers[t] == 1 and t not in ends
                      and shapes.get(t) == shapes.get(output)]
        if len(candidates) > 1:
            return None
        overwritten.update(dict.fromkeys(candidates, output))  # none: nothing it may write into
    return overwritten


def _interpreter(content: bytes, threads: int):
    """TensorFlow's interpreter (the converter's runtime, whose kernels the calibrator runs) with
    every tensor kept, or None where TensorFlow no longer ships it."""
    try:
        from tensorflow.lite.python.interpreter import Interpreter, OpResolverType
    except ImportError:
        return None
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice: here it is the converter's own runtime
        return Interpreter(model_content=content, num_threads=threads, experimental_preserve_all_tensors=True,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
