"""ONNX Runtime's calibration once per tensor over a search's rounds (export/onnx_calibration.py):
a round calibrates only what its changed weights reach, from the tensors the round before kept
(or the images), and writes the same int8 file, byte for byte, as a round that lets ONNX Runtime
calibrate the whole graph."""

import numpy as np
import pytest

from mobiledeploy.export import onnx as onnx_export
from mobiledeploy.export.onnx_calibration import Calibrations, live_at
from mobiledeploy.export.onnx_template import Reconverter
from mobiledeploy.options import ExportSettings
from mobiledeploy.passes import mixed
from mobiledeploy.passes.folding import fold_batchnorm
from mobiledeploy.passes.refine import refine_for_int8

pytestmark = pytest.mark.slow  # eight ONNX exports


@pytest.mark.parametrize("budget, outcomes", [(1 << 30, ["whole", "part", "part", "whole"]),
                                             (0, ["whole", "whole", "whole", "whole"])])
def test_each_round_writes_the_file_a_whole_calibration_gives_calibrating_only_what_changed(tiny_model, tmp_path,
                                                                                          budget, outcomes):
    """Rounds as a search takes them: a layer whose int8 layers after it are refined again (their
    ranges change), then a layer after it (where it starts, the tensor the round before changed),
    then the first layer (which changes every tensor but the input's transpose: the whole graph
    again). Within the budget the round before kept the
    tensors where each layer starts; with none kept, every round calibrates the whole graph."""
    folded, _ = fold_batchnorm(tiny_model)
    rng = np.random.default_rng(3)
    batches = [rng.uniform(-1, 1, (10, 24, 24, 3)).astype(np.float32) for _ in range(4)]
    calib = np.concatenate(batches)
    rounds = [(), ("pw",), ("pw", "sep"), ("pw", "sep", "stem")]
    reconverters, calibrations = {"kept": Reconverter(), "whole": Reconverter()}, Calibrations(budget=budget)
    for index, keep in enumerate(rounds):
        left = mixed.float_layers(folded, keep)
        refined, _ = refine_for_int8(folded, calib, keep_float=frozenset(keep), float_tensors=left)
        settings = ExportSettings(float_layers=tuple(sorted(left)))
        following = rounds[index + 1][-1] if index + 1 < len(rounds) else None
        for name in ("kept", "whole"):
            (tmp_path / f"{name}{index}").mkdir()
        onnx_export.export(folded, lambda: iter(batches), tmp_path / f"kept{index}", settings, refined,
                           reconverter=reconverters["kept"], calibrations=calibrations, following=following)
        onnx_export.export(folded, lambda: iter(batches), tmp_path / f"whole{index}", settings, refined,
                           reconverter=reconverters["whole"])
        kept = (tmp_path / f"kept{index}" / "model_int8.onnx").read_bytes()
        assert kept == (tmp_path / f"whole{index}" / "model_int8.onnx").read_bytes(), keep
        assert sum(a.nbytes for values in calibrations.kept.values() for a in values) <= budget
    assert calibrations.outcomes == outcomes


def test_the_tensors_live_at_a_node_are_those_computed_before_it_and_read_from_it_on():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Add", ["a", "b"], ["c"], name="third"),
             helper.make_node("Add", ["c", "w"], ["y"], name="fourth")]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [info("x", TensorProto.FLOAT, [1])], [info("y", TensorProto.FLOAT, [1])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])])
    proto = helper.make_model(graph)
    assert live_at(proto, ["second"]) == ["a"]  # the skip from 'first' to 'third' included
    assert live_at(proto, ["third"]) == ["a", "b"]
    assert live_at(proto, ["fourth", "third"]) == ["a", "b"]  # the first of them in the graph's order
    assert live_at(proto, ["first"]) == ["x"] and live_at(proto, ["missing"]) == []
