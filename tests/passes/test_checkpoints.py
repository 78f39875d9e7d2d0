"""The search's refinements pick up where the round before left them (passes/checkpoints.py): the
same model, report and simulated errors as a fresh refinement, value for value, from the input
of the last weighted layer refined as before."""

import numpy as np

from mobiledeploy.model.graph import layer_graph
from mobiledeploy.passes import mixed
from mobiledeploy.passes.checkpoints import Checkpoints
from mobiledeploy.passes.folding import fold_batchnorm
from mobiledeploy.passes.refine import refine_for_int8


def _refine(folded, calib, keep, **kwargs):
    errors: dict = {}
    refined, report = refine_for_int8(folded, calib, keep_float=frozenset(keep), clip_activations=True,
                                      float_tensors=mixed.float_layers(folded, keep), errors=errors, **kwargs)
    return refined, report, errors


def _same(a, b) -> bool:
    (model_a, report_a, errors_a), (model_b, report_b, errors_b) = a, b
    return all(np.array_equal(x, y) for x, y in zip(model_a.get_weights(), model_b.get_weights())) \
        and all(getattr(model_a.get_layer(n), "max_value", None) == getattr(model_b.get_layer(n), "max_value", None)
                for n in ("stem_relu", "dw_relu")) \
        and (report_a.per_layer, report_a.clips, report_a.validated, report_a.rounded_to_nearest, report_a.fallbacks) \
        == (report_b.per_layer, report_b.clips, report_b.validated, report_b.rounded_to_nearest, report_b.fallbacks) \
        and list(errors_a.items()) == list(errors_b.items())


def test_each_round_resumes_at_the_last_layer_refined_as_before_and_gives_a_fresh_refinement(tiny_model):
    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(6).uniform(-1, 1, (48, 24, 24, 3)).astype(np.float32)
    position = {name: i for i, name in enumerate(layer_graph(folded))}
    checkpoints, cache = Checkpoints(), {}
    # the search's rounds: a late layer first, then the first one, then one inside the residual block
    rounds = [(), ("logits",), ("logits", "stem"), ("logits", "stem", "sep")]
    for keep in rounds:
        resumed = _refine(folded, calib, keep, checkpoints=checkpoints, rounding_cache=cache)
        assert _same(resumed, _refine(folded, calib, keep)), keep
    assert checkpoints.starts == [0, position["logits"], position["stem"], position["sep"]]
    assert any(not a.flags.writeable for c in checkpoints.saved.values() for a in c.quant_out.values())
    assert calib.flags.writeable  # the caller's images are left as they were


def test_the_budget_keeps_the_latest_layers_and_a_round_before_them_starts_at_the_input(tiny_model):
    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(7).uniform(-1, 1, (32, 24, 24, 3)).astype(np.float32)
    order = list(layer_graph(folded).items())
    position = {name: i for i, (name, _) in enumerate(order)}
    everything = Checkpoints(budget=1 << 40).places(folded, order, len(calib))
    assert everything == {i: True for i, (_, node) in enumerate(order)
                          if node["kind"] in {"Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"}}
    # the Dense layer's input: 16 pooled values an image, both sides, float32
    small = Checkpoints(budget=16 * len(calib) * 4 * 2, int8_budget=0)
    assert small.places(folded, order, len(calib)) == {position["logits"]: True}
    for keep in ((), ("sep",), ("sep", "logits")):
        resumed = _refine(folded, calib, keep, checkpoints=small)
        assert _same(resumed, _refine(folded, calib, keep)), keep
    assert small.starts == [0, 0, position["logits"]]
    assert set(small.saved) == {position["logits"]}


