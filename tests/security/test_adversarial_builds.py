"""Attacks through build folders, data and outputs, through the real CLI under a memory limit:
manifests that point outside their folder or lie, image and array bombs, FIFOs and device links,
non-finite numbers, outputs that would destroy the inputs, locks, stale partials and names that
are not UTF-8. Each must end in one line (exit 1, or 2 for bad options) and nothing partial."""
# ruff: noqa: F811 (the fixture `work` is imported by name and taken as an argument)

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from attackers import PEAK_MB, SECRET, no_partial, no_secret_in, one_line_error, run_cli, work  # noqa: F401 (work is a fixture)

pytestmark = pytest.mark.slow


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
