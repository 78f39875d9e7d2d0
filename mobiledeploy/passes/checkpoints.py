"""Where a refinement can pick up from an earlier one.

The mixed-precision search refines the same model on the same images once a round, each round
with one more layer out of int8. Everything the refinement computed before that layer is what
the round before computed: both sides' activations, the refined weights, the bias shifts. A
``Checkpoints`` kept between the rounds holds the refinement's state at the input of weighted
layers, as many as ``budget`` bytes of activations hold (the late layers first: their
activations are the smallest and the most work lies before them), and before those the int8
side alone, as many as ``int8_budget`` bytes hold (the float side up to an early layer is a short
forward pass to run again; the int8 side's is a refinement); a later refinement starts at the
last one whose layers before it are refined as they were then, and gives what a fresh refinement
gives, value for value.

A saved activation is made read-only: a later step that would round or rectify it in its own
array (``refine``) makes a new one instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..limits import MAX_CHECKPOINT_BYTES
from ..model.graph import WEIGHTED, layer_outputs, uses_after


@dataclass(frozen=True)
class Checkpoint:
    """The refinement's state at the input of a layer: the activations the rest reads, on the
    float and the int8 side (the float side's None where only the int8 side was saved), and what
    it reported of the layers before (``results``)."""

    settings: tuple  # the call's settings, then how each layer before it was kept and ranged
    float_out: dict[str, np.ndarray] | None
    quant_out: dict[str, np.ndarray]
    results: dict


@dataclass
class Checkpoints:
    """The states one refinement saved, for the next one on the same model and images."""

    budget: int = MAX_CHECKPOINT_BYTES  # bytes of saved activations at the places that save both sides
    int8_budget: int = MAX_CHECKPOINT_BYTES // 2  # bytes of saved activations at the earlier places, int8 side alone
    saved: dict[int, Checkpoint] = field(default_factory=dict)  # position in graph order -> its state
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)  # each layer's refined weights, the last call's
    starts: list[int] = field(default_factory=list)  # where each call started (0: at the input)
    unfinished: bool = False  # a call started and has not finished (it failed: what it saved may not match)
    traced: bool | None = None  # whether the float model traced as one graph gives its layers' values (float_side)

    def places(self, model, order: list, images: int) -> dict[int, bool]:
        """The positions in ``order`` (``layer_graph``'s items) to save at, each with whether the
        float side is saved too: before weighted layers, from the last one back, both sides while
        the activations live there (float32) fit ``budget`` together, then the int8 side alone
        while they fit ``int8_budget``; none when a layer's output size is unknown."""
        size: dict[str, int] = {}
        for name, _ in order:
            try:
                shape = tuple(model.get_layer(name).output.shape[1:])
            except (AttributeError, ValueError):  # a layer with several outputs, or used twice
                return {}
            if any(d is None for d in shape):
                return {}
            size[name] = int(np.prod(shape)) * images * 4
        chosen: dict[int, bool] = {}
        both, total = True, 0
        for index in reversed(range(len(order))):
            if order[index][1]["kind"] not in WEIGHTED:
                continue
            reads = uses_after(order, index)  # what the layers before it leave for the rest
            live = sum(size[name] for name, _ in order[:index] if reads[name])
            if both and total + 2 * live > self.budget:
                both, total = False, 0  # from here on the int8 side alone
            if not both and total + live > self.int8_budget:
                break
            chosen[index] = both
            total += 2 * live if both else live
        return chosen

    def latest(self, settings: list) -> tuple[int, Checkpoint | None]:
        """The last saved state whose settings are ``settings`` up to it (the call's settings,
        then each layer's in graph order), and its position; (0, None) when there is none. A call
        that did not finish (``finished``) leaves nothing to resume from: it may have saved some
        layers' weights for other settings than the states it left."""
        if self.unfinished:
            self.clear()
        self.unfinished = True
        index = max((i for i, c in self.saved.items() if c.settings == tuple(settings[:i + 1])), default=0)
        self.starts.append(index)
        return index, self.saved.get(index)

    def finished(self) -> None:
        self.unfinished = False

    def save(self, index: int, checkpoint: Checkpoint) -> None:
        for side in (checkpoint.float_out, checkpoint.quant_out):
            for array in (side or {}).values():
                array.setflags(write=False)
        self.saved[index] = checkpoint

    def clear(self) -> None:
        self.saved.clear()
        self.weights.clear()

    def float_side(self, model, images: np.ndarray, chunk: int, order: list, start: int) -> dict[str, np.ndarray]:
        """The float model's outputs that the layers from position ``start`` of ``order`` on read:
        what a place that saved the int8 side alone leaves to run again (they do not depend on the
        refinement). The layers before ``start`` run as one traced graph (``predict_on_batch``), a
        few times faster than one layer at a time, if on the first ``chunk`` images it gives the
        same values as they do one at a time (checked once: ``traced``); else, or where the
        framework cannot cut the model there, one layer at a time."""
        import keras

        reads = uses_after(order, start)
        live = {name: images for name, node in order[:start] if reads[name] and node["kind"] == "InputLayer"}
        wanted = [name for name, node in order[:start] if reads[name] and node["kind"] != "InputLayer"]
        if not wanted:
            return live
        try:
            probe = keras.Model(model.inputs[0], [model.get_layer(name).output for name in wanted])
        except (ValueError, TypeError, AttributeError, KeyError):  # a layer used twice, or with several outputs
            probe = None
        if probe is not None and self.traced is None:
            first = _traced(probe, wanted, images[:chunk], chunk)
            alone = _one_at_a_time(model, images[:chunk], chunk, order[:start], reads)
            self.traced = all(np.array_equal(first[name], alone[name]) for name in wanted)
        if probe is None or not self.traced:
            return _one_at_a_time(model, images, chunk, order[:start], reads)
        return {**live, **_traced(probe, wanted, images, chunk)}


def _traced(probe, wanted: list[str], images: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """``probe``'s outputs (the layers ``wanted``) on ``images``, ``chunk`` images a call."""
    live: dict[str, np.ndarray] = {}
    for begin in range(0, len(images), chunk):
        outputs = probe.predict_on_batch(images[begin:begin + chunk])
        for name, out in zip(wanted, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            if name not in live:
                live[name] = np.empty((len(images), *out.shape[1:]), np.float32)
            live[name][begin:begin + len(out)] = out
    return live


def _one_at_a_time(model, images: np.ndarray, chunk: int, before: list, reads: dict[str, int]) -> dict[str, np.ndarray]:
    """The outputs among the layers ``before`` (the first of ``layer_graph``'s items) that are
    still ``reads``, from those layers run one at a time."""
    forward = layer_outputs(model, images, chunk)
    try:
        return {name: x for (name, _), (_, x) in zip(before, forward) if reads[name]}
    finally:
        forward.close()
