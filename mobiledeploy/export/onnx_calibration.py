"""ONNX Runtime's MinMax calibration once per tensor over the rounds of a search.

Each round of the ``--max-disagreement`` search quantizes the same graph as the round before with
other weights: those of the layer it takes out of int8 and of the layers refined again after it.
Every tensor no changed weight reaches holds the same values as before, so it has the same range.
``Calibrations`` runs ONNX Runtime's own calibrator (its augmented graph, its session and its
``compute_data``) the way ``quantize_static`` does, and keeps what the next rounds need: the
ranges, and within a budget the values of the tensors live where weighted layers start (where the
next round's layer starts first, then from the last layer back), batch by batch. A later round
calibrates only the nodes its changed weights reach, and those that compute what they read and
was not kept, fed the kept values; every other range is the round before's. These are the ranges
a calibration of the whole graph gives, since ONNX Runtime runs the same kernels on the same
inputs. Where that part is the whole graph (a round that takes the first layer, or starts where
nothing was kept), or the graph's nodes changed, it calibrates the whole graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..limits import MAX_CHECKPOINT_BYTES
from .onnx_template import structure


@dataclass
class Calibrations:
    """What one build's rounds keep between their ONNX calibrations."""

    budget: int = MAX_CHECKPOINT_BYTES // 4  # bytes of tensor values kept for the next round
    graph: bytes | None = None  # the last calibrated graph without its weights' values
    digests: dict[str, str] = field(default_factory=dict)  # its initializers' values, hashed
    ranges: dict[str, tuple] = field(default_factory=dict)  # tensor -> (lowest, highest), as ONNX Runtime gave them
    kept: dict[str, list[np.ndarray]] = field(default_factory=dict)  # tensor -> its values, a batch at a time
    outcomes: list[str] = field(default_factory=list)  # per call: 'whole', 'part' or 'unchanged'

    def clear(self) -> None:
        """Forget everything: the next call calibrates the whole graph."""
        self.graph, self.digests, self.ranges, self.kept = None, {}, {}, {}

    def cache_file(self, proto, feed: str, batches: Callable[[], Iterable[np.ndarray]], keep: list[list[str]],
                   scratch: Path) -> Path:
        """A calibration cache (``quantize_static(calibration_cache_path=)``) in ``scratch`` for the
        graph ``proto`` fed ``batches`` at ``feed``. ``keep``: groups of tensors, the most wanted
        first (where the layer the next call takes starts, then where each weighted layer starts,
        from the last back); the values of as many groups as fit the budget are kept for the next
        call."""
        from onnxruntime.quantization import CalibrationMethod, TensorsData, save_tensors_data

        graph = structure(proto)
        digests = {t.name: hashlib.sha256(t.SerializeToString(deterministic=True)).hexdigest()
                   for t in proto.graph.initializer}
        changed = _reached(proto, {n for n, d in digests.items() if self.digests.get(n) != d}) \
            if graph == self.graph and self.ranges else None
        nodes = proto.graph.node
        stale = {out for i in changed or () for out in nodes[i].output}
        # what the last call kept and no changed weight reaches; the images themselves
        valid = {name: values for name, values in self.kept.items() if name not in stale} if changed is not None else {}
        valid[feed] = list(batches())
        self.kept = {}  # what is not valid any more goes before this call's tensors come
        part = _with_producers(proto, changed, set(valid)) if changed else None
        part = None if part is not None and len(part) == len(nodes) else part  # all of it: the whole graph
        how = "unchanged" if changed == [] else "whole" if part is None else "part"
        self.outcomes.append(how)
        if how == "whole":
            valid = {feed: valid[feed]}
        computing = range(len(nodes)) if how == "whole" else part or ()
        available = set(valid) | {out for i in computing for out in nodes[i].output}  # what it has or computes
        chosen = self._chosen(proto, keep, available, sum(len(batch) for batch in valid[feed]), feed)
        capture = [name for name in chosen if name not in valid]
        if how == "unchanged":
            ranges, captured = dict(self.ranges), {}
        elif how == "part":
            starts = _inputs_of(proto, part)
            feeds = ({name: valid[name][i] for name in starts} for i in range(len(valid[feed])))
            computed, captured = _calibrate(_part(proto, starts, part), scratch, feeds, capture)
            if not {name for name in self.ranges if name in stale} <= set(computed):
                raise ValueError("the partial calibration missed tensors the whole graph calibrates")
            ranges = {**self.ranges, **{name: r for name, r in computed.items() if name in self.ranges}}
        else:
            ranges, captured = _calibrate(_with_outputs(proto, capture), scratch,
                                          ({feed: batch} for batch in valid[feed]), capture)
        self.graph, self.digests, self.ranges = graph, digests, ranges
        self.kept = {name: captured[name] if name in captured else valid[name] for name in chosen if name != feed}
        cache = scratch / "calibration.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, dict(ranges)), cache)
        return cache

    def _chosen(self, proto, groups: list[list[str]], available: set[str], images: int, feed: str) -> list[str]:
        """The tensors of the groups, in order, that this call has or computes and that fit the
        budget together (a group too large is passed over for the smaller ones after it; the images
        fed cost nothing: they are kept anyway)."""
        sizes = {**_bytes_per_image(proto), feed: 0}
        chosen: list[str] = []
        total = 0
        for group in groups:
            new = [name for name in group if name not in chosen]
            if not all(name in available and name in sizes for name in new):
                continue
            cost = images * sum(sizes[name] for name in new)
            if total + cost <= self.budget:
                chosen += new
                total += cost
        return chosen


