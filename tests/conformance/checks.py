"""What every family must pass, whatever it is built from and however it is saved: quantize with the
defaults exits 0, the fold is verified, the int8 TFLite file has no float tensor, every Conv/Gemm of
the int8 ONNX file is int8, both int8 files agree with float on the held-out digits at least as
often as the family's floor, and bench, inspect and analyze run on the build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mobiledeploy.runtime.onnx_session import float_compute_nodes
from conftest import cli

ROOT = Path(__file__).resolve().parents[2]
# Agreement with float of both int8 files on the 100 held-out digits, at least: the lower of the
# agreements measured on two CPUs (the same in every save format and with either names; see
# docs/families.md) less 6 points. On 100 images one image is a point, and another CPU trains
# another model (TensorFlow's kernels round differently): v1, whose many near-ties any rounding
# tips, agreed 81% on an AMD EPYC and 73% on an Intel Xeon.
FLOORS = {"v1": 0.67, "v1_grey": 0.70, "fd": 0.92, "v2": 0.81, "v2_wide": 0.81, "v3small": 0.91,
          "v3large": 0.90, "efflite": 0.86, "dense": 0.90}


def zoo(folder: Path, matrix) -> dict[tuple[str, str, str], Path]:
    """Each family of ``matrix`` ((family, format, names) cases) trained once, saved as each case asks."""
    from families import save, trained

    paths = {}
    for family in dict.fromkeys(case[0] for case in matrix):
        model = trained(family)
        for _, fmt, names in (case for case in matrix if case[0] == family):
            paths[family, fmt, names] = save(model, family, fmt, names, folder)
    return paths


def quantize_and_check(model: Path, family: str, out: Path) -> dict:
    """quantize with the defaults, and every check of the module docstring but the measuring
    commands; the manifest."""
    result = cli("quantize", model, "--calib", ROOT / "calibration_data", "-o", out, "--num-calib", 64,
                 "--num-holdout", 100, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["folding"]["passed"] and manifest["folding"]["folded"], manifest["folding"]
    assert _float_tensors(out / "model_int8.tflite") == [], "the int8 TFLite file holds float tensors"
    assert float_compute_nodes(out / "model_int8.onnx") == [], "a Conv/Gemm of the int8 ONNX file is float"
    agreement = {row["artifact"]: row["agreement"] for row in manifest["drift"]["rows"]}
    assert min(agreement.values()) >= FLOORS[family], agreement
    return manifest


def measuring_commands_run(out: Path) -> None:
    """bench, inspect and analyze on a build (what used to refuse builds quantize made)."""
    bench = cli("bench", out, "--num-runs", 3, "--min-secs", 0, "--warmup-runs", 1, "--json")
    assert bench.exit_code == 0, bench.output[-2000:]
    assert len(json.loads(bench.output)["rows"]) == 4
    inspect = cli("inspect", out, "--json")
    assert inspect.exit_code == 0 and json.loads(inspect.output)["macs"] > 0, inspect.output[-2000:]
    analyze = cli("analyze", out, "--data", ROOT / "eval_data" / "3", "--max-images", 16, "--json")
    assert analyze.exit_code == 0, analyze.output[-2000:]
    assert all(len(rows) >= 3 for rows in json.loads(analyze.output)["layers"].values())


def _float_tensors(path: Path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    return [t["name"] for t in Interpreter(str(path)).get_tensor_details()
            if np.issubdtype(t["dtype"], np.floating)]


def conformance_tests(matrix: list[tuple[str, str, str]]):
    """The module fixture building ``matrix``'s zoo once and the test that quantizes each file of
    it with the defaults (and runs the measuring commands on each family's Keras 3 file with
    Keras' names), for a test module to bind at its top level."""

    @pytest.fixture(scope="module")
    def models(tmp_path_factory):
        return zoo(tmp_path_factory.mktemp("zoo"), matrix)

    @pytest.mark.parametrize("family, fmt, names", matrix, ids=["-".join(case) for case in matrix])
    def test_quantizes_to_full_int8_with_the_defaults(models, tmp_path, family, fmt, names):
        out = tmp_path / "build"
        quantize_and_check(models[family, fmt, names], family, out)
        if fmt == "keras3.keras" and names == "keras":
            measuring_commands_run(out)

    return models, test_quantizes_to_full_int8_with_the_defaults
