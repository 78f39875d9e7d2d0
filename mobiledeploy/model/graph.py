"""The layer graph of a functional Keras model: who feeds whom, in topological order.

Refinement walks the graph layer by layer; equalization looks in it for weighted layers joined
by a ReLU; the exporters match it to the converters' graphs (``export.tensor_map``).
"""

from __future__ import annotations

WEIGHTED = {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"}  # layers with a kernel
SHAPE_ONLY = {"Reshape", "Flatten", "Dropout"}  # change only the shape (or nothing, at inference)
# between a ReLU and the layer it feeds: zero padding and identity keep relu(t·x) = t·relu(x)
# and pass a channel and its copies through alike
RELU_PASS_THROUGH = {"ZeroPadding2D", "Dropout"}
ALIGNMENT = 64  # bytes: where TensorFlow's CPU kernels want a tensor's memory to start (EIGEN_MAX_ALIGN_BYTES)
WHOLE_CALL_BYTES = 256 << 20  # a weighted layer's output on all the images up to this size: one call, no copy


def layer_graph(model) -> dict[str, dict]:
    """Layer name -> kind, input layer names, consumer names; in the model's topological order.
    A model output counts as a consumer named ``<output>``."""
    graph: dict[str, dict] = {}
    for layer in model.layers:
        inputs = []
        for node in layer._inbound_nodes[:1]:
            inputs = [t._keras_history.operation.name for t in node.input_tensors]
        graph[layer.name] = {"kind": type(layer).__name__, "inputs": inputs, "consumers": []}
    for name, node in graph.items():
        for parent in node["inputs"]:
            graph[parent]["consumers"].append(name)
    for output in model.outputs:
        graph[output._keras_history.operation.name]["consumers"].append("<output>")
    return graph


def relu_cap(layer):
    """The upper bound of a plain ReLU layer (None when unbounded), or False for anything else
    (a leaky or thresholded ReLU, another layer)."""
    kind = type(layer).__name__
    if kind == "ReLU":
        if getattr(layer, "negative_slope", 0) or getattr(layer, "threshold", 0):
            return False
        return None if layer.max_value is None else float(layer.max_value)
    if kind == "Activation":
        return {"relu": None, "relu6": 6.0}.get(getattr(layer.activation, "__name__", ""), False)
    return False


def configuration(model) -> str:
    """``model``'s Keras configuration as canonical JSON: two models with equal strings are built
    alike (the same layers, settings and ReLU caps) and differ at most in their weights."""
    import json

    return json.dumps(model.get_config(), sort_keys=True, default=str)


def only_consumer(graph: dict, name: str) -> str | None:
    """The one layer that reads ``name``'s output, or None when several do or it is the output."""
    consumers = graph[name]["consumers"]
    return consumers[0] if len(consumers) == 1 and consumers[0] in graph else None


def follow(graph: dict, name: str | None, kinds: set[str]) -> str | None:
    """From ``name`` on, the first layer that is not one of ``kinds``, walking through single
    consumers; None when the walk forks or reaches the output."""
    while name is not None and graph[name]["kind"] in kinds:
        name = only_consumer(graph, name)
    return name


def activation_name(layer) -> str:
    """The name of a layer's own activation ('relu', 'softmax', ...), '' when it has none."""
    activation = getattr(layer, "activation", None)
    if isinstance(activation, str):
        return activation
    return getattr(activation, "__name__", "") if activation is not None else ""


def run_layer(layer, inputs: list, chunk: int):
    """Run one layer over a set of images in chunks (eager, inference mode): a new float32 array
    (``empty_aligned``). A plain ReLU and a 2-D zero padding are numpy's: the same values in one pass
    over memory, where the framework would copy the images in and out. A weighted layer reads its
    input where it lies (``_lent``), without the copy TensorFlow makes of a numpy array, and when
    its output fits ``WHOLE_CALL_BYTES`` runs once on all the images and hands back TensorFlow's own
    output (``_writable``) instead of a copy."""
    import numpy as np

    simple = _in_numpy(layer, inputs)
    if simple is not None:
        return simple
    weighted = type(layer).__name__ in WEIGHTED
    if weighted and len(inputs) == 1 and _output_bytes(layer, inputs[0]) <= WHOLE_CALL_BYTES:
        return _writable(layer(_lent(inputs[0]), training=False))
    lend = _lent if weighted else (lambda x: x)
    result = None
    for start in range(0, len(inputs[0]), chunk):
        args = [lend(x[start:start + chunk]) for x in inputs]
        out = np.asarray(layer(args[0] if len(args) == 1 else args, training=False), np.float32)
        if result is None:
            result = empty_aligned((len(inputs[0]), *out.shape[1:]))
        result[start:start + len(out)] = out
    return result


def output_shape(layer, x) -> tuple[int, ...] | None:
    """The shape of ``layer``'s output on ``x``, as Keras computes it; None when it cannot say."""
    try:
        shape = tuple(layer.compute_output_shape(tuple(x.shape)))
    except Exception:  # noqa: BLE001 - a layer Keras cannot size ahead
        return None
    return shape if all(isinstance(d, int) for d in shape) else None


def _output_bytes(layer, x) -> float:
    """The bytes of ``layer``'s float32 output on all of ``x``; infinite when Keras cannot say
    (then the layer runs a chunk at a time)."""
    import numpy as np

    shape = output_shape(layer, x)
    return float("inf") if shape is None else 4.0 * float(np.prod(shape))


def _writable(tensor):
    """A weighted layer's output on all the images as a writable float32 array on the tensor's own
    memory (which it keeps alive): the layer's kernel wrote a new tensor nobody else holds, so the
    refinement can round and correct it in place, where copying it into numpy would cost a pass
    over memory and a page fault per page. Another dtype is converted."""
    import ctypes

    import numpy as np

    values = np.asarray(tensor)  # read-only, on the tensor's memory
    if values.dtype != np.float32 or not values.size:
        return np.array(values, np.float32)
    memory = (ctypes.c_char * values.nbytes).from_address(values.ctypes.data)
    memory.owner = values  # the writable view's base keeps the tensor's memory
    return np.frombuffer(memory, np.float32).reshape(values.shape)


def empty_aligned(shape):
    """An uninitialised float32 array of ``shape`` whose memory starts on an ``ALIGNMENT``-byte
    boundary: one ``_lent`` can hand to TensorFlow (numpy's large arrays start 16 bytes past one)."""
    import numpy as np

    size = int(np.prod(shape)) * 4
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + size].view(np.float32).reshape(shape)


