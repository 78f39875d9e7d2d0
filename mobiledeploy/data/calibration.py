"""Calibration data: image folders, ``.npy`` and ``.npz`` arrays -> seeded, streamed batches.

A ``CalibrationSet`` records *which* samples were picked (file paths or row indices, chosen
by a seeded permutation); pixels are decoded batch by batch whenever a stage asks, so memory
depends on the batch size, never on the size of the folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import CalibrationError
from ..reports import SCALINGS, CalibrationSet, Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs (PIL's default warns at 89M)


def preprocessing_for(model, scaling: str = "auto", crop_fraction: float = 0.875) -> Preprocessing:
    """The preprocessing that matches ``model``.

    ``auto`` picks ``raw`` when the model scales its own input (a Rescaling or Normalization
    layer right after the input), else ``mobilenet`` (x / 127.5 - 1, what keras.applications
    MobileNets expect). Scaling twice is the classic silent accuracy bug, so it is detected.
    """
    _, height, width, channels = (int(d) for d in (1, *model.inputs[0].shape[1:]))
    in_model = _scales_its_input(model)
    if scaling == "auto":
        scaling = "raw" if in_model else "mobilenet"
    if scaling not in SCALINGS:
        raise CalibrationError(f"unknown preprocessing '{scaling}'; expected one of {', '.join(SCALINGS)}")
    if not 0.1 <= crop_fraction <= 1.0:
        raise CalibrationError(f"crop fraction {crop_fraction} is outside 0.1..1.0; 0.875 is the usual choice")
    return Preprocessing(height, width, channels, scaling, crop_fraction, in_model)


def _scales_its_input(model) -> bool:
    for layer in model.layers[1:3]:
        if type(layer).__name__ in ("Rescaling", "Normalization"):
            return True
    return False


def scan(
    source: str | Path,
    preprocessing: Preprocessing,
    num_calib: int,
    num_holdout: int = 0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationSet:
    """Pick ``num_calib`` + ``num_holdout`` usable samples from ``source`` in seeded order.

    Each candidate is decoded once to prove it is usable (unreadable images are skipped and
    counted); nothing decoded is kept. Raises ``CalibrationError`` when nothing is usable.
    """
    source = Path(source)
    if num_calib < 1:
        raise CalibrationError(f"--num-calib is {num_calib}; expected at least 1 (200 is typical)")
    if not source.exists():
        raise CalibrationError(
            f"calibration data not found: {source}; expected a folder of images, a .npy or a .npz file"
        )
    wanted = num_calib + max(num_holdout, 0)
    rng = np.random.default_rng(seed)
    if source.is_dir():
        files = list_images(source)
        if not files:
            raise CalibrationError(
                f"{source}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively); "
                "point --calib at a folder of real images from your training or validation set"
            )
        order = [files[i] for i in rng.permutation(len(files))]
        good, skipped = [], []
        for index, file in enumerate(order):
            if len(good) == wanted:
                break
            try:
                load_image(file, preprocessing)
                good.append(str(file))
            except CalibrationError as exc:
                skipped.append((str(file), str(exc)))
            if progress:
                progress(index + 1, min(len(order), wanted + len(skipped)))
        if not good:
            raise CalibrationError(
                f"{source}: none of the {len(files)} images could be read (first problem: "
                f"{skipped[0][1]}); check the files are real JPEG/PNG/BMP images"
            )
        calib, holdout = _split(good, num_calib)
        return CalibrationSet(str(source), "images", seed, preprocessing, tuple(calib),
                              tuple(holdout), len(files), tuple(skipped))
    array, kind = _open_array(source)
    _check_array(array, source, preprocessing)
    order = [int(i) for i in rng.permutation(len(array))[:wanted]]
    calib, holdout = _split(order, num_calib)
    return CalibrationSet(str(source), kind, seed, preprocessing, tuple(calib), tuple(holdout),
                          len(array), ())


def _split(items: list, num_calib: int) -> tuple[list, list]:
    # Holdout gets what is left once calibration has its share: calibration matters more.
    return items[:num_calib], items[num_calib:]


def iter_batches(cset: CalibrationSet, which: str = "calib", batch_size: int = 16) -> Iterator[np.ndarray]:
    """Yield preprocessed float32 batches (N, H, W, C) of the ``calib`` or ``holdout`` samples."""
    items = cset.calib if which == "calib" else cset.holdout
    array = None if cset.kind == "images" else _open_array(Path(cset.source))[0]
    for start in range(0, len(items), batch_size):
        yield read_batch(items[start:start + batch_size], cset.preprocessing, array)


def read_batch(items, preprocessing: Preprocessing, array: np.ndarray | None = None) -> np.ndarray:
    """Scaled float32 pixels of image files (``array`` is None) or of ``array`` rows, in order."""
    if array is None:
        pixels = np.stack([load_image(Path(f), preprocessing) for f in items])
    else:
        # Sorted row access is sequential on a memory-mapped .npy; then restore the given order.
        pixels = np.asarray(array[sorted(items)], np.float32)[np.argsort(np.argsort(items))]
    return scale(pixels, preprocessing)


def scale(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Apply the named scaling to 0..255 pixels."""
    pixels = pixels.astype(np.float32, copy=False)
    if preprocessing.scaling == "mobilenet":
        return pixels / np.float32(127.5) - np.float32(1.0)
    if preprocessing.scaling == "unit":
        return pixels / np.float32(255.0)
    return pixels


