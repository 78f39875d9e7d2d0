"""Users' input files, read as hostile: only regular files, and JSON within budgets.

A FIFO, a device or a link to /dev/zero passed where a file belongs would block a reader forever
or never end, so readers check ``is_regular`` first. Python's JSON parser recurses once per
nesting level: a file of 100,000 ``[`` raises RecursionError, and code that later walks the value
recursively would fail the same way. Every reader of a user's JSON (model configs, manifests,
baselines, the ARM cache's state) goes through ``parse_json``: size, nesting and integers checked,
every failure one line. Python reads a JSON integer of any length, and converting one of 400 digits
to a float (``float``, ``math.isfinite``) raises OverflowError, so integers must fit 64 bits.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from .errors import MobiledeployError
from .limits import MAX_JSON_BYTES, MAX_JSON_DEPTH


def is_regular(path) -> bool:
    """Whether ``path`` is (or links to) a regular file: not a FIFO, device, socket or folder."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def parse_json(raw: bytes | str, source: str, error: type[MobiledeployError] = MobiledeployError,
               fix: str = "re-create the file") -> Any:
    """The JSON value in ``raw``; ``error`` with one line naming ``source`` and ``fix`` when it is
    too large, too deep, not UTF-8 or not JSON."""
    if len(raw) > MAX_JSON_BYTES:
        raise error(f"{source}: {len(raw):,} bytes of JSON, more than the {MAX_JSON_BYTES:,} allowed; {fix}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        value = json.loads(text, parse_int=_integer)
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels; {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{source}: not valid JSON ({str(exc).splitlines()[0][:100]}); {fix}") from None
    if depth(value) > MAX_JSON_DEPTH:
        raise error(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels; {fix}")
    return value


def _integer(text: str) -> int:
    """A JSON integer, refused (ValueError) beyond 64 bits: no size, count or seed is larger."""
    value = int(text) if len(text.lstrip("-")) <= 20 else None  # 2**64 has 20 digits
    if value is None or not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} does not fit 64 bits")
    return value


def finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool) that is finite as a float; an int too large
    for a float is not (``math.isfinite`` would raise OverflowError on it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (0 for a number or string), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:  # deeper is refused anyway: stop counting
            stack.extend((child, level + 1) for child in children)
    return deepest


def read_json_file(path, source: str | None = None, error: type[MobiledeployError] = MobiledeployError,
                   fix: str = "re-create the file") -> Any:
    """``parse_json`` of a file's bytes, the size checked before reading."""
    path = Path(path)
    label = source or str(path)
    try:
        if not is_regular(path):
            raise error(f"{label}: not a regular file; {fix}")
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise error(f"{label}: {size:,} bytes of JSON, more than the {MAX_JSON_BYTES:,} allowed; {fix}")
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{label}: unreadable ({exc.strerror or type(exc).__name__}); {fix}") from None
    return parse_json(raw, label, error, fix)
