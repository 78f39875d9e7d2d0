"""Calibration data: image folders, ``.npy`` and ``.npz`` arrays -> seeded, streamed batches.

A ``CalibrationSet`` records *which* samples were picked (file paths or row indices, chosen
by a seeded permutation); pixels are decoded batch by batch whenever a stage asks, so memory
depends on the batch size, never on the size of the folder. A build reads its sets several times
(fold check, refinement, each exporter's calibration, drift): ``DecodedBatches`` keeps a set it
has read whole, within ``limits.MAX_DECODED_BYTES``, and hands the same batches out again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import CalibrationError
from ..limits import MAX_DECODED_BYTES
from .arrays import open_array
from .images import IMAGE_EXTENSIONS, list_images, load_image
from ..reports import SCALINGS, CalibrationSet, Preprocessing

# any real pixel, scaled or not, is far inside this; 1e30 would overflow the int8 converters
MAX_PIXEL_MAGNITUDE = 1e6


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


class DecodedBatches:
    """``iter_batches`` of one calibration set that decodes each of its sets once: a pass that reads
    a set ("calib" or "holdout") to its end keeps its batches, read-only, when together they fit
    in ``budget`` bytes, and later passes replay them. A pass stopped early keeps nothing."""

    def __init__(self, cset: CalibrationSet, batch_size: int, budget: int = MAX_DECODED_BYTES):
        self.cset, self.batch_size, self.budget = cset, batch_size, budget
        self._kept: dict[str, list[np.ndarray]] = {}

    def __call__(self, which: str = "calib") -> Iterator[np.ndarray]:
        if which in self._kept:
            yield from self._kept[which]
            return
        kept: list[np.ndarray] | None = []
        size = 0
        for batch in iter_batches(self.cset, which, self.batch_size):
            size += batch.nbytes
            if kept is not None and size <= self.budget:
                batch.flags.writeable = False  # shared by every later pass
                kept.append(batch)
            else:
                kept = None
            yield batch
        if kept is not None:
            self._kept[which] = kept


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


def _open_array(path: Path) -> tuple[np.ndarray, str]:
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise CalibrationError(
            f"{path}: unknown calibration source '{suffix}'; expected a folder of images, .npy or .npz"
        )
    return open_array(path, None, CalibrationError), suffix[1:]


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
        if np.abs(chunk.astype(np.float64)).max(initial=0) > MAX_PIXEL_MAGNITUDE:
            row = start + int(np.argwhere(np.abs(chunk.astype(np.float64)) > MAX_PIXEL_MAGNITUDE)[0][0])
            raise CalibrationError(
                f"{path}: sample {row} has values beyond ±{MAX_PIXEL_MAGNITUDE:g}; expected pixels (0..255, "
                "or scaled as the model expects)"
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
