"""Attacks through model files, through the real CLI under a memory limit: a SavedModel that runs
code when loaded, HDF5 weights stored outside the file or over budget, config bombs, NaN weights
and a FIFO as the model. Each must end in exit 1 with one line, nothing run and nothing partial."""
# ruff: noqa: F811 (the fixture `work` is imported by name and taken as an argument)

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from attackers import PEAK_MB, SECRET, h5_copy, replace_kernel, no_partial, no_secret_in, one_line_error, run_cli, work  # noqa: F401 (work is a fixture)

pytestmark = pytest.mark.slow


# --- model files ---------------------------------------------------------------------------


def test_savedmodel_that_runs_code_when_loaded_runs_nothing(work, tmp_path):
    """saved_model.pb holds a resource whose initializer writes a file when TensorFlow restores it;
    keras_metadata.pb describes a harmless conv net. The variables are read from the checkpoint."""
    import tensorflow as tf

    marker = tmp_path / "PWNED"
    model = work["keras_model"]

    class Hostile(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="hostile")

        def _initialize(self):
            return tf.io.write_file(str(marker), "code ran")

    model.hostile = Hostile()
    model.save(tmp_path / "sm", save_format="tf")
    del model.hostile
    marker.unlink(missing_ok=True)  # saving ran it once, in this process
    run = run_cli("inspect", tmp_path / "sm")
    assert run.code == 0 and "total:" in run.stdout, run.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.parametrize("attack, phrase", [
    ("external", "external file"), ("external link", "external link"), ("soft link", "soft link"),
    ("virtual", "virtual"), ("declares 12 GB", "declares"), ("strings", "not numbers"),
])
def test_h5_weights_from_outside_the_file_or_over_budget_are_refused(work, tmp_path, attack, phrase):
    import h5py

    path = h5_copy(work, tmp_path, "model.h5")
    secret = work["folder"] / "secret.bin"

    def make(group, shape):
        if attack == "external":
            group.create_dataset("kernel:0", shape=shape, dtype="f4", external=[(str(secret), 0, 4 * int(np.prod(shape)))])
        elif attack == "external link":
            with h5py.File(tmp_path / "other.h5", "w") as other:
                other.create_dataset("k", data=np.frombuffer(SECRET[:4 * int(np.prod(shape))].ljust(
                    4 * int(np.prod(shape)), b"\0"), "f4").reshape(shape))
            group["kernel:0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "k")
        elif attack == "soft link":
            group["kernel:0"] = h5py.SoftLink("/model_weights/d/d/kernel:0")
        elif attack == "virtual":
            layout = h5py.VirtualLayout(shape=shape, dtype="f4")
            layout[...] = h5py.VirtualSource(str(tmp_path / "other.h5"), "k", shape=shape)
            group.create_virtual_dataset("kernel:0", layout)
        elif attack == "declares 12 GB":
            group.create_dataset("kernel:0", shape=shape, dtype="f4")
            group.create_dataset("padding", shape=(1024, 1024, 1024, 3), dtype="f4", chunks=(64, 64, 64, 1))
        else:
            group.create_dataset("kernel:0", data=np.array([b"x"] * int(np.prod(shape))).reshape(shape))

    replace_kernel(path, make)
    run = run_cli("inspect", path)
    one_line_error(run, phrase)
    assert run.peak_mb < PEAK_MB


def _config_h5(tmp_path: Path, config) -> Path:
    import h5py

    path = tmp_path / "config.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = config if isinstance(config, str) else json.dumps(config)
        handle.attrs["keras_version"] = "2.8.0"
        handle.create_group("model_weights")
    return path


def _functional(*layers) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers),
                                                  "input_layers": [["in", 0, 0]], "output_layers": [[layers[-1]["name"], 0, 0]]}}


def _input(shape=(16, 16, 3)) -> dict:
    return {"class_name": "InputLayer", "name": "in", "inbound_nodes": [],
            "config": {"name": "in", "batch_input_shape": [None, *shape], "dtype": "float32"}}