def live_at(proto, nodes: Iterable[str]) -> list[str]:
    """The tensors computed before the first of ``nodes`` (by name, in the graph's order), or fed
    to the graph, that it or a node after it reads: what a calibration starting there needs."""
    order = list(proto.graph.node)
    names = set(nodes)
    first = next((i for i, node in enumerate(order) if (node.name or node.output[0]) in names), None)
    if first is None:
        return []
    constants = {t.name for t in proto.graph.initializer}
    before = {i.name for i in proto.graph.input if i.name not in constants}
    before |= {out for node in order[:first] for out in node.output}
    return sorted({name for node in order[first:] for name in node.input if name in before})


def _bytes_per_image(proto) -> dict[str, int]:
    """The bytes an image takes in each float32 tensor whose shape the graph declares (batch first)."""
    from onnx import TensorProto

    sizes = {}
    for info in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim][1:]
        if tensor.elem_type == TensorProto.FLOAT and dims and all(dims):
            sizes[info.name] = 4 * int(np.prod(dims))
    return sizes


def _reached(proto, weights: set[str]) -> list[int]:
    """The nodes (their positions) that read one of ``weights`` or a tensor such a node computes."""
    reached, tainted = [], set(weights)
    for index, node in enumerate(proto.graph.node):
        if any(name in tainted for name in node.input):
            reached.append(index)
            tainted.update(node.output)
    return reached


def _with_producers(proto, nodes: list[int], have: set[str]) -> list[int] | None:
    """``nodes`` and the nodes that compute what they read, back to the tensors in ``have``: what a
    calibration fed ``have`` runs to reach them; None when that needs a tensor nothing computes."""
    graph = proto.graph.node
    producer = {out: index for index, node in enumerate(graph) for out in node.output}
    constants = {t.name for t in proto.graph.initializer}
    part, todo = set(nodes), list(nodes)
    while todo:
        for name in graph[todo.pop()].input:
            if not name or name in constants or name in have or producer.get(name) in part:
                continue
            if name not in producer:
                return None
            part.add(producer[name])
            todo.append(producer[name])
    return sorted(part)


def _inputs_of(proto, nodes: list[int]) -> set[str]:
    """What ``nodes`` read that none of them computes and no initializer holds."""
    graph = proto.graph.node
    constants = {t.name for t in proto.graph.initializer}
    computed = {out for i in nodes for out in graph[i].output}
    return {name for i in nodes for name in graph[i].input if name and name not in computed and name not in constants}


def _with_outputs(proto, names: list[str]):
    """``proto`` with ``names`` among its outputs, so that a calibration session gives their values."""
    from onnx import helper

    if not names:
        return proto
    declared = {o.name for o in proto.graph.output}
    infos = {v.name: v for v in proto.graph.value_info}
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.graph.output.extend(infos[name] if name in infos else helper.make_empty_tensor_value_info(name)
                             for name in names if name not in declared)
    return copy


def _part(proto, starts: set[str], nodes: list[int]):
    """The graph of ``nodes`` alone, fed ``starts``: every tensor they compute an output."""
    from onnx.utils import Extractor

    graph = proto.graph.node
    return Extractor(proto).extract_model(sorted(starts), [out for i in nodes for out in graph[i].output if out])


def _calibrate(proto, scratch: Path, feeds: Iterable[dict], keep: list[str]) -> tuple[dict, dict]:
    """ONNX Runtime's MinMax calibration of ``proto`` over ``feeds``, as ``quantize_static`` runs it
    (``collect_data``, then ``compute_data``), and the values of the outputs ``keep`` batch by batch."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    source = scratch / "calibrated.onnx"
    onnx.save(proto, str(source))
    calibrator = create_calibrator(source, None, augmented_model_path=str(scratch / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    names = [output.name for output in calibrator.infer_session.get_outputs()]
    captured: dict[str, list[np.ndarray]] = {name: [] for name in keep}
    for feed in feeds:
        values = calibrator.infer_session.run(None, feed)
        for name, value in zip(names, values):
            if name in captured:
                captured[name].append(value)
        calibrator.intermediate_outputs.append([None if name in calibrator.model_original_outputs else value
                                                for name, value in zip(names, values)])
    if not calibrator.intermediate_outputs:
        raise ValueError("no calibration batches")
    data = calibrator.compute_data()
    return {name: data[name].range_value for name in data}, captured
