"""ONNX Runtime's MinMax calibration once per tensor over the rounds of a search.

Each round of the ``--max-disagreement`` search quantizes the same graph as the round before with
other weights: those of the layer it takes out of int8 and of the layers refined again after it.
Every tensor no changed weight reaches holds the same values as before, so it has the same range.
``Calibrations`` runs ONNX Runtime's own calibrator (its augmented graph, its session and its
``compute_data``) the way ``quantize_static`` does, and keeps what the next round needs: the
ranges, and the values of the tensors live where the layer the next round takes starts, batch
by batch. The next round calibrates only the nodes its changed weights reach, fed those values,
and takes every other range from the round before: the ranges a calibration of the whole graph
gives, since ONNX Runtime runs the same kernels on the same inputs. Where the graph's nodes
changed, or the tensors it would start from were not kept (a round that takes a layer before the
one the round before took), it calibrates the whole graph.
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

    budget: int = MAX_CHECKPOINT_BYTES // 2  # bytes of tensor values kept for the next round
    graph: bytes | None = None  # the last calibrated graph without its weights' values
    digests: dict[str, str] = field(default_factory=dict)  # its initializers' values, hashed
    ranges: dict[str, tuple] = field(default_factory=dict)  # tensor -> (lowest, highest), as ONNX Runtime gave them
    kept: dict[str, list[np.ndarray]] = field(default_factory=dict)  # tensor -> its values, a batch at a time
    outcomes: list[str] = field(default_factory=list)  # per call: 'whole', 'part' or 'unchanged'

    def clear(self) -> None:
        """Forget everything: the next call calibrates the whole graph."""
        self.graph, self.digests, self.ranges, self.kept = None, {}, {}, {}

    def cache_file(self, proto, feed: str, batches: Callable[[], Iterable[np.ndarray]], keep: list[str],
                   scratch: Path) -> Path:
        """A calibration cache (``quantize_static(calibration_cache_path=)``) in ``scratch`` for the
        graph ``proto`` fed ``batches`` at ``feed``; the values of the tensors ``keep`` are kept for
        the next call when they fit the budget."""
        from onnxruntime.quantization import CalibrationMethod, TensorsData, save_tensors_data

        graph = structure(proto)
        digests = {t.name: hashlib.sha256(t.SerializeToString(deterministic=True)).hexdigest()
                   for t in proto.graph.initializer}
        changed = _reached(proto, {n for n, d in digests.items() if self.digests.get(n) != d}) \
            if graph == self.graph and self.ranges else None
        starts = _inputs_of(proto, changed) if changed else set()
        valid = {name: values for name, values in self.kept.items() if changed is not None
                 and not any(name in node.output for node in changed)}
        if changed == []:
            self.outcomes.append("unchanged")
            ranges, captured = dict(self.ranges), {}
        elif changed and starts <= set(valid):
            self.outcomes.append("part")
            computed = {out for node in changed for out in node.output}
            feeds = ({name: valid[name][i] for name in starts} for i in range(len(valid[min(starts)])))
            part, captured = _calibrate(_part(proto, starts, changed), scratch, feeds,
                                        [name for name in keep if name in computed])
            if not {name for name in self.ranges if name in computed} <= set(part):
                raise ValueError("the partial calibration missed tensors the whole graph calibrates")
            ranges = {**self.ranges, **{name: r for name, r in part.items() if name in self.ranges}}
        else:
            self.outcomes.append("whole")
            valid = {}
            ranges, captured = _calibrate(_with_outputs(proto, keep), scratch,
                                          ({feed: batch} for batch in batches()), keep)
        kept = {name: captured.get(name, valid.get(name)) for name in keep}
        fits = all(v is not None for v in kept.values()) and \
            sum(a.nbytes for values in kept.values() for a in values) <= self.budget
        self.graph, self.digests, self.ranges = graph, digests, ranges
        self.kept = kept if fits else {}
        cache = scratch / "calibration.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, dict(ranges)), cache)
        return cache


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


def _reached(proto, weights: set[str]) -> list:
    """The nodes that read one of ``weights`` or a tensor such a node computes, in graph order."""
    reached, tainted = [], set(weights)
    for node in proto.graph.node:
        if any(name in tainted for name in node.input):
            reached.append(node)
            tainted.update(node.output)
    return reached


def _inputs_of(proto, nodes: list) -> set[str]:
    """What ``nodes`` read that none of them computes and no initializer holds."""
    constants = {t.name for t in proto.graph.initializer}
    computed = {out for node in nodes for out in node.output}
    return {name for node in nodes for name in node.input if name and name not in computed and name not in constants}


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


def _part(proto, starts: set[str], nodes: list):
    """The graph of ``nodes`` alone, fed ``starts``: every tensor they compute an output."""
    from onnx.utils import Extractor

    return Extractor(proto).extract_model(sorted(starts), [out for node in nodes for out in node.output if out])


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
