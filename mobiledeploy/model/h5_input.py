"""A model's HDF5 file, opened as data only: nothing outside the file is read, nothing over budget.

HDF5 can make a dataset's bytes come from elsewhere: *external* storage (raw bytes of another
file on this machine), *virtual* datasets (slices of other HDF5 files) and external or soft
links. A weight stored that way would copy a local file into the model and from there into
every exported file. So the whole tree is walked first, through hard links only, and every
dataset must be a plain numeric array stored in this file whose declared size is within budget
(a chunked dataset can declare gigabytes and store nothing). Only then is anything read.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError
from ..limits import MAX_HDF5_OBJECTS, MAX_JSON_BYTES, MAX_STORED_RATIO, MAX_WEIGHT_BYTES


def check_tree(handle, path: Path) -> None:
    """Refuse a file with external, virtual or linked storage, a non-numeric dataset, or
    declared sizes over budget, before any dataset is read."""
    import h5py
    import numpy as np

    total, seen, stack = 0, 0, [("", handle)]
    while stack:
        prefix, group = stack.pop()
        for name in group:
            where = f"{prefix}/{name}"
            seen += 1
            if seen > MAX_HDF5_OBJECTS:
                raise _refused(path, f"it holds more than {MAX_HDF5_OBJECTS:,} groups and datasets")
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise _refused(path, f"'{where}' is {kind}, which reads from outside the model's own data")
            item = group[name]
            if isinstance(item, h5py.Group):
                stack.append((where, item))
                continue
            if item.is_virtual:
                raise _refused(path, f"dataset '{where}' is virtual (its data lives in other files)")
            if item.external:
                raise _refused(path, f"dataset '{where}' stores its data in an external file")
            if not (np.issubdtype(item.dtype, np.number) or item.dtype == np.bool_):
                raise _refused(path, f"dataset '{where}' holds {item.dtype}, not numbers")
            declared = int(item.size) * item.dtype.itemsize
            stored = int(item.id.get_storage_size())
            if declared > MAX_STORED_RATIO * stored + (1 << 20):
                raise _refused(path, f"dataset '{where}' declares {declared:,} bytes but stores {stored:,}")
            total += declared
            if total > MAX_WEIGHT_BYTES:
                raise _refused(path, f"its datasets declare more than {MAX_WEIGHT_BYTES:,} bytes")


def text_attribute(handle, name: str, path: Path) -> str | None:
    """An attribute holding text (a Keras config), its declared size checked before reading."""
    if name not in handle.attrs:
        return None
    attribute = handle.attrs.get_id(name)
    size = int(attribute.get_storage_size())
    if size > MAX_JSON_BYTES:
        raise _refused(path, f"its '{name}' attribute holds {size:,} bytes")
    value = handle.attrs[name]
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _refused(path, f"its '{name}' attribute is not UTF-8 text") from None
    if not isinstance(value, str):
        raise _refused(path, f"its '{name}' attribute is not text")
    return value


def _refused(path: Path, reason: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: refused: {reason}; re-save the model with model.save('model.h5') "
                          "or model.save('model.keras')")
