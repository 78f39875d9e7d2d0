"""A Keras 2 SavedModel's variables, read from its checkpoint as data (never restored as a graph)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ModelLoadError, first_line
from ..limits import MAX_WEIGHT_BYTES


def checkpoint_weights(prefix: Path, path: Path) -> dict[str, list]:
    """The SavedModel's variables, read from its checkpoint files as data: layer name -> [(weight
    name, array)]. ``tf.saved_model.load`` would restore the graph's functions and run their
    initializers, which are code stored in the file; the checkpoint's object graph names each
    variable (``conv1/kernel``) without running anything."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    try:
        reader = tf.train.load_checkpoint(str(prefix))
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        names = [(a.full_name, a.checkpoint_key) for node in graph.nodes for a in node.attributes
                 if a.name == "VARIABLE_VALUE" and a.checkpoint_key in shapes]
        _check_declared_bytes(sum(math.prod(shapes[key]) * dtypes[key].size for _, key in names), prefix, path)
        weights: dict[str, list] = {}
        for full_name, key in names:
            layer_name, _, weight_name = full_name.rpartition("/")
            weights.setdefault(layer_name, []).append((weight_name, reader.get_tensor(key)))
    except ModelLoadError:
        raise
    except Exception as exc:  # TensorFlow raises several types for damaged checkpoints
        raise ModelLoadError(
            f"{path}: the SavedModel's variables are unreadable ({first_line(exc)}); "
            "re-save the model with model.save('model.keras')"
        ) from None
    return weights


def _check_declared_bytes(declared: int, prefix: Path, path: Path) -> None:
    """A checkpoint stores its tensors uncompressed: what its index declares must fit in its data
    files (and the budget) before a tensor is read."""
    stored = sum(f.stat().st_size for f in prefix.parent.glob(prefix.name + ".data-*") if f.is_file())
    if declared > min(stored + (1 << 20), MAX_WEIGHT_BYTES):
        raise ModelLoadError(f"{path}: refused: its variables declare {declared:,} bytes but the checkpoint "
                             f"stores {stored:,} (budget {MAX_WEIGHT_BYTES:,}); re-save the model")
