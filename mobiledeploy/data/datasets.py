"""Evaluation data: class folders, ``.npz`` (x, y) or a plain folder, streamed in batches.

Class folders map to model outputs in sorted order, or through a labels file (one class name
per line, in model output order) when the data covers only some classes. A plain folder of
images has no labels: only label-free drift can be measured on it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .arrays import npz_members, open_array
from .calibration import MAX_PIXEL_MAGNITUDE, read_batch
from ..inputs import is_regular
from .images import IMAGE_EXTENSIONS, list_images
from ..errors import CalibrationError, DataError
from ..manifest import sha256
from ..reports import Preprocessing

MAX_LABELS_BYTES = 16 << 20  # a labels file: one class name per line


@dataclass(frozen=True)
class EvalData:
    source: str
    kind: str  # "folders", "images" (unlabelled) or "npz"
    items: tuple  # file paths or row indices
    labels: tuple[int, ...] | None  # model output index per item, None when unlabelled
    class_names: tuple[str, ...]
    digest: str  # sha256 over the files (or array) and labels: a baseline is tied to it

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def open_data(source: str | Path, labels_file: str | Path | None = None) -> EvalData:
    source = Path(source)
    if not source.exists():
        raise DataError(f"evaluation data not found: {source}; expected a folder of class folders, "
                        "a plain image folder or an .npz with x and y")
    names = _read_labels(Path(labels_file)) if labels_file else None
    if source.is_dir():
        return _open_folder(source, names, labels_file)
    if source.suffix.lower() == ".npz":
        return _open_npz(source, names)
    raise DataError(f"{source}: unknown evaluation data format; expected a folder or an .npz file")


def iter_batches(data: EvalData, preprocessing: Preprocessing, batch_size: int = 64) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches of the data, decoded as they are needed. An array must hold
    images of the model's input size, checked before the first batch, and finite pixels."""
    array = None
    if data.kind == "npz":
        array = open_array(Path(data.source), "x", DataError)
        expected = (preprocessing.height, preprocessing.width, preprocessing.channels)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise DataError(f"{data.source}: x has shape {tuple(array.shape)}; expected (N, {expected[0]}, "
                            f"{expected[1]}, {expected[2]}) to match the model input; resize the images first")
    for start in range(0, len(data.items), batch_size):
        items = data.items[start:start + batch_size]
        if array is not None:
            raw = np.asarray(array[start:start + len(items)], np.float64)
            if not np.isfinite(raw).all() or np.abs(raw).max(initial=0) > MAX_PIXEL_MAGNITUDE:
                row = start + int(np.argwhere(~np.isfinite(raw) | (np.abs(np.nan_to_num(raw, nan=np.inf)) >
                                                                   MAX_PIXEL_MAGNITUDE))[0][0])
                raise DataError(f"{data.source}: sample {row} holds NaN, Inf or values beyond "
                                f"±{MAX_PIXEL_MAGNITUDE:g}; expected finite pixels")
        try:
            yield read_batch(items, preprocessing, array)
        except CalibrationError as exc:
            raise DataError(f"evaluation data: {exc}") from None


def _class_folders(source: Path) -> list[str]:
    """The class folders of an evaluation folder, in the order they map to outputs (sorted)."""
    return sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))


def _open_folder(source: Path, names: list[str] | None, labels_file) -> EvalData:
    folders = _class_folders(source)
    loose = [p for p in source.iterdir() if is_regular(p) and p.name.lower().endswith(IMAGE_EXTENSIONS)]
    if not folders or loose:
        files = list_images(source)
        if not files:
            raise DataError(f"{source}: no images found; expected <class>/*.png folders or images")
        return EvalData(str(source), "images", tuple(str(f) for f in files), None, (),
                        _digest(files, source, None))
    class_names = names or folders
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise DataError(
            f"{source}: class folder(s) {', '.join(unknown[:5])} are not in "
            f"{labels_file or 'the class list'}; the labels file must name every folder"
        )
    files, labels = [], []
    for folder in folders:
        for path in list_images(source / folder):
            files.append(path)
            labels.append(index[folder])
    if not files:
        raise DataError(f"{source}: class folders hold no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return EvalData(str(source), "folders", tuple(str(f) for f in files), tuple(labels),
                    tuple(class_names), _digest(files, source, labels))


def _open_npz(source: Path, names: list[str] | None) -> EvalData:
    members = npz_members(source, DataError)
    if "x" not in members:
        raise DataError(f"{source}: .npz has {members} but no 'x'; save it as np.savez(f, x=images, y=labels)")
    count = len(open_array(source, "x", DataError))
    labels = None
    if "y" in members:
        y = np.asarray(open_array(source, "y", DataError))
        if y.shape != (count,) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y has shape {y.shape} dtype {y.dtype}; expected ({count},) integer class indices")
        if count and int(y.min()) < 0:
            raise DataError(f"{source}: y holds the class index {int(y.min())}; expected indices from 0 "
                            "(the model's output order)")
        labels = tuple(int(v) for v in y)
    return EvalData(str(source), "npz", tuple(range(count)), labels, tuple(names or ()), sha256(source))


def class_names(source: str | Path) -> list[str]:
    """The class names in model output order: a labels file's lines, or the class folders of an
    evaluation folder in the order eval reads them (sorted)."""
    source = Path(source)
    if source.is_dir():
        folders = _class_folders(source)
        if not folders:
            raise DataError(f"{source}: no class folders; expected a labels file (one class name per line) or a "
                            "folder with one sub-folder per class")
        return folders
    return _read_labels(source)


def _read_labels(path: Path) -> list[str]:
    if not is_regular(path):
        raise DataError(f"labels file {path} is missing or not a regular file; expected one class name per line")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise DataError(f"labels file {path} holds {path.stat().st_size:,} bytes, more than the "
                        f"{MAX_LABELS_BYTES:,} allowed; expected one class name per line")
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"labels file {path} is unreadable ({exc}); expected one class name per line") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"labels file {path}: expected one distinct class name per line, in model output order")
    return names


def _digest(files: list[Path], root: Path, labels: list[int] | None) -> str:
    digest = hashlib.sha256()
    for i, path in enumerate(files):
        digest.update(os.fsencode(path.relative_to(root)))  # the name's bytes, whatever their encoding
        digest.update(bytes.fromhex(sha256(path)))
        if labels is not None:
            digest.update(str(labels[i]).encode())
    return digest.hexdigest()
