"""Accuracy-aware mixed precision: which layers leave int8 (for float, or for 16-bit activations
with ``--precision mixed``), and what that costs.

Given a budget (``--max-disagreement``: points of top-1 agreement with the float model that the int8
files may lose on the held-out images), the pipeline builds full int8 first; when a file is
over budget it ranks the weighted layers by how much SQNR their output tensors lose in those
files (``mobiledeploy analyze``'s "lost dB", summed over the files) and keeps the fewest of the
top-ranked layers in float that bring both files within budget (``fewest``; ``rounds.py`` builds
the trials). A kept layer runs with float weights, and its output stays float through the operators that
follow it (activation, pooling, reshape, softmax) until a layer that is still int8 quantizes
it. Refinement then corrects the int8 layers for what remains.
"""

from __future__ import annotations

from typing import Callable

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
    """Points of top-1 agreement with float lost by the worst int8 file."""
    return max((100.0 * (1.0 - d.agreement) for d in drift), default=0.0)


def ranked(per_artifact: dict, keep) -> list[str]:
    """The weighted layers not yet kept whose output tensors lose SQNR (dB summed over the int8
    files, from ``analyze.analyze``'s rows), the most first; ties in graph order."""
    lost: dict[str, float] = {}
    for rows in per_artifact.values():
        for row in rows:
            if row.weight_layer and row.weight_layer not in keep:
                lost[row.weight_layer] = lost.get(row.weight_layer, 0.0) + max(row.lost_db, 0.0)
    return sorted((name for name, db in lost.items() if db > 0), key=lambda name: -lost[name])


def fewest(count: int, met: Callable[[int], bool]) -> int | None:
    """The fewest top-ranked layers out of int8 that ``met`` the budget, or None when even all
    ``count`` do not. ``met(k)`` builds with the first k and says whether both files are within
    it; each call is a whole build, so: all ``count`` first (a budget out of reach costs one build),
    then 1, 2, 4, ... until one is met, then halving the gap to the last that was not. Assumes that
    more layers out of int8 do not lose more; where they do, the answer still meets the budget."""
    if count <= 0 or not met(count):
        return None
    missed, k = 0, 1  # the most known to miss, the next to try
    while k < count and not met(k):
        missed, k = k, 2 * k
    hit = min(k, count)
    while hit - missed > 1:
        middle = (missed + hit) // 2
        missed, hit = (missed, middle) if met(middle) else (middle, hit)
    return hit


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
