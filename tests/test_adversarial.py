"""Attacks on every input, through the real CLI in a child process under a memory limit.

Each case builds a hostile input (a model file that runs code or reads other files, a manifest
that points outside its folder, a small file that declares gigabytes, a FIFO where a file
belongs, an output path that would destroy the inputs) and asserts what the README promises:
exit 1 with one line and no traceback (exit 2 for bad options), no code from the file ran (a
marker file stays absent), no byte from outside the inputs reaches an output, no partial output
folder is left, and the child's peak memory stays under the budget.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, write_images

pytestmark = pytest.mark.slow

ADDRESS_SPACE = 4 << 30  # the child's virtual memory: TensorFlow imports within 2 GiB
PEAK_MB = 2000  # what a child may use at its peak (resident), whatever the input declares
SECRET = b"MOBILEDEPLOY-SECRET-0123456789abcdef" * 4  # bytes of a file outside the inputs


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    peak_mb: float


def run_cli(*args, cwd: Path | None = None, timeout: float = 240) -> Run:
    """The real CLI in a child process with its address space limited; its own peak memory."""
    import tempfile
    import threading

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-m", "mobiledeploy", *(os.fsdecode(a) if isinstance(a, (Path, bytes)) else str(a) for a in args)], cwd=cwd, env=env,
                                 preexec_fn=limit, stdout=out, stderr=err)
        timer = threading.Timer(timeout, child.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)  # this child's own resource use
        finally:
            timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if child.returncode == -9:
        pytest.fail(f"mobiledeploy {' '.join(map(str, args))} hung for {timeout} s")
    return Run(child.returncode, stdout, stderr, usage.ru_maxrss / 1024)


def one_line_error(run: Run, *phrases: str, code: int = 1) -> None:
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert run.code == code, (run.code, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert lines and lines[-1].startswith("error:") and len([l for l in lines if l.startswith("error:")]) == 1, lines
    for phrase in phrases:
        assert phrase in lines[-1], lines[-1]


def no_partial(folder: Path) -> None:
    assert not list(folder.rglob(".*.partial-*")), list(folder.rglob(".*.partial-*"))


def no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET[:32] not in path.read_bytes(), path


# --- inputs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """A tiny Keras 2 model (.h5), a calibration folder, a labelled eval folder, a secret file
    and a build of the model, made once."""
    import tf_keras
    from tf_keras import layers

    folder = tmp_path_factory.mktemp("adversarial")
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, name="c1")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(6.0, name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(2, activation="softmax", name="d")(x)
    model = tf_keras.Model(inputs, outputs)
    model.save(folder / "model.h5")
    calib = folder / "calib"
    write_images(calib, 12, size=20, seed=3)
    data = folder / "eval"
    write_images(data / "a", 3, size=20, seed=4)
    write_images(data / "b", 3, size=20, seed=5)
    (folder / "secret.bin").write_bytes(SECRET)
    build = folder / "build"
    result = run_cli("quantize", folder / "model.h5", "--calib", calib, "-o", build, "--num-calib", 8,
                     "--num-holdout", 2, "--refine", "none")
    assert result.code == 0, result.stderr[-3000:]
    return {"folder": folder, "model": folder / "model.h5", "calib": calib, "data": data, "build": build,
            "keras_model": model}


def _h5_copy(work, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    shutil.copy(work["model"], path)
    return path


def _replace_kernel(path: Path, make) -> None:
    import h5py

    with h5py.File(path, "r+") as handle:
        group = handle["model_weights/c1/c1"]
        shape = group["kernel:0"].shape
        del group["kernel:0"]
        make(group, shape)


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

    path = _h5_copy(work, tmp_path, "model.h5")
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

    _replace_kernel(path, make)
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

    path = _h5_copy(work, tmp_path, "nan.h5")
    with h5py.File(path, "r+") as handle:
        handle["model_weights/c1/c1/bias:0"][0] = np.nan
    one_line_error(run_cli("inspect", path), "NaN or Inf")
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    one_line_error(run_cli("inspect", fifo, timeout=60), "not a regular file")


# --- build folders and their manifests ------------------------------------------------------


def _copy_build(work, tmp_path: Path) -> Path:
    build = tmp_path / "build"
    shutil.copytree(work["build"], build)
    return build


def _edit_manifest(build: Path, edit) -> None:
    path = build / "manifest.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def _entry(content: dict, name: str) -> dict:
    return next(f for f in content["files"] if f["file"] == name)


@pytest.mark.parametrize("attack, phrase", [
    ("a path key pointing outside", "unknown key"), ("a reference outside the folder", "plain file name"),
    ("a listed file replaced by a symlink", "symbolic link"), ("300 duplicate entries", "listed twice"),
    ("an older schema", "schema"), ("nested 100,000 deep", "nested deeper"),
    ("preprocessing at 16384 pixels", "the model takes"), ("a folded model that is no zip", "not a valid .keras"),
    ("a head that is a list", "head"),
])
def test_a_manifest_cannot_point_outside_its_folder_or_lie(work, tmp_path, attack, phrase):
    build = _copy_build(work, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(build / "model_int8.tflite", outside / "model_int8.tflite")
    if attack == "a path key pointing outside":
        _edit_manifest(build, lambda c: _entry(c, "model_int8.tflite").update(path=str(outside / "model_int8.tflite")))
    elif attack == "a reference outside the folder":
        def edit(c):
            c["equalization"] = {"pairs": 1, "reference": {**_entry(c, "model_folded.keras"),
                                                           "file": "../outside/model_folded.keras"}}
        _edit_manifest(build, edit)
    elif attack == "a listed file replaced by a symlink":
        (build / "model_int8.tflite").unlink()
        (build / "model_int8.tflite").symlink_to(outside / "model_int8.tflite")
    elif attack == "300 duplicate entries":
        _edit_manifest(build, lambda c: c["files"].extend([_entry(c, "model_int8.tflite")] * 300))
    elif attack == "an older schema":
        _edit_manifest(build, lambda c: c.update(schema=1))
    elif attack == "nested 100,000 deep":
        (build / "manifest.json").write_text('{"schema": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif attack == "preprocessing at 16384 pixels":
        _edit_manifest(build, lambda c: c["preprocessing"].update(height=16384, width=16384))
    elif attack == "a folded model that is no zip":
        (build / "model_folded.keras").write_bytes(b"not a zip archive at all")
        from mobiledeploy.manifest import sha256

        _edit_manifest(build, lambda c: _entry(c, "model_folded.keras").update(
            sha256=sha256(build / "model_folded.keras"), size=(build / "model_folded.keras").stat().st_size))
    else:
        _edit_manifest(build, lambda c: c.update(head=["classes"]))
    run = run_cli("eval", build, "--data", work["data"])
    one_line_error(run, phrase)
    assert run.peak_mb < PEAK_MB


# --- data ----------------------------------------------------------------------------------


def test_a_long_strip_image_a_fifo_and_a_device_link_in_calibration_are_handled(work, tmp_path):
    """A 1 x 400,000 PNG (469 bytes) would be upscaled to 14.6 M pixels per row for the crop; a FIFO
    blocks a reader forever, a link to /dev/zero never ends."""
    from PIL import Image

    calib = tmp_path / "calib"
    shutil.copytree(work["calib"], calib)
    Image.new("RGB", (400_000, 1), (90, 120, 200)).save(calib / "strip.png")
    os.mkfifo(calib / "fifo.png")
    (calib / "zero.png").symlink_to("/dev/zero")
    out = tmp_path / "out"
    run = run_cli("quantize", work["model"], "--calib", calib, "-o", out, "--num-calib", 13, "--num-holdout", 0,
                  "--refine", "none", "--json", timeout=300)
    assert run.code == 0, run.stderr[-2000:]
    assert run.peak_mb < PEAK_MB
    used = json.loads((out / "manifest.json").read_text())["calibration"]["calib_items"]
    assert "strip.png" in used and "fifo.png" not in used and "zero.png" not in used


def _npz_bomb(path: Path, shape: tuple) -> None:
    """An .npz whose x declares ``shape`` uint8 zeros, deflated as they are written (never in memory)."""
    from numpy.lib import format as npy

    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as member:
        npy.write_array_header_2_0(member, header)
        block = bytes(1 << 24)
        remaining = int(np.prod(shape))
        while remaining:
            member.write(block[:min(remaining, len(block))])
            remaining -= min(remaining, len(block))


def test_compressed_array_bomb_is_refused_by_its_header(work, tmp_path):
    bomb = tmp_path / "bomb.npz"
    _npz_bomb(bomb, (699_051, 32, 32, 3))  # 2 GiB of zeros
    assert bomb.stat().st_size < 8 << 20
    run = run_cli("quantize", work["model"], "--calib", bomb, "-o", tmp_path / "out", "--num-calib", 8)
    one_line_error(run, "inflates")
    assert run.peak_mb < PEAK_MB
    no_partial(tmp_path)


@pytest.mark.parametrize("attack, phrase", [
    ("a FIFO as labels", "not a regular file"), ("x of the wrong size", "to match the model input"),
    ("a label of -1", "class index -1"), ("NaN pixels", "NaN"), ("an image that links to /dev/zero", ""),
])
def test_hostile_evaluation_data(work, tmp_path, attack, phrase):
    args = []
    data = tmp_path / "data.npz"
    x = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3)).astype(np.uint8)
    if attack == "a FIFO as labels":
        os.mkfifo(tmp_path / "labels.txt")
        data, args = work["data"], ["--labels", tmp_path / "labels.txt"]
    elif attack == "x of the wrong size":
        np.savez(data, x=np.zeros((4, 64, 64, 3), np.uint8), y=np.zeros(4, int))
    elif attack == "a label of -1":
        np.savez(data, x=x, y=np.array([0, 1, -1, 0]))
    elif attack == "NaN pixels":
        np.savez(data, x=np.full((4, 16, 16, 3), np.nan, np.float32), y=np.zeros(4, int))
    else:
        data = tmp_path / "eval"
        shutil.copytree(work["data"], data)
        (data / "a" / "zero.png").symlink_to("/dev/zero")
    run = run_cli("eval", work["build"], "--data", data, *args, timeout=120)
    if phrase:
        one_line_error(run, phrase)
    else:
        assert run.code == 0 and "6 images" in run.stdout.replace("\n", " ") or run.code == 0, run.stderr[-2000:]
    assert run.peak_mb < PEAK_MB


def test_calibration_pixels_of_1e30_are_refused(work, tmp_path):
    np.save(tmp_path / "x.npy", np.full((8, 16, 16, 3), 1e30, np.float32))
    one_line_error(run_cli("quantize", work["model"], "--calib", tmp_path / "x.npy", "-o", tmp_path / "o"),
                   "beyond")


# --- outputs and paths ------------------------------------------------------------------------


def test_output_paths_that_would_destroy_inputs_or_cannot_be_written(work, tmp_path):
    model, calib = work["model"], work["calib"]
    quick = ["--num-calib", 8, "--num-holdout", 0, "--refine", "none"]
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_cli("quantize", model, "--calib", calib, "-o", ".", *quick, cwd=empty), "current folder")
    holder = tmp_path / "holder"
    holder.mkdir()
    shutil.copy(model, holder / "model.h5")
    shutil.copytree(calib, holder / "calib")
    before = sorted(p.name for p in holder.rglob("*"))
    one_line_error(run_cli("quantize", holder / "model.h5", "--calib", holder / "calib", "-o", holder, "--overwrite",
                           *quick), "holds the input")
    assert sorted(p.name for p in holder.rglob("*")) == before
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"precious")
    one_line_error(run_cli("quantize", model, "--calib", calib, "-o", other, "--overwrite", *quick), "not a mobiledeploy build")
    assert (other / "holiday.jpg").read_bytes() == b"precious"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line_error(run_cli("quantize", model, "--calib", calib, "-o", tmp_path / "dangling", *quick), "symbolic link")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    one_line_error(run_cli("check", work["build"], "--data", work["data"], "--baseline", folder, "--update-baseline"),
                   "is a folder")
    one_line_error(run_cli("analyze", work["build"], "--data", work["data"], "--html", folder), "is a folder")
    no_partial(tmp_path)


def test_a_destination_another_run_is_writing_is_refused_and_stale_partials_are_removed(work, tmp_path):
    import fcntl

    out = tmp_path / "out"
    stale = tmp_path / ".out.partial-999999-abc"  # what a SIGKILLed run leaves
    stale.mkdir()
    (stale / "model_int8.tflite").write_bytes(b"half")
    with open(tmp_path / ".out.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        one_line_error(run_cli("quantize", work["model"], "--calib", work["calib"], "-o", out, "--num-calib", 8,
                               "--num-holdout", 0, "--refine", "none"), "being written by another")
    assert stale.exists() and not out.exists()
    run = run_cli("quantize", work["model"], "--calib", work["calib"], "-o", out, "--num-calib", 8,
                  "--num-holdout", 0, "--refine", "none")
    assert run.code == 0, run.stderr[-2000:]
    assert not stale.exists() and (out / "manifest.json").is_file()


def test_a_build_folder_with_a_name_that_is_not_utf8(work, tmp_path):
    build = Path(os.fsdecode(bytes(tmp_path) + b"/build-\xff\xfe"))
    shutil.copytree(work["build"], build)
    run = run_cli("eval", build, "--data", work["data"])
    assert run.code == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["quantize", "m.h5", "--calib", "c", "--seed", "-1"],
    ["quantize", "m.h5", "--calib", "c", "--max-disagreement", "nan"],
    ["quantize", "m.h5", "--calib", "c", "--max-drop", "nan"],
    ["quantize", "m.h5", "--calib", "c", "--rounding-positions-per-weight", "inf"],
    ["inspect", "m.h5", "--alpha", "nan"],
    ["inspect", "m.h5", "--rho", "inf"],
    ["bench", "b", "--min-secs", "inf"],
    ["check", "b", "--data", "d", "--tolerance", "nan"],
], ids=lambda args: " ".join(args[2:] if args[0] != "inspect" else args[1:]))
def test_numbers_that_are_not_finite_or_in_range_are_usage_errors(args):
    from click.testing import CliRunner

    from mobiledeploy.cli.main import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