def _conv(name, filters, source="in", **extra) -> dict:
    return {"class_name": "Conv2D", "name": name, "inbound_nodes": [[[source, 0, 0, {}]]],
            "config": {"name": name, "filters": filters, "kernel_size": [3, 3], "strides": [1, 1],
                       "padding": "same", "activation": "linear", "use_bias": True, **extra}}


@pytest.mark.parametrize("attack, phrase", [
    ("4,000,000 filters", "parameters"), ("1,000,000 filters on a 64x64 input", "values per image"), ("flattened huge input", "values per image"),
    ("nested 100,000 deep", "nested deeper"), ("a list where a layer belongs", "corrupt"),
    ("a layer config that is a list", "not a JSON object"), ("a Lambda", "refused"),
    ("an unknown operation", "operation"), ("not JSON", "not valid JSON"),
])
def test_hostile_model_configs_are_refused_before_keras_builds_them(tmp_path, attack, phrase):
    if attack == "4,000,000 filters":
        config = _functional(_input((1, 1, 3)), _conv("c1", 4_000_000))
    elif attack == "1,000,000 filters on a 64x64 input":
        config = _functional(_input((64, 64, 3)), _conv("c1", 1_000_000))
    elif attack == "flattened huge input":
        config = _functional(_input((16384, 16384, 3)),
                             {"class_name": "Flatten", "name": "f", "inbound_nodes": [[["in", 0, 0, {}]]],
                              "config": {"name": "f"}})
    elif attack == "nested 100,000 deep":
        config = '{"class_name": "Functional", "config": ' + "[" * 100_000 + "]" * 100_000 + "}"
    elif attack == "a list where a layer belongs":
        config = {"class_name": "Functional", "config": {"name": "m", "layers": [[1, 2]]}}
    elif attack == "a layer config that is a list":
        config = _functional(_input(), {"class_name": "Conv2D", "name": "c", "config": [1, 2], "inbound_nodes": []})
    elif attack == "a Lambda":
        config = _functional(_input(), {"class_name": "Lambda", "name": "l", "inbound_nodes": [[["in", 0, 0, {}]]],
                                        "config": {"name": "l", "function": ["4wEAAAAAAAAA", None, None]}})
    elif attack == "an unknown operation":
        config = {"class_name": "Functional", "config": {"name": "m", "layers": [
            {"module": "keras.src.ops.numpy", "class_name": "Einsum", "name": "e", "config": {"name": "e"},
             "inbound_nodes": []}]}}
    else:
        config = "{not json"
    run = run_cli("inspect", _config_h5(tmp_path, config))
    one_line_error(run, phrase)
    assert run.peak_mb < PEAK_MB


def test_keras_archive_whose_config_inflates_to_2_gib_is_refused(work, tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("config.json", "w", force_zip64=True) as member:
            member.write(b'{"class_name": "Functional", "config": {"layers": []}, "pad": "')
            block = b" " * (1 << 24)
            for _ in range(128):  # 2 GiB of spaces, a few MB compressed
                member.write(block)
            member.write(b'"}')
        archive.writestr("metadata.json", "{}")
    assert path.stat().st_size < 10 << 20
    run = run_cli("inspect", path)
    one_line_error(run, "inflates to")
    assert run.peak_mb < PEAK_MB


def test_nan_weights_and_a_fifo_as_model_are_refused(work, tmp_path):
    import h5py

    path = h5_copy(work, tmp_path, "nan.h5")
    with h5py.File(path, "r+") as handle:
        handle["model_weights/c1/c1/bias:0"][0] = np.nan
    one_line_error(run_cli("inspect", path), "NaN or Inf")
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    one_line_error(run_cli("inspect", fifo, timeout=60), "not a regular file")


# --- build folders and their manifests ------------------------------------------------------