def test_a_refinement_that_failed_midway_leaves_nothing_to_resume_from(tiny_model):
    """A call that raised after refining some layers for its own settings (here its progress report
    raises) had saved their weights: the next call must not resume from the states an earlier call
    left after them, and gives a fresh refinement."""
    import pytest

    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(8).uniform(-1, 1, (32, 24, 24, 3)).astype(np.float32)
    checkpoints = Checkpoints()
    _refine(folded, calib, (), checkpoints=checkpoints)

    def fail_after_two(done, total):
        if done == 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        _refine(folded, calib, ("stem",), checkpoints=checkpoints, progress=fail_after_two)
    again = _refine(folded, calib, (), checkpoints=checkpoints)
    assert checkpoints.starts[-1] == 0 and _same(again, _refine(folded, calib, ()))


def test_earlier_places_keep_the_int8_side_alone_and_a_round_resumed_there_runs_the_float_side_again(tiny_model):
    """Before the places that save both sides, the int8 side alone is saved (within its own budget):
    a round resuming there runs the float model again up to it, as one traced graph once it gave
    the layers' own values on the first images, else one layer at a time, and either way gives a
    fresh refinement, value for value."""
    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(9).uniform(-1, 1, (40, 24, 24, 3)).astype(np.float32)
    order = list(layer_graph(folded).items())
    position = {name: i for i, (name, _) in enumerate(order)}
    places = Checkpoints(budget=16 * len(calib) * 4 * 2).places(folded, order, len(calib))  # both sides: Dense's input
    assert places[position["logits"]] is True and places[position["sep"]] is False
    assert set(places) == set(Checkpoints(budget=1 << 40).places(folded, order, len(calib)))
    assert not Checkpoints(budget=0, int8_budget=0).places(folded, order, len(calib))
    for traced in (None, False):  # None: checked on the first images, then traced; False: one layer at a time
        checkpoints = Checkpoints(budget=16 * len(calib) * 4 * 2, traced=traced)
        for keep in ((), ("logits",), ("logits", "sep")):
            resumed = _refine(folded, calib, keep, checkpoints=checkpoints, chunk=16)  # chunks of 16, 16 and 8
            assert _same(resumed, _refine(folded, calib, keep)), (traced, keep)
        assert checkpoints.starts == [0, position["logits"], position["sep"]]
        assert checkpoints.saved[position["sep"]].float_out is None
        assert checkpoints.saved[position["logits"]].float_out is not None
        assert checkpoints.traced is (traced is None)
    # the float side a resumed round reads, both ways: the same arrays
    checkpoints = Checkpoints()
    traced = checkpoints.float_side(folded, calib, 16, order, position["sep"])
    alone = Checkpoints(traced=False).float_side(folded, calib, 16, order, position["sep"])
    assert checkpoints.traced and traced.keys() == alone.keys() and len(traced) >= 1
    assert all(np.array_equal(traced[name], alone[name]) for name in traced)


def test_a_refinement_into_the_model_an_earlier_call_returned_gives_a_fresh_refinement(tiny_model):
    """The search refines each round into the model the round before returned (``into``): it must
    get the float weights and the ReLU caps back first. Here a round that clips the caps is followed
    by one that does not, and one that keeps a refined layer in float."""
    folded, _ = fold_batchnorm(tiny_model)
    calib = np.random.default_rng(9).uniform(-1, 1, (32, 24, 24, 3)).astype(np.float32)
    reused = None
    for keep, clip in (((), True), (("stem",), False), (("stem", "sep"), True)):
        kwargs = dict(keep_float=frozenset(keep), float_tensors=mixed.float_layers(folded, keep),
                      clip_activations=clip)
        again, report = refine_for_int8(folded, calib, into=reused, **kwargs)
        fresh, fresh_report = refine_for_int8(folded, calib, **kwargs)
        assert reused is None or again is reused
        assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), fresh.get_weights())), keep
        caps = [(layer.name, getattr(layer, "max_value", None)) for layer in again.layers]
        assert caps == [(layer.name, getattr(layer, "max_value", None)) for layer in fresh.layers], keep
        assert (report.per_layer, report.clips) == (fresh_report.per_layer, fresh_report.clips)
        if clip:  # the round really lowered a cap, which the next round must restore
            assert report.clips and any(cap < 6.0 for _, cap in report.clips)
        reused = again
