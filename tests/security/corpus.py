"""Generate the malformed-input corpus: bad models, bad data, bad output places.

    python tests/corpus.py OUT_DIR      # writes the files and OUT_DIR/cases.json

Every case is built from code (seeded), never a hand-made binary. A case is a command line
(with {corpus}, {model}, {calib}, {build}, {out} placeholders) and what must happen: "error"
(exit 1 or 2, one line, no traceback, nothing written) or "ok" (the odd-but-valid input is
handled). ``tests/test_corpus.py`` runs each through the real CLI.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np


def build(root: Path, tiny_model_file: Path) -> list[dict]:
    """Write the corpus under ``root``; return the cases."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    valid = tiny_model_file.read_bytes()
    cases: list[dict] = []

    def case(name, args, expect="error", message=""):
        cases.append({"name": name, "args": args, "expect": expect, "message": message})

    quantize = ["quantize", "{model}", "--calib", "{calib}", "-o", "{out}", "--num-holdout", "0"]

    # --- models -----------------------------------------------------------------------------
    models = root / "models"
    models.mkdir(exist_ok=True)
    (models / "empty.h5").write_bytes(b"")
    for suffix in ("h5", "keras", "tflite", "onnx"):
        (models / f"random.{suffix}").write_bytes(rng.bytes(4096))
    for offset in (16, 512, len(valid) // 2, len(valid) - 10):
        (models / f"truncated_{offset}.keras").write_bytes(valid[:offset])
    _not_keras_hdf5(models / "plain_data.h5")
    _broken_keras_zip(valid, models / "broken_config.keras")
    _special_models(models)
    case("missing model", _with(quantize, model="{corpus}/models/missing.h5"), message="not found")
    case("empty model", _with(quantize, model="{corpus}/models/empty.h5"))
    for suffix in ("h5", "keras", "tflite", "onnx"):
        case(f"random bytes .{suffix}", _with(quantize, model=f"{{corpus}}/models/random.{suffix}"))
    for offset in (16, 512, len(valid) // 2, len(valid) - 10):
        case(f"truncated .keras at {offset}", _with(quantize, model=f"{{corpus}}/models/truncated_{offset}.keras"))
    case("HDF5 that is not a Keras model", _with(quantize, model="{corpus}/models/plain_data.h5"))
    case(".keras with a broken config", _with(quantize, model="{corpus}/models/broken_config.keras"))
    case("unsupported layer (LSTM)", _with(quantize, model="{corpus}/models/lstm.keras"), message="LSTM")
    case("non-image input", _with(quantize, model="{corpus}/models/vector_input.keras"))
    case("two inputs", _with(quantize, model="{corpus}/models/two_inputs.keras"))

    # --- calibration / evaluation data ------------------------------------------------------
    data = root / "data"
    (data / "empty").mkdir(parents=True, exist_ok=True)
    (data / "not_images").mkdir(exist_ok=True)
    for i in range(3):
        (data / "not_images" / f"notes_{i}.jpg").write_text("this is not a picture\n")
    odd = data / "odd_images"
    odd.mkdir(exist_ok=True)
    _odd_images(odd, rng)
    (data / "corrupt_only").mkdir(exist_ok=True)
    jpeg = _encode(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "JPEG")
    (data / "corrupt_only" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (data / "bomb").mkdir(exist_ok=True)
    (data / "bomb" / "huge.png").write_bytes(_png_header_only(100_000, 100_000))
    np.save(data / "rank3.npy", np.zeros((4, 24, 24), np.uint8))
    np.save(data / "strings.npy", np.array(["a", "b"]))
    np.save(data / "nan.npy", np.full((4, 24, 24, 3), np.nan, np.float32))
    np.save(data / "inf.npy", np.full((4, 24, 24, 3), np.inf, np.float32))
    np.savez(data / "no_x.npz", images=np.zeros((4, 24, 24, 3), np.uint8), targets=np.zeros(4, np.int64))
    (data / "bad.npy").write_bytes(b"\x93NUMPY" + rng.bytes(200))
    case("empty folder", _with(quantize, calib="{corpus}/data/empty"), message="no images")
    case("folder of non-images", _with(quantize, calib="{corpus}/data/not_images"))
    case("only a corrupt JPEG", _with(quantize, calib="{corpus}/data/corrupt_only"))
    case("decompression bomb", _with(quantize, calib="{corpus}/data/bomb"))
    for name in ("rank3.npy", "strings.npy", "nan.npy", "inf.npy", "no_x.npz", "bad.npy"):
        case(f"array {name}", _with(quantize, calib=f"{{corpus}}/data/{name}"))
    case("odd but valid images (alpha, 16-bit, palette, CMYK, grey, 1x1) plus a corrupt one",
         _with(quantize, calib="{corpus}/data/odd_images"), expect="ok")

    # --- evaluation inputs --------------------------------------------------------------------
    (data / "labels_mismatch.txt").write_text("cat\ndog\n")
    labelled = data / "labelled"
    for cls in ("zebra", "yak"):
        (labelled / cls).mkdir(parents=True, exist_ok=True)
        (labelled / cls / "a.png").write_bytes(_encode(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8), "PNG"))
    case("labels file that does not match the folders",
         ["eval", "{build}", "--data", "{corpus}/data/labelled", "--labels", "{corpus}/data/labels_mismatch.txt"])
    case("eval of a folder that is not a build", ["eval", "{corpus}/data", "--data", "{corpus}/data/labelled"],
         message="manifest")
    case("check with an unreadable baseline",
         ["check", "{build}", "--data", "{corpus}/data/labelled", "--baseline", "{corpus}/data/bad.npy"])
    case("bench of random bytes", ["bench", "{corpus}/models/random.tflite", "--num-runs", "1", "--min-secs", "0"])
    case("inspect of random bytes", ["inspect", "{corpus}/models/random.h5"])

    # --- output places ------------------------------------------------------------------------
    (root / "a_file").write_text("occupied\n")
    case("output under a file", _with(quantize, out="{corpus}/a_file/build"))
    case("existing output folder without --overwrite", _with(quantize, out="{build}"), message="--overwrite")
    case("usage: unknown option", ["quantize", "{model}", "--calib", "{calib}", "--bogus"])
    case("usage: bad choice", ["quantize", "{model}", "--calib", "{calib}", "--refine", "magic"])
    (root / "cases.json").write_text(json.dumps(cases, indent=1))
    return cases


def _with(args: list[str], **replace: str) -> list[str]:
    return [replace.get(a.strip("{}"), a) if a.startswith("{") else a for a in args]


def _encode(pixels: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _odd_images(folder: Path, rng) -> None:
    from PIL import Image

    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    (folder / "alpha.png").write_bytes(_encode(np.dstack([rgb, rng.integers(0, 255, (40, 30), dtype=np.uint8)]), "PNG"))
    sixteen = Image.fromarray((rng.integers(0, 65535, (40, 30))).astype(np.uint16))
    sixteen.save(folder / "sixteen_bit.png")
    (folder / "palette.png").write_bytes(_encode(rgb, "PNG", "P"))
    (folder / "cmyk.jpg").write_bytes(_encode(rgb, "JPEG", "CMYK"))
    (folder / "grey.jpg").write_bytes(_encode(rgb, "JPEG", "L"))
    (folder / "one_pixel.png").write_bytes(_encode(rgb[:1, :1], "PNG"))
    for i in range(4):
        (folder / f"normal_{i}.jpg").write_bytes(_encode(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "JPEG"))
    full = _encode(rgb, "JPEG")
    (folder / "corrupt.jpg").write_bytes(full[: len(full) // 4])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _not_keras_hdf5(path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("measurements", data=np.arange(10))


def _broken_keras_zip(valid: bytes, path: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(valid)) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = b'{"class_name": "Functional", "config": {"layers": [' if info.filename == "config.json" \
                else source.read(info)
            target.writestr(info.filename, data)


def _special_models(folder: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    seq = keras.Input((8, 4))
    keras.Model(seq, keras.layers.Dense(2)(keras.layers.LSTM(3)(seq))).save(folder / "lstm.keras")
    vec = keras.Input((10,))
    keras.Model(vec, keras.layers.Dense(2)(vec)).save(folder / "vector_input.keras")
    a, b = keras.Input((24, 24, 3)), keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Add()([a, b]))
    keras.Model([a, b], keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))).save(folder / "two_inputs.keras")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tiny_mobilenet

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_mobilenet().save(out / "tiny.keras")
    print(f"{len(build(out, out / 'tiny.keras'))} cases written to {out}")
