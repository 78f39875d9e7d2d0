"""Image files -> float32 pixels at the model's size, within a memory budget.

An image is checked by its header before it is decoded (at most ``MAX_IMAGE_PIXELS``, without
touching Pillow's process-wide limit), and the resize for the center crop never makes a
picture larger than that either: a 469-byte PNG of 1 x 400,000 pixels would otherwise be
upscaled to 14.6 M pixels per row. Only regular files are read (a FIFO would block forever, a
link to /dev/zero never end).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import CalibrationError, first_line
from ..inputs import is_regular
from ..limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from ..reports import Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# the decoders Pillow may pick for them (its JPEG decoder also opens a camera's MPO files); none
# of its few dozen other plugins, some of which allocate what a header declares before reading it
IMAGE_FORMATS = ("JPEG", "PNG", "BMP")


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, recursively, in a stable (sorted) order; only regular
    files (or links to them), not hidden ones."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".") and is_regular(path):
                found.append(path)
    return found


def load_image(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode one image to float32 (H, W, C) pixels in 0..255: resize shorter side, center crop."""
    from PIL import Image

    if not is_regular(path):
        raise CalibrationError(f"{path}: not a regular file (a FIFO, device or broken link); skipped")
    try:
        with path.open("rb") as handle:  # in memory: a read of what a header declares ends at the data
            data = handle.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise CalibrationError(f"{path}: over {MAX_IMAGE_BYTES:,} bytes, more than an image may have; "
                                   "resize or recompress it")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise CalibrationError(f"{path}: {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                           "allowed; resize it first")
                pixels = prepare_image(image, preprocessing)
    except CalibrationError:
        raise
    except Image.UnidentifiedImageError:
        raise CalibrationError(f"{path}: unreadable image (not a JPEG, PNG or BMP file)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise CalibrationError(f"{path}: unreadable image ({first_line(exc)[:120]})") from None
    return pixels


def prepare_image(image, preprocessing: Preprocessing) -> np.ndarray:
    """A decoded PIL image -> float32 (H, W, C) pixels in 0..255, colour mode matched to the model."""
    image = image.convert("L" if preprocessing.channels == 1 else "RGB")
    pixels = np.asarray(_resize_and_crop(image, preprocessing), np.float32)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _resize_and_crop(image, preprocessing: Preprocessing):
    """Scale so the crop window (model size / crop_fraction) just fits, then center-crop. Where
    that scaled picture would be over the pixel budget (a very long strip), only the crop window
    is resized, straight from the source."""
    from PIL import Image

    height, width = preprocessing.height, preprocessing.width
    target_h = height / preprocessing.crop_fraction
    target_w = width / preprocessing.crop_fraction
    factor = max(target_h / image.height, target_w / image.width)
    new_size = (max(width, round(image.width * factor)), max(height, round(image.height * factor)))
    left = (new_size[0] - width) // 2
    top = (new_size[1] - height) // 2
    if new_size[0] * new_size[1] > MAX_IMAGE_PIXELS:
        box = (left / factor, top / factor, (left + width) / factor, (top + height) / factor)
        return image.resize((width, height), Image.BILINEAR, box=box)
    image = image.resize(new_size, Image.BILINEAR)
    return image.crop((left, top, left + width, top + height))