def load_image(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode one image to float32 (H, W, C) pixels in 0..255: resize shorter side, center crop."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                pixels = prepare_image(image, preprocessing)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CalibrationError(f"{path}: unreadable image ({reason})") from None
    return pixels


def prepare_image(image, preprocessing: Preprocessing) -> np.ndarray:
    """A decoded PIL image -> float32 (H, W, C) pixels in 0..255, colour mode matched to the model."""
    image = image.convert("L" if preprocessing.channels == 1 else "RGB")
    pixels = np.asarray(_resize_and_crop(image, preprocessing), np.float32)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _resize_and_crop(image, preprocessing: Preprocessing):
    from PIL import Image

    height, width = preprocessing.height, preprocessing.width
    # Scale so the crop window (model size / crop_fraction) just fits, then center-crop.
    target_h = height / preprocessing.crop_fraction
    target_w = width / preprocessing.crop_fraction
    factor = max(target_h / image.height, target_w / image.width)
    new_size = (max(width, round(image.width * factor)), max(height, round(image.height * factor)))
    image = image.resize(new_size, Image.BILINEAR)
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in a stable (sorted) order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(root) / name)
    return found


def _open_array(path: Path) -> tuple[np.ndarray, str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(array, np.ndarray):  # np.load sniffs content: a zip gives an NpzFile
                raise CalibrationError(f"{path}: not a .npy array (it holds a .npz archive); rename it to .npz")
            return array, "npy"
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                key = "x" if "x" in archive.files else (archive.files[0] if len(archive.files) == 1 else None)
                if key is None:
                    raise CalibrationError(
                        f"{path}: .npz has arrays {archive.files} but no 'x'; "
                        "save the images as x (N, H, W, C), e.g. np.savez(file, x=images)"
                    )
                array = archive[key]
                if not isinstance(array, np.ndarray):  # a member that is no .npy comes back as raw bytes
                    raise CalibrationError(f"{path}: '{key}' in this .npz is not a .npy array; "
                                           "save the images with np.savez(file, x=images)")
                return array, "npz"
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"{path}: unreadable array file ({str(exc)[:120]})") from None
    raise CalibrationError(
        f"{path}: unknown calibration source '{suffix}'; expected a folder of images, .npy or .npz"
    )


def _check_array(array: np.ndarray, path: Path, preprocessing: Preprocessing) -> None:
    expected = (preprocessing.height, preprocessing.width, preprocessing.channels)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise CalibrationError(
            f"{path}: array has shape {tuple(array.shape)}; expected (N, {expected[0]}, "
            f"{expected[1]}, {expected[2]}) to match the model input; resize the images first"
        )
    if len(array) == 0:
        raise CalibrationError(f"{path}: array holds no samples; expected at least one image")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise CalibrationError(f"{path}: array dtype is {array.dtype}; expected uint8 or float pixels")
    for start in range(0, len(array), 256):  # stream: .npy files are memory-mapped
        chunk = np.asarray(array[start:start + 256])
        if np.issubdtype(chunk.dtype, np.floating) and not np.isfinite(chunk).all():
            row = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
            raise CalibrationError(
                f"{path}: sample {row} contains NaN or Inf; expected finite pixel values"
            )


def first_samples(batches, count: int):
    """The first ``count`` samples of a batch stream."""
    taken = 0
    for batch in batches:
        if taken >= count:
            return
        batch = batch[: count - taken]
        taken += len(batch)
        yield batch
