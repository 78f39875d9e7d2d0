"""JSON as every strict parser reads it (JavaScript's JSON.parse, Go's, Rust's): Python writes
Infinity and NaN, which none of them accept. Non-finite numbers become null; in mobiledeploy's
outputs a null number means it was not finite: an SQNR of +inf (outputs identical), a share of
no samples (nan). Every JSON output goes through ``dumps``, with the ``schema`` version of its kind."""

from __future__ import annotations

import json
import math
from typing import Any

# the version of each JSON output's layout; raised when a field changes meaning or goes away
SCHEMA = 1


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value


def dumps(value: Any, kind: str | None = None, **options) -> str:
    """Strict JSON of ``value``; with ``kind``, a dict gets ``"schema": {"kind": kind, "version": SCHEMA}``
    first."""
    if kind is not None and isinstance(value, dict):
        value = {"schema": {"kind": kind, "version": SCHEMA}, **value}
    return json.dumps(strict(value), allow_nan=False, **{"indent": 2, **options})
