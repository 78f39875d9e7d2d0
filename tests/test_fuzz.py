"""Bounded coverage-guided fuzzing of the input parsers (atheris), plus the crashes it found."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobiledeploy.data import calibration
from mobiledeploy.errors import MobiledeployError
from mobiledeploy.reports import Preprocessing

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_inputs.py"
SECONDS = int(os.environ.get("MOBILEDEPLOY_FUZZ_SECONDS", "20"))


@pytest.mark.parametrize("target", ["image", "array", "manifest", "model_config", "baseline", "labels"])
def test_bounded_fuzz_run_finds_no_crash(target, tmp_path):
    pytest.importorskip("atheris")
    scratch = tmp_path / "tmp"  # the harness's temporary directory, to see that it cleans up
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, str(HARNESS), target, str(tmp_path / "corpus"), f"-max_total_time={SECONDS}",
         "-rss_limit_mb=3072", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)},
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert run.returncode == 0 and not crashes, f"{crashes}\n{run.stderr[-3000:]}"
    runs = int(re.search(r"Done (\d+) runs", run.stderr).group(1))
    print(f"fuzz {target}: {runs} executions in {SECONDS} s")
    assert runs > 100
    assert not any(scratch.iterdir()), "the harness left its scratch folder behind"


def test_regression_npz_bytes_in_a_npy_file(tmp_path):
    """Found by the array target: np.load sniffs content, so a .npy holding a zip gave an
    NpzFile and an AttributeError instead of a clear error."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 24, 24, 3), np.uint8))
    path = tmp_path / "images.npy"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(MobiledeployError, match="rename it to .npz"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_npz_member_that_is_no_npy(tmp_path):
    """Found by the array target: an .npz member named x.npy whose bytes are no .npy array comes
    back from np.load as raw bytes, which reached the shape check as an AttributeError."""
    import zipfile

    from mobiledeploy.data import datasets

    path = tmp_path / "images.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"not an array")
    with pytest.raises(MobiledeployError, match="not a .npy array"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)
    with pytest.raises(MobiledeployError, match="not a .npy array"):
        datasets.open_data(path)
