"""Accuracy-aware mixed precision: which layers leave int8 (for float, or for 16-bit activations
with ``--precision mixed``), and what that costs.

Given a budget (``--max-disagreement``: points of top-1 agreement with the float model that the int8
files may lose on the held-out images), the pipeline builds full int8 first; while a file is
over budget it keeps one more weighted layer in float: the one whose output tensors lose the
most SQNR (``mobiledeploy analyze``'s "lost dB"), as the refinement's simulation of the int8
files measures it, or, when there was no refinement, as analyzing the files does (summed over
the files).
A kept layer runs with float weights, and its output stays float through the operators that
follow it (activation, pooling, reshape, softmax) until a layer that is still int8 quantizes
it. Refinement then corrects the int8 layers for what remains.
"""

from __future__ import annotations

import math

from ..errors import MobiledeployError
from ..model.graph import WEIGHTED, layer_graph
from ..reports import CostReport, MixedPrecisionReport
from ..reports import Drift

MAX_FLOAT_LAYERS = 8  # a search that needs more has found a model int8 does not suit


def check_layers(model, names) -> None:
    """A clear error unless every one of ``names`` is a weighted layer of ``model``."""
    weighted = [layer.name for layer in model.layers if type(layer).__name__ in WEIGHTED]
    unknown = [name for name in names if name not in weighted]
    if unknown:
        raise MobiledeployError(
            f"--keep-float: {', '.join(unknown)} is not a convolution or Dense layer of the model; "
            f"expected one of {', '.join(weighted[:8])}{' ...' if len(weighted) > 8 else ''} "
            "(mobiledeploy inspect lists them)"
        )


def float_layers(model, keep) -> frozenset[str]:
    """The kept weighted layers plus every layer fed only by float layers that has no weights
    of its own (activations, pooling, reshapes, the softmax), in graph order."""
    graph = layer_graph(model)
    result = set(keep)
    for name, node in graph.items():
        if node["kind"] not in WEIGHTED and node["inputs"] and all(p in result for p in node["inputs"]):
            result.add(name)
    return frozenset(result)


def worst_loss(drift: tuple[Drift, ...]) -> float:
    """Points of top-1 agreement with float lost by the worst int8 file. Rounded to 1e-9: 99 of 100
    images agreeing is a loss of 1 point, not of 100 * (1 - 0.99) = 1.0000000000000009."""
    return max((round(100.0 * (1.0 - d.agreement), 9) for d in drift), default=0.0)


def lost_db(errors: dict[str, tuple[float, float]], model) -> dict[str, float]:
    """The SQNR each weighted layer's output loses, from refinement's simulation of the int8 files
    (``refine_for_int8``'s ``errors``: each rounded tensor's signal and error, in graph order), as
    ``mobiledeploy analyze`` measures it on the files: a tensor's SQNR minus the one before it.
    A weighted layer fused with its activation is measured at the activation's output; the first
    tensor has nothing before it (as in the files' tensor maps, the input is not measured)."""
    graph = layer_graph(model)
    lost: dict[str, float] = {}
    previous = math.inf
    for name, (signal, error) in errors.items():
        sqnr = math.inf if error == 0 else 10 * math.log10(max(signal, 1e-30) / error)
        parents = graph[name]["inputs"]
        owner = name if graph[name]["kind"] in WEIGHTED else \
            parents[0] if len(parents) == 1 and graph[parents[0]]["kind"] in WEIGHTED else None
        if owner is not None and math.isfinite(previous) and math.isfinite(sqnr):
            lost[owner] = lost.get(owner, 0.0) + max(previous - sqnr, 0.0)
        previous = sqnr
    return lost


def summed_lost_db(per_artifact: dict) -> dict[str, float]:
    """The SQNR each weighted layer's output loses, summed over the int8 files, from
    ``analyze.analyze``'s rows."""
    lost: dict[str, float] = {}
    for rows in per_artifact.values():
        for row in rows:
            if row.weight_layer:
                lost[row.weight_layer] = lost.get(row.weight_layer, 0.0) + max(row.lost_db, 0.0)
    return lost


def most_sensitive(lost: dict[str, float], keep) -> str | None:
    """The weighted layer, not yet kept, whose output loses the most SQNR (``lost_db`` or
    ``summed_lost_db``)."""
    candidates = {name: db for name, db in lost.items() if name not in keep}
    return max(candidates, key=candidates.get) if candidates else None


def describe(costs: CostReport, keep, budget: float | None, drift: tuple[Drift, ...],
             kept_in: str = "float") -> MixedPrecisionReport:
    """What keeping ``keep`` in float (or with 16-bit activations: ``kept_in="int16"``) costs
    (``costs``: the folded model's, evaluation.costs) and whether the quantized files met ``budget``."""
    kept_macs = sum(layer.macs for layer in costs.layers if layer.name in set(keep))
    loss = worst_loss(drift)
    return MixedPrecisionReport(
        max_disagreement=budget, float_layers=tuple(keep), float_mac_share=kept_macs / max(costs.macs, 1),
        agreement_loss=loss, met=budget is None or loss <= budget, kept_in=kept_in,
    )
