"""What the adversarial tests share: the real CLI in a child process under a memory limit, the
checks every attack must pass (one line, nothing partial, no secret copied) and the inputs the
attacks start from (a tiny Keras 2 model, images and a build of it, made once per module)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, write_images

ADDRESS_SPACE = 4 << 30  # the child's virtual memory: TensorFlow imports within 2 GiB
PEAK_MB = 2000  # what a child may use at its peak (resident), whatever the input declares
SECRET = b"MOBILEDEPLOY-SECRET-0123456789abcdef" * 4  # bytes of a file outside the inputs


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    peak_mb: float


# Starts the CLI under the memory limit and reports its peak. A child's ru_maxrss counts what the
# process it was forked from held at the fork (the kernel keeps the pre-exec high-water mark), so a
# pytest worker that has grown to 2 GB would be charged to every child it forks: this small launcher
# forks the CLI instead, and prints the CLI's own peak (kB) on its last line of stderr.
LAUNCHER = """
import os, resource, signal, subprocess, sys
limit = int(sys.argv[1])
child = subprocess.Popen(sys.argv[2:], preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
_, status, usage = os.wait4(child.pid, 0)
sys.stderr.write(f"\\n{usage.ru_maxrss}\\n")
sys.stderr.flush()
code = os.waitstatus_to_exitcode(status)
if code < 0:  # killed by a signal: die by the same one, as the CLI did
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_cli(*args, cwd: Path | None = None, timeout: float = 240) -> Run:
    """The real CLI in a child process with its address space limited; its own peak memory."""
    import signal
    import tempfile

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "mobiledeploy", *(os.fsdecode(a) if isinstance(a, (Path, bytes)) else str(a)
                                                        for a in args)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(ADDRESS_SPACE), *command], cwd=cwd, env=env,
                                    stdout=out, stderr=err, start_new_session=True)
        try:
            code = launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            pytest.fail(f"mobiledeploy {' '.join(map(str, args))} hung for {timeout} s")
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    stderr, _, peak = stderr.rstrip("\n").rpartition("\n")
    if not peak.isdigit():  # the launcher itself failed before it could report
        pytest.fail(f"the CLI's launcher reported no peak memory; its stderr ends: {stderr[-500:]}{peak}")
    return Run(code, stdout, stderr, int(peak) / 1024)


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


def h5_copy(work, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    shutil.copy(work["model"], path)
    return path


def replace_kernel(path: Path, make) -> None:
    import h5py

    with h5py.File(path, "r+") as handle:
        group = handle["model_weights/c1/c1"]
        shape = group["kernel:0"].shape
        del group["kernel:0"]
        make(group, shape)


