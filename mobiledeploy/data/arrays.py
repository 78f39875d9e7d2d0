""".npy and .npz arrays of images, opened without reading them whole.

A .npy file is memory-mapped; an .npz member is read by its header first (shape and dtype, a few
hundred bytes), then memory-mapped where it is stored uncompressed (``np.savez``) or, when it is
compressed (``np.savez_compressed``), inflated once to a scratch file of this process, streamed,
and memory-mapped from there. Either way batches are read as they are needed, and what a file
declares is checked against what it holds before anything is allocated: a 2 MB .npz that inflates
to 2 GiB of zeros is refused as the decompression bomb it is.
"""

from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import MobiledeployError, first_line
from ..limits import MAX_ARRAY_BYTES_PER_SAMPLE
from ..inputs import is_regular

# what Python's zip, zlib and struct readers raise on a malformed archive (an unsupported zip
# version or method is a NotImplementedError; a truncated member an EOFError without a message)
ZIP_ERRORS = (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error, struct.error)

MAX_NPY_HEADER = 10_000  # bytes; numpy writes a few hundred
MAX_INFLATE_RATIO = 100  # image arrays compress a few times; zeros a thousand times
MAX_INFLATED_BYTES = 4 << 30  # a compressed member is inflated to a scratch file of at most this
_inflated: dict[tuple, Path] = {}
_scratch: list[tempfile.TemporaryDirectory] = []


def open_array(path: Path, key: str | None, error: type[MobiledeployError]) -> np.ndarray:
    """The array of a .npy file, or member ``key`` of an .npz (``x``, or the only member when
    ``key`` is None), memory-mapped; ``error`` with one line when it cannot be."""
    if not is_regular(path):
        raise error(f"{path}: not a regular file; expected a .npy or .npz array")
    try:
        if path.suffix.lower() == ".npy":
            with open(path, "rb") as handle:
                if handle.read(4) == b"PK\x03\x04":  # np.load would sniff a zip and return an NpzFile
                    raise error(f"{path}: not a .npy array (it holds a .npz archive); rename it to .npz")
                handle.seek(0)
                shape, dtype, order, offset = _header(handle, path, error)
            _check(shape, dtype, path, error)
            declared = _nbytes(shape, dtype)
            if declared > path.stat().st_size - offset:
                raise error(f"{path}: declares {declared:,} bytes of data but holds "
                            f"{path.stat().st_size - offset:,}; the file is truncated")
            if declared == 0:  # nothing to map (mmap refuses a length of 0); the caller says what is missing
                return np.empty(shape, dtype)
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return _npz_member(path, key, error)
    except MobiledeployError:
        raise
    except ZIP_ERRORS as exc:
        raise error(f"{path}: unreadable array file ({first_line(exc)[:120]})") from None


def npz_members(path: Path, error: type[MobiledeployError]) -> list[str]:
    """The array names in an .npz (``x``, ``y``, ...)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]
    except ZIP_ERRORS as exc:
        raise error(f"{path}: unreadable .npz ({first_line(exc)[:120]})") from None


def _npz_member(path: Path, key: str | None, error) -> np.ndarray:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".npy")]
        if key is None:
            key = "x" if "x.npy" in names else (names[0][:-4] if len(names) == 1 else None)
        if key is None or f"{key}.npy" not in names:
            raise error(f"{path}: .npz has arrays {[n[:-4] for n in names]} but no "
                        f"{repr('x') if key is None else repr(key)}; save the images as x (N, H, W, C), "
                        "e.g. np.savez(file, x=images)")
        info = archive.getinfo(f"{key}.npy")
        if info.flag_bits & 0x1:  # zipfile would ask for a password (RuntimeError)
            raise error(f"{path}: '{key}' is encrypted in this .npz; save the arrays without a password, "
                        "e.g. np.savez(file, x=images)")
        with archive.open(info) as member:
            shape, dtype, order, offset = _header(member, path, error, f"'{key}' in this .npz")
        _check(shape, dtype, path, error)
        declared = _nbytes(shape, dtype)
        if declared > info.file_size - offset:
            raise error(f"{path}: '{key}' declares {declared:,} bytes of data but holds {info.file_size - offset:,}")
        if declared == 0:  # nothing to map or inflate; the caller says what is missing
            return np.empty(shape, dtype)
        if info.compress_type == zipfile.ZIP_STORED:
            start = _data_start(path, info) + offset
            return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if order else "C")
        if declared > MAX_INFLATED_BYTES or declared > MAX_INFLATE_RATIO * max(info.compress_size, 1) + (1 << 20):
            raise error(f"{path}: '{key}' inflates from {info.compress_size:,} to {declared:,} bytes, more than "
                        f"allowed (a decompression bomb?); save large arrays with np.savez (uncompressed) or .npy")
        return np.load(_inflate(path, archive, info), mmap_mode="r", allow_pickle=False)


def _header(stream, path: Path, error, what: str = "the array") -> tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, Fortran order, header length) from a .npy header, reading only the header:
    its declared length is checked before it is read (numpy reads all of it first, and a version 2
    header may declare 4 GB)."""
    import io
    from tokenize import TokenError

    from numpy.lib import format as npy

    try:
        version = npy.read_magic(stream)
        reader, width = {(1, 0): (npy.read_array_header_1_0, 2), (2, 0): (npy.read_array_header_2_0, 4)}.get(
            version, (None, 0))
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        declared = stream.read(width)
        length = int.from_bytes(declared, "little")
        if len(declared) < width or length > MAX_NPY_HEADER:
            raise ValueError(f"a header of {length:,} bytes" if len(declared) == width else "truncated header")
        header = stream.read(length)
        shape, fortran, dtype = reader(io.BytesIO(declared + header), max_header_size=MAX_NPY_HEADER)
    except (ValueError, SyntaxError, EOFError, TokenError) as exc:  # numpy tokenizes the header's dict
        raise error(f"{path}: {what} is not a .npy array ({first_line(exc)[:100]}); "
                    "save the images with np.save or np.savez(file, x=images)") from None
    return tuple(int(d) for d in shape), dtype, bool(fortran), stream.tell()


def _check(shape: tuple, dtype: np.dtype, path: Path, error) -> None:
    if any(int(d) < 0 for d in shape):
        raise error(f"{path}: the array's header declares shape {shape}, with a negative size; the file is corrupt")
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise error(f"{path}: array dtype is {dtype}; expected uint8 or float pixels")
    per_sample = _nbytes(shape[1:], dtype) if shape else dtype.itemsize
    if per_sample > MAX_ARRAY_BYTES_PER_SAMPLE:
        raise error(f"{path}: one sample of shape {shape[1:]} takes {per_sample:,} bytes, more than the "
                    f"{MAX_ARRAY_BYTES_PER_SAMPLE:,} allowed; expected images (N, H, W, C)")


def _nbytes(shape: tuple, dtype: np.dtype) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count * dtype.itemsize


def _data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local file header, whose name and extra
    field lengths may differ from the central directory's."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = handle.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local file header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _inflate(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Path:
    """A compressed member inflated to a scratch file (streamed), once per file version."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, info.filename)
    if key not in _inflated:
        if not _scratch:
            _scratch.append(tempfile.TemporaryDirectory(prefix="mobiledeploy-arrays-"))
            atexit.register(_scratch[0].cleanup)
        target = Path(_scratch[0].name) / f"{len(_inflated)}.npy"
        with archive.open(info) as member, open(target, "wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)
        _inflated[key] = target
    return _inflated[key]
