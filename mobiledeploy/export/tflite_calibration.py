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

Only for graphs whose logged tensors are read by operators that never write into an input's
memory (``IN_PLACE_FREE``): where TensorFlow Lite runs an operator in place (the ADD of a residual
block writes its sum into one of its inputs), the calibrator logs that input after the operator
overwrote it, so its statistics span the input's values and the output's, which a run that keeps
every tensor apart does not reproduce. There, as where this cannot run at all (several subgraphs
or inputs, a marked tensor the interpreter does not keep, no value but NaN, no TensorFlow
interpreter), ``statistics`` says None and the converter calibrates the usual way.
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
                           "MEAN", "SOFTMAX", "RESHAPE", "PAD", "CONCATENATION", "SHAPE"})


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
    marked = [i for i, tensor in enumerate(graph.tensors)
              if tensor.quantization is not None and tensor.quantization.min is not None
              and len(tensor.quantization.min) == 1]
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
    interpreter = _interpreter(content, threads or max(2, len(os.sched_getaffinity(0))))
    if interpreter is None:
        return None
    inputs = interpreter.get_input_details()
    if len(inputs) != 1 or any(op["op_name"] not in IN_PLACE_FREE and set(op["inputs"]) & set(marked)
                               for op in interpreter._get_ops_details()):  # (TensorFlow Lite's only per-operator API)
        return None  # an operator that may overwrite a tensor the calibrator logs
    index = inputs[0]["index"]
    low = dict.fromkeys(marked, CEILING)
    high = dict.fromkeys(marked, -CEILING)
    shape = None
    for batch in representative():
        for i in range(len(batch)):
            image = np.ascontiguousarray(batch[i:i + 1], np.float32)
            if image.shape != shape:  # as the calibrator: the interpreter takes the images' shape
                interpreter.resize_tensor_input(index, list(image.shape))
                interpreter.allocate_tensors()
                shape = image.shape
            interpreter.set_tensor(index, image)
            interpreter.invoke()
            for tensor in marked:
                values = interpreter.tensor(tensor)()  # the interpreter's memory: read, not kept
                if values is None or values.dtype != np.float32:
                    return None
                least, most = values.min(initial=CEILING), values.max(initial=-CEILING)
                if np.isnan(least) or np.isnan(most):  # the logger skips NaN
                    least, most = np.nanmin(values, initial=CEILING), np.nanmax(values, initial=-CEILING)
                low[tensor], high[tensor] = min(low[tensor], least), max(high[tensor], most)
                del values
    if any(low[t] > high[t] for t in marked):  # a tensor with no value but NaN: the logger has none either
        return None
    return {t: (low[t], max(high[t], FLOOR)) for t in marked}


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
