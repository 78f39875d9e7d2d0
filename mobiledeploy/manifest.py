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
from .reports import Artifact

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
    problem = _problem(content)
    if problem:
        raise MobiledeployError(f"{path}: {problem}; the manifest was edited or damaged — re-run mobiledeploy quantize")
    return content


FORMATS = {"keras", "tflite", "onnx"}
PRECISIONS = {"float32", "int8"}


def _problem(content: dict) -> str:
    """What is wrong with a manifest's structure, or "" (later stages index it without checks)."""
    files = content.get("files")
    if not isinstance(files, list):
        return "'files' is not a list"
    for entry in files:
        if not isinstance(entry, dict):
            return "a 'files' entry is not an object"
        name = entry.get("file")
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            return f"file name {name!r} is not a plain file name inside the folder"
        if entry.get("format") not in FORMATS or entry.get("precision") not in PRECISIONS:
            return f"{name}: unknown format/precision {entry.get('format')!r}/{entry.get('precision')!r}"
        digest, size = entry.get("sha256"), entry.get("size")
        if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            return f"{name}: sha256 is not 64 hex digits"
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"{name}: size is not a non-negative integer"
    prep = content.get("preprocessing")
    if not isinstance(prep, dict):
        return "'preprocessing' is not an object"
    for key in ("height", "width", "channels"):
        value = prep.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 16384:
            return f"preprocessing {key} {value!r} is not a positive image size"
    if prep.get("scaling") not in ("mobilenet", "unit", "raw"):
        return f"preprocessing scaling {prep.get('scaling')!r} is unknown"
    crop = prep.get("crop_fraction", 0.875)
    if not isinstance(crop, (int, float)) or isinstance(crop, bool) or not 0 < crop <= 1:
        return f"preprocessing crop_fraction {crop!r} is not in (0, 1]"
    if not isinstance(content.get("model", {}), dict):
        return "'model' is not an object"
    return ""


def verified_files(build_dir: Path, content: dict) -> list[dict]:
    """The manifest's file entries, after checking each file's size and sha256."""
    entries = content.get("files") or []
    if not entries:
        raise MobiledeployError(f"{build_dir}/{MANIFEST} lists no files; re-run mobiledeploy quantize")
    for entry in entries:
        verified(build_dir, entry)
    return entries


def verified(build_dir: Path, entry: dict) -> Path:
    """The path of one file the manifest lists, after checking its size and sha256."""
    path = build_dir / entry["file"]
    if not path.is_file():
        raise MobiledeployError(f"{path}: listed in the manifest but missing; re-run mobiledeploy quantize")
    if path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
        raise MobiledeployError(
            f"{path}: contents differ from the manifest (sha256 mismatch): the file was changed "
            "or truncated after quantize; re-run mobiledeploy quantize"
        )
    return path