def _lent(x):
    """``x`` as a TensorFlow tensor on the same memory (DLPack) where TensorFlow can take it as it
    is: a float32, C-contiguous array starting on an ``ALIGNMENT``-byte boundary (TensorFlow copies
    any other, and its oneDNN kernels abort on an unaligned tensor), which numpy lends (writable).
    Else ``x`` itself, which the layer copies. Only for the weighted layers, whose kernels write a
    new output: an element-wise kernel may write its result into an input it holds alone."""
    import numpy as np

    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.size and x.flags.c_contiguous
            and x.flags.writeable and x.ctypes.data % ALIGNMENT == 0):
        return x
    import tensorflow as tf

    return tf.experimental.dlpack.from_dlpack(x.__dlpack__())


def relu(x, cap: float | None, out):
    """max(x, 0), capped at ``cap`` unless it is None (ReLU6: 6), written to ``out`` (may be ``x``):
    the values of the framework's ReLU (a capped one in one pass over memory, which keeps the sign
    of a -0.0: equal values, which no sum or rounding tells apart)."""
    import numpy as np

    if cap is None:
        return np.maximum(x, np.float32(0), out=out)
    return np.clip(x, np.float32(0), np.float32(cap), out=out)


def _in_numpy(layer, inputs: list):
    """``layer`` on ``inputs`` computed by numpy when it is a plain ReLU (or ReLU6) or a
    channels-last ZeroPadding2D of one float32 tensor; None for anything else."""
    import numpy as np

    if len(inputs) != 1 or getattr(inputs[0], "dtype", None) != np.float32:
        return None
    x = inputs[0]
    cap = relu_cap(layer)
    if cap is not False:
        return relu(x, cap, empty_aligned(x.shape))
    if type(layer).__name__ == "ZeroPadding2D" and layer.data_format == "channels_last" and x.ndim == 4:
        (top, bottom), (left, right) = layer.padding
        height, width = x.shape[1:3]
        out = empty_aligned((len(x), height + top + bottom, width + left + right, x.shape[3]))
        out[:, :top] = out[:, top + height:] = 0  # the rows of zeros, then the zeros beside the image
        out[:, top:top + height, :left] = out[:, top:top + height, left + width:] = 0
        out[:, top:top + height, left:left + width] = x
        return out
    return None


