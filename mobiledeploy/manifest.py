"""``manifest.json``: every file in an output folder with its hash, plus how it was made.

Later commands (eval, bench, check) read the preprocessing and the file list from here, so
the user states them once. No timestamps: the same inputs give the same manifest.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from .errors import MobiledeployError
from .types import Artifact

MANIFEST = "manifest.json"
SCHEMA = 1
LIBRARIES = ("mobiledeploy", "tensorflow", "keras", "ai-edge-litert", "onnx", "onnxruntime",
             "tf2onnx", "numpy", "pillow")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(directory: Path, artifact: Artifact) -> Artifact:
    """The artifact with its file's sha256 and size filled in."""
    path = directory / artifact.file
    return replace(artifact, sha256=sha256(path), size=path.stat().st_size)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write(directory: Path, content: dict) -> Path:
    path = directory / MANIFEST
    path.write_text(json.dumps({"schema": SCHEMA, **content}, indent=2, sort_keys=False) + "\n")
    return path


def read(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise MobiledeployError(
            f"{directory}: no {MANIFEST}; expected an output folder of mobiledeploy quantize"
        )
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise MobiledeployError(f"{path}: not valid JSON; re-run mobiledeploy quantize") from None
    if not isinstance(content, dict) or content.get("schema") != SCHEMA:
        raise MobiledeployError(f"{path}: unknown manifest schema; re-run mobiledeploy quantize")
    return content
