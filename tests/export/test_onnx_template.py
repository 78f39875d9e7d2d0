"""tf2onnx once a search (export/onnx_template.py): the graph of a model whose weights changed is
the first conversion's, byte for byte what converting it again gives, or a plain conversion when
the template cannot be trusted."""

import numpy as np
import pytest

from mobiledeploy.export.onnx import _to_onnx
from mobiledeploy.export.onnx_edits import canonical
from mobiledeploy.export.onnx_template import Reconverter
from mobiledeploy.passes.folding import fold_batchnorm

pytestmark = pytest.mark.slow  # six tf2onnx conversions


def _convert(model):
    return canonical(_to_onnx(model, 13))


def _bytes(proto) -> bytes:
    return proto.SerializeToString(deterministic=True)


def _with_other_weights(model, seed: int):
    import keras

    rng = np.random.default_rng(seed)
    other = keras.Model.from_config(model.get_config())
    other.set_weights([(w + rng.normal(0, 0.05, w.shape)).astype(np.float32) for w in model.get_weights()])
    return other


def test_later_graphs_come_from_the_template_and_match_a_fresh_conversion(tiny_model):
    folded, _ = fold_batchnorm(tiny_model)
    rounds = [_with_other_weights(folded, seed) for seed in (1, 2, 3)]
    reconverter = Reconverter()
    graphs = [reconverter.convert(model, _convert) for model in rounds]
    assert reconverter.outcomes == ["converted", "checked", "template"]
    for model, graph in zip(rounds[1:], graphs[1:]):
        assert _bytes(graph) == _bytes(_convert(model))
    assert _bytes(graphs[1]) != _bytes(graphs[2])  # the weights did change


def test_a_template_that_does_not_give_back_the_first_graph_is_not_used(tiny_model):
    """The tiny model's classifier has a bias of zeros, whose Add tf2onnx drops; the template's
    markers keep it. The template does not give back the first graph, so every round converts."""
    folded, _ = fold_batchnorm(tiny_model)
    assert not folded.get_layer("logits").get_weights()[1].any()
    reconverter = Reconverter()
    graphs = [reconverter.convert(model, _convert) for model in (folded, _with_other_weights(folded, 1))]
    assert reconverter.outcomes == ["converted", "converted"] and reconverter.template is None
    assert len(graphs[1].graph.node) == len(graphs[0].graph.node) + 1  # the Add of a bias that is not zero


def test_a_graph_that_differs_only_in_its_weights_takes_the_last_tensor_map_which_a_fresh_map_equals(tiny_model):
    """Which tensor holds which layer's output does not depend on the weights: a later round's graph
    takes the map of the one before; a graph of another structure gets a map of its own. (Biases
    well away from zero here: where a bias is too small to tell the tensors before and after it
    apart, the matcher may take either, in a fresh map as in a kept one.)"""
    import keras

    from mobiledeploy.export import tensor_map

    folded, _ = fold_batchnorm(tiny_model)
    rounds = []
    for seed in (4, 5):
        rng = np.random.default_rng(seed)
        model = keras.Model.from_config(folded.get_config())
        model.set_weights([(w * rng.uniform(0.8, 1.2, w.shape) if w.ndim > 1 else rng.normal(0, 1, w.shape))
                           .astype(np.float32) for w in folded.get_weights()])
        rounds.append(model)
    probe = np.random.default_rng(0).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
    built: list[str] = []

    def fresh(model, proto, label):
        built.append(label)
        return tensor_map.build_map(model, tensor_map.layer_outputs(model, probe), tensor_map.onnx_graph(proto, probe))

    reconverter = Reconverter()
    first, second = rounds
    graphs = [reconverter.convert(model, _convert) for model in rounds]  # as the search makes them
    mapped = reconverter.tensor_map(first, graphs[0], lambda: fresh(first, graphs[0], "first"))
    again = reconverter.tensor_map(second, graphs[1], lambda: fresh(second, graphs[1], "second"))
    assert built == ["first"] and again is mapped
    assert again == fresh(second, graphs[1], "check")  # what mapping the second graph would have given
    assert len(mapped.tensors) == len(folded.layers) and not mapped.unmapped
    smaller = type(graphs[1])()
    smaller.CopyFrom(graphs[1])
    smaller.graph.node.pop()  # another graph: its own map
    reconverter.tensor_map(second, smaller, lambda: fresh(second, graphs[1], "other graph"))
    assert built[-1] == "other graph"