def uses_after(order: list, start: int) -> dict[str, int]:
    """Layer name -> how many times its output is still read from position ``start`` of ``order``
    (``layer_graph``'s items) on: by the layers there, and for good when it is a model output."""
    left = {name: node["consumers"].count("<output>") for name, node in order}
    for _, node in order[start:]:
        for parent in node["inputs"]:
            left[parent] += 1
    return left


def layer_outputs(model, images, chunk: int, start: int = 0, live: dict | None = None):
    """(layer name, its output on ``images``) for every layer of ``model``, in graph order (the
    input layer's output is ``images``); from the ``start``-th layer on when ``live`` holds the
    outputs of the layers before it that the rest still reads. The next layer runs in a background
    thread while the caller works on the current one (``forward``)."""
    for name, take in forward(model, images, chunk, start, live):
        yield name, take()


def forward(model, images, chunk: int, start: int = 0, live: dict | None = None, in_place=None):
    """(layer name, a function that returns its output on ``images``) for every layer of ``model``,
    in graph order, as ``layer_outputs`` gives them; a layer's output is taken (waited for) before
    the next one's. A layer runs in a background thread from when the caller took the layer before
    it, so a caller that works on a layer before it takes the layer's output, as much as the layer
    itself, hides the forward pass (the framework's kernels and numpy release the interpreter). A
    layer's output is released here once every layer that reads it has run.

    ``in_place`` (a function of a layer name, called when the caller takes the output of the one
    layer that reads that layer's output, a plain ReLU): whether the caller is done with that
    output, which the ReLU then overwrites with its own instead of writing a new array. Such a ReLU
    runs when the caller takes its output rather than ahead: a pass over memory already in use."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    graph = layer_graph(model)
    order = list(graph.items())
    remaining = uses_after(order, start)
    values: dict = dict(live or {})

    def run(name: str, node: dict, inputs: list):
        return images if node["kind"] == "InputLayer" else run_layer(model.get_layer(name), inputs, chunk)

    def later(index: int) -> bool:  # a ReLU that may overwrite its input: it waits to be taken
        name, node = order[index]
        return in_place is not None and len(node["inputs"]) == 1 and remaining[node["inputs"][0]] == 1 \
            and relu_cap(model.get_layer(name)) is not False

    def submit(index: int):
        if index >= len(order) or later(index):
            return None
        name, node = order[index]
        return pool.submit(run, name, node, [values[p] for p in node["inputs"]])

    with ThreadPoolExecutor(1, thread_name_prefix="forward") as pool:
        pending = submit(start)
        for index, (name, node) in enumerate(order[start:], start):
            @functools.cache  # the output, once: the caller's call and the one after it below
            def take(name=name, node=node, index=index):
                nonlocal pending
                if pending is not None:
                    output = pending.result()
                else:
                    x = values[node["inputs"][0]]
                    writable = isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.writeable \
                        and in_place(node["inputs"][0])
                    output = relu(x, relu_cap(model.get_layer(name)), x) if writable else run(name, node, [x])
                values[name] = output
                for parent in node["inputs"]:
                    remaining[parent] -= 1
                    if remaining[parent] == 0:
                        values.pop(parent)
                pending = submit(index + 1)
                return output

            yield name, take
            take()  # a caller that moves on without it: the next layers need it
