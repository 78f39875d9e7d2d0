"""Bounded coverage-guided fuzzing of the input parsers (atheris), plus the crashes it found."""

import io
import os
import re
import resource
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
# memory bound of a fuzzing process: its address space, not libFuzzer's -rss_limit_mb, which reads
# the peak RSS that Linux carries over from the process that started it (a pytest worker that
# built models reads 3.7 GB before the first input)
ADDRESS_SPACE = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.fuzz
@pytest.mark.parametrize("target", ["image", "array", "manifest", "model_config", "baseline", "labels"])
def test_bounded_fuzz_run_finds_no_crash(target, tmp_path):
    pytest.importorskip("atheris")
    scratch = tmp_path / "tmp"  # the harness's temporary directory, to see that it cleans up
    scratch.mkdir()
    run = subprocess.run(
        [sys.executable, str(HARNESS), target, str(tmp_path / "corpus"), f"-max_total_time={SECONDS}",
         "-rss_limit_mb=0", f"-artifact_prefix={tmp_path}/"], preexec_fn=_limit_memory,
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


def test_regression_npy_header_with_an_open_bracket(tmp_path):
    """Found by the array target: numpy tokenizes a .npy header's dict, and a header whose bracket
    never closes raised tokenize's TokenError, which is no ValueError."""
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (3, 24, 24, 3".ljust(118, b"\0")
    path = tmp_path / "images.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(5000))
    with pytest.raises(MobiledeployError, match="not a .npy array"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_npz_member_beyond_the_file(tmp_path):
    """Found by the array target: an .npz member whose local header says its data start past the
    end of the file makes zipfile raise an EOFError without a message, and the error line itself
    failed (IndexError). Python 3.13's zipfile sees the member overlap the next one instead."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 24, 24, 3), np.uint8))
    data = bytearray(buffer.getvalue())
    data[28:30] = (65000).to_bytes(2, "little")  # the first local header's extra-field length
    path = tmp_path / "images.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(MobiledeployError, match=r"not a \.npy array|unreadable array file \(Overlapped entries"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_npz_of_an_unsupported_zip_version(tmp_path):
    """Found by the array target: Python's zip reader raises NotImplementedError for a zip
    version it does not know, which escaped as a crash."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 24, 24, 3), np.uint8))
    data = bytearray(buffer.getvalue())
    entry = data.index(b"PK\x01\x02")
    data[entry + 6:entry + 8] = (210).to_bytes(2, "little")  # "version needed to extract": 21.0
    path = tmp_path / "images.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(MobiledeployError, match="zip file version 21.0"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_npy_header_that_declares_4_gb(tmp_path):
    """Found by the array target: numpy reads a version 2 header's declared length (up to 4 GB)
    before it checks max_header_size; the length is now checked first."""
    path = tmp_path / "images.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + (0xFF4D5500).to_bytes(4, "little") + b"\xff" * 100)
    with pytest.raises(MobiledeployError, match="a header of 4,283,258,112 bytes"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_image_read_only_by_the_decoders_of_its_extensions(tmp_path):
    """Found by the image target: a file Pillow took for a GIMP brush made it allocate the 4 GB
    its header declared for a comment; images now open only with the JPEG, PNG and BMP decoders."""
    from mobiledeploy.data import images

    path = tmp_path / "brush.png"  # a broken JPEG header that the GIMP brush decoder accepted
    path.write_bytes(bytes.fromhex("ffd8ffe00000000100460001ffd8ffe0000000010046000000fefeb53a04ca3f25ffffff"
                                   "0000000000000000"))
    with pytest.raises(MobiledeployError, match="unreadable image .not a JPEG, PNG or BMP file"):
        images.load_image(path, Preprocessing(24, 24, 3, "mobilenet"))


def test_regression_png_chunk_longer_than_the_file(tmp_path):
    """Found by the image target: a PNG data chunk declaring about 4 GB made Pillow ask the file for
    all of it at once (a MemoryError under a memory limit); the image is now read from memory,
    where a read ends at the data."""
    path = tmp_path / "chunk.png"
    path.write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000100000000c0802000000e485aad6fb00025749"
                                   "444154") + b"x\xc4\x8fIDH")
    script = ("import sys; from pathlib import Path; from mobiledeploy.data import images; "
              "from mobiledeploy.reports import Preprocessing; from mobiledeploy.errors import CalibrationError\n"
              "try: images.load_image(Path(sys.argv[1]), Preprocessing(24, 24, 3, 'mobilenet'))\n"
              "except CalibrationError as exc: print(exc)")
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)))
    assert run.returncode == 0 and "unreadable image" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_regression_array_header_with_a_negative_size(tmp_path, suffix):
    """Found by the array target: numpy reads a header's shape (3, -4, 24, 3) without complaint,
    its byte count comes out negative and passes every budget, and mapping it raised an
    OverflowError."""
    buffer = io.BytesIO()
    (np.save if suffix == ".npy" else lambda b, a: np.savez(b, x=a))(buffer, np.zeros((3, 24, 24, 3), np.uint8))
    data = buffer.getvalue().replace(b"(3, 24, 24, 3)", b"(3, -4, 24, 3)")
    path = tmp_path / f"images{suffix}"
    path.write_bytes(data)
    with pytest.raises(MobiledeployError, match="negative size"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_npz_member_marked_encrypted(tmp_path):
    """Found by the array target: an .npz member whose flags say it is encrypted makes Python's
    zip reader raise RuntimeError (a password is required), which escaped as a crash."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 24, 24, 3), np.float32))
    data = bytearray(buffer.getvalue())
    entry = data.index(b"PK\x01\x02")
    data[entry + 8] |= 0x1  # the central directory's general-purpose flags: encrypted
    path = tmp_path / "images.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(MobiledeployError, match="'x' is encrypted in this .npz"):
        calibration.scan(path, Preprocessing(24, 24, 3, "mobilenet"), num_calib=1)


def test_regression_manifest_integer_too_large_for_a_float(tmp_path):
    """Found by the manifest target: a crop_fraction of 400 digits reached math.isfinite, which
    raised OverflowError. JSON integers beyond 64 bits are now refused where JSON is parsed, and the
    finite-number checks of manifests and options say no to such an int instead of raising."""
    from mobiledeploy import manifest
    from mobiledeploy.inputs import finite_number, parse_json
    from mobiledeploy.option_checks import check_options
    from mobiledeploy.options import QuantizeOptions

    (tmp_path / manifest.MANIFEST).write_text('{"schema": 2, "preprocessing": {"crop_fraction": 1' + "0" * 400 + "}}")
    with pytest.raises(manifest.ManifestError, match=r"not valid JSON \(integer 10{23}\.\.\. does not fit 64 bits\); re-run"):
        manifest.read(tmp_path)
    assert parse_json(f"[{2**64 - 1}, {-2**63}, 1e400]", "x") == [2**64 - 1, -2**63, float("inf")]
    for text in (str(2**64), str(-2**63 - 1), "1" * 5000):
        with pytest.raises(MobiledeployError, match="does not fit 64 bits"):
            parse_json(f'{{"a": {text}}}', "x")
    assert not finite_number(10**400) and not finite_number(float("inf")) and not finite_number(True)
    assert finite_number(2**64) and finite_number(-0.5)
    with pytest.raises(MobiledeployError, match="crop_fraction 1000.*expected a finite number from 0.1 to 1.0"):
        check_options(QuantizeOptions(crop_fraction=10**400))
