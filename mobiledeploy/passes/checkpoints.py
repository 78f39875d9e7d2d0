"""Where a refinement can pick up from an earlier one.

The mixed-precision search refines the same model on the same images once a round, each round
with one more layer out of int8. Everything the refinement computed before that layer is what
the round before computed: both sides' activations, the refined weights, the bias shifts. A
``Checkpoints`` kept between the rounds holds the refinement's state at the input of weighted
layers, as many as ``budget`` bytes of activations hold (the late layers first: their
activations are the smallest and the most work lies before them); a later refinement starts at
the last one whose layers before it are refined as they were then, and gives what a fresh
refinement gives, value for value.

A saved activation is made read-only: a later step that would round or rectify it in its own
array (``refine``) makes a new one instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..limits import MAX_CHECKPOINT_BYTES
from ..model.graph import WEIGHTED, uses_after


@dataclass(frozen=True)
class Checkpoint:
    """The refinement's state at the input of a layer: the activations the rest reads, on the
    float and the int8 side, and what it reported of the layers before (``results``)."""

    settings: tuple  # the call's settings, then how each layer before it was kept and ranged
    float_out: dict[str, np.ndarray]
    quant_out: dict[str, np.ndarray]
    results: dict


@dataclass
class Checkpoints:
    """The states one refinement saved, for the next one on the same model and images."""

    budget: int = MAX_CHECKPOINT_BYTES  # bytes of saved activations, both sides
    saved: dict[int, Checkpoint] = field(default_factory=dict)  # position in graph order -> its state
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)  # each layer's refined weights, the last call's
    starts: list[int] = field(default_factory=list)  # where each call started (0: at the input)
    unfinished: bool = False  # a call started and has not finished (it failed: what it saved may not match)

    def places(self, model, order: list, images: int) -> frozenset[int]:
        """The positions in ``order`` (``layer_graph``'s items) to save at: before weighted layers,
        from the last one back, while the activations live there (both sides, float32) fit the
        budget together; none when a layer's output size is unknown."""
        size: dict[str, int] = {}
        for name, _ in order:
            try:
                shape = tuple(model.get_layer(name).output.shape[1:])
            except (AttributeError, ValueError):  # a layer with several outputs, or used twice
                return frozenset()
            if any(d is None for d in shape):
                return frozenset()
            size[name] = int(np.prod(shape)) * images * 4 * 2
        chosen, total = set(), 0
        for index in reversed(range(len(order))):
            if order[index][1]["kind"] not in WEIGHTED:
                continue
            reads = uses_after(order, index)  # what the layers before it leave for the rest
            live = sum(size[name] for name, _ in order[:index] if reads[name])
            if total + live > self.budget:
                break
            chosen.add(index)
            total += live
        return frozenset(chosen)

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
            for array in side.values():
                array.setflags(write=False)
        self.saved[index] = checkpoint

    def clear(self) -> None:
        self.saved.clear()
        self.weights.clear()
