"""``manifest.json``: every file in a build folder with its hash, and how the build was made.

Later commands (eval, check, bench, inspect, analyze) read the preprocessing, the head and the
file list from here, so the user states them once. The manifest is an input like any other: it
is read within size and depth budgets, every key is checked (unknown keys are errors, so an
entry cannot smuggle in a ``path`` to somewhere else), and ``Build.path`` is the only way any
command opens a file it lists: a plain name inside the folder, a regular file (no symlink, no
FIFO), whose size and sha256 match. No timestamps: the same inputs give the same manifest, but for
``timings`` (each stage's seconds), which no file's bytes depend on.

The schema is documented in docs/manifest.md and docs/manifest.schema.json.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from .errors import MobiledeployError
from .inputs import finite_number, read_json_file
from .jsonout import dumps
from .reports import HEADS, SCALINGS, Artifact, Fallback, Preprocessing

MANIFEST = "manifest.json"
SCHEMA = 2
LIBRARIES = ("mobiledeploy", "tensorflow", "keras", "ai-edge-litert", "onnx", "onnxruntime",
             "tf2onnx", "numpy", "pillow")
FORMATS = ("keras", "tflite", "onnx")
PRECISIONS = ("float32", "int8", "int16x8", "mixed", "float16", "dynamic")
# what each stage that rewrote the float model's channels recorded, with the model it wrote
STAGES_WITH_REFERENCE = ("equalization", "dither")
RECORDS = ("input_scaling", "calibration", "settings", "folding", "equalization", "dither", "refinement",
           "logit_floor", "activation_ranges", "mixed_precision", "quantization_aware", "drift", "versions", "timings")
TIMINGS = "timings"  # the one record that differs run to run: how long each stage took


class ManifestError(MobiledeployError):
    """A build folder's manifest is missing, damaged, edited or of another version."""


@dataclass(frozen=True)
class ModelSource:
    """The model file a build was made from."""

    source: str
    sha256: str | None
    format: str  # h5, keras, savedmodel
    saved_by_keras: str
    trusted_code: bool
    name: str
    input_shape: tuple
    output_shape: tuple

    def to_dict(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "format": self.format,
                "saved_by_keras": self.saved_by_keras, "trusted_code": self.trusted_code, "name": self.name,
                "input_shape": list(self.input_shape), "output_shape": list(self.output_shape)}


@dataclass(frozen=True)
class Manifest:
    """Everything a build records. The typed fields are what later commands read; the records
    (stage reports, settings, versions) are JSON objects for people and tools, checked to be
    objects but otherwise kept as written."""

    created_by: str
    model: ModelSource
    preprocessing: Preprocessing
    head: str  # a Head kind
    files: tuple[Artifact, ...]
    fallbacks: tuple[Fallback, ...] = ()
    records: dict = field(default_factory=dict)  # name (one of RECORDS) -> dict or None
    schema: int = SCHEMA

    @property
    def reference(self) -> Artifact | None:
        """The float model the int8 files mirror channel by channel when a stage rewrote the
        folded model's channels (the last one that did: dither after equalization)."""
        for stage in reversed(STAGES_WITH_REFERENCE):
            record = self.records.get(stage)
            if record:
                return _artifact(record["reference"], f"{stage}.reference")
        return None

    @property
    def logit_floor(self) -> tuple[str, bool, float] | None:
        """(layer, whether its softmax was split off, floor) of the int8 files' logit floor."""
        record = self.records.get("logit_floor")
        return (record["layer"], record["split_softmax"], record["floor"]) if record else None

    @property
    def calibrated_on(self) -> tuple[str, ...]:
        """The samples the int8 files were calibrated on, as quantize listed them (paths relative
        to its source, or row numbers); what a manifest holds there that is no name is left out."""
        record = self.records.get("calibration") or {}
        items = record.get("calib_items", ()) if isinstance(record, dict) else ()
        return tuple(item for item in items if isinstance(item, str)) if isinstance(items, list) else ()

    def entry(self, file: str) -> Artifact | None:
        return next((a for a in self.files if a.file == file), None)

    def to_dict(self) -> dict:
        record = self.records.get
        return {
            "schema": self.schema, "created_by": self.created_by, "model": self.model.to_dict(),
            "preprocessing": self.preprocessing.to_dict(), "input_scaling": record("input_scaling"),
            "head": {"kind": self.head, "meaning": HEADS[self.head]},
            **{name: record(name) for name in ("calibration", "settings", "folding", "equalization", "dither",
                                               "refinement", "logit_floor", "activation_ranges", "mixed_precision",
                                               "quantization_aware")},
            "fallbacks": [f.to_dict() for f in self.fallbacks], "files": [a.to_dict() for a in self.files],
            "drift": record("drift"), "versions": record("versions"), TIMINGS: record(TIMINGS),
        }


@dataclass(frozen=True)
class Build:
    """A build folder and its checked manifest; ``path`` opens the files it lists."""

    directory: Path
    manifest: Manifest

    def path(self, entry: Artifact) -> Path:
        """The file of ``entry``, after checking it is a regular file directly inside the folder
        whose size and sha256 are the manifest's."""
        return verified_path(self.directory, entry)

    def check_input(self, input_shape: tuple) -> None:
        """Refuse preprocessing that does not make the model's input: images are decoded at the
        manifest's size, which an edited manifest could set to 16384 x 16384."""
        prep = self.manifest.preprocessing
        if tuple(input_shape) != (prep.height, prep.width, prep.channels):
            raise ManifestError(f"{self.directory}/{MANIFEST}: preprocessing makes {prep.height}x{prep.width}x"
                                f"{prep.channels} images but the model takes {'x'.join(map(str, input_shape))}; "
                                "re-run mobiledeploy quantize")

    def verified_files(self) -> tuple[Artifact, ...]:
        """Every listed file, each checked (``path``)."""
        if not self.manifest.files:
            raise ManifestError(f"{self.directory}/{MANIFEST} lists no files; re-run mobiledeploy quantize")
        for entry in self.manifest.files:
            self.path(entry)
        return self.manifest.files


def open_build(directory: str | Path) -> Build:
    """A build folder with its manifest read and checked (``read``)."""
    directory = Path(directory)
    return Build(directory, read(directory))


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


def write(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST
    path.write_text(dumps(manifest.to_dict()) + "\n")
    return path


def read(directory: str | Path) -> Manifest:
    """The manifest of a build folder, every part of it checked; a one-line ``ManifestError``
    naming the first problem otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a folder; expected an output folder of mobiledeploy quantize")
    if not path.exists():
        raise ManifestError(f"{directory}: no {MANIFEST}; expected an output folder of mobiledeploy quantize")
    content = read_json_file(path, error=ManifestError, fix="re-run mobiledeploy quantize")
    if not isinstance(content, dict):
        raise ManifestError(f"{path}: not a JSON object; re-run mobiledeploy quantize")
    version = content.get("schema")
    if version != SCHEMA:
        raise ManifestError(f"{path}: manifest schema {version!r}, this mobiledeploy reads schema {SCHEMA}; "
                            "re-run mobiledeploy quantize with this version")
    try:
        return parse(content)
    except _Problem as problem:
        raise ManifestError(f"{path}: {problem}; the manifest was edited or damaged — re-run mobiledeploy quantize") \
            from None


def parse(content: dict) -> Manifest:
    """A manifest from its JSON content; ``_Problem`` names what is wrong."""
    top = {"schema", "created_by", "model", "preprocessing", "head", "files", "fallbacks", *RECORDS}
    _only(content, top, "the manifest")
    files = _list(content, "files", "the manifest")
    entries = tuple(_artifact(entry, f"files[{i}]") for i, entry in enumerate(files))
    names = [a.file for a in entries]
    if len(set(names)) != len(names):
        raise _Problem(f"file {next(n for n in names if names.count(n) > 1)!r} is listed twice")
    records = {}
    for name in RECORDS:
        value = content.get(name)
        if value is not None and not isinstance(value, dict):
            raise _Problem(f"'{name}' is not an object")
        records[name] = value
    for stage in STAGES_WITH_REFERENCE:
        if records[stage] is not None:
            _artifact(records[stage].get("reference"), f"{stage}.reference")
    floor = records["logit_floor"]
    if floor is not None and not (isinstance(floor.get("layer"), str) and isinstance(floor.get("split_softmax"), bool)
                                  and finite_number(floor.get("floor"))):
        raise _Problem("'logit_floor' needs a layer name, split_softmax and a finite floor")
    return Manifest(
        created_by=_text(content, "created_by", "the manifest"), model=_model(content.get("model")),
        preprocessing=_preprocessing(content.get("preprocessing")), head=_head(content.get("head")),
        files=entries, fallbacks=tuple(_fallback(f, i) for i, f in enumerate(_list(content, "fallbacks", "the manifest"))),
        records=records)


def verified_path(directory: Path, entry: Artifact) -> Path:
    """The checked path of one listed file (see ``Build.path``)."""
    path = directory / entry.file
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: listed in the manifest but missing; re-run mobiledeploy quantize") from None
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable ({exc.strerror}); re-run mobiledeploy quantize") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise ManifestError(f"{path}: listed in the manifest but {kind}; a build holds only the files quantize "
                            "wrote — re-run mobiledeploy quantize")
    if info.st_size != entry.size or sha256(path) != entry.sha256:
        raise ManifestError(
            f"{path}: contents differ from the manifest (sha256 mismatch): the file was changed "
            "or truncated after quantize; re-run mobiledeploy quantize"
        )
    return path


# --- checks of the parts ----------------------------------------------------------------


class _Problem(Exception):
    """What is wrong with a manifest's structure (becomes a ManifestError with the file's path)."""


def _only(value: dict, allowed, where: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise _Problem(f"{where} has unknown key(s) {', '.join(map(repr, unknown[:3]))}")


def _list(content: dict, key: str, where: str) -> list:
    value = content.get(key, [])
    if not isinstance(value, list):
        raise _Problem(f"'{key}' of {where} is not a list")
    return value


def _text(content: dict, key: str, where: str) -> str:
    value = content.get(key)
    if not isinstance(value, str):
        raise _Problem(f"'{key}' of {where} is not text")
    return value


def _artifact(entry, where: str) -> Artifact:
    if not isinstance(entry, dict):
        raise _Problem(f"{where} is not an object")
    _only(entry, Artifact.__dataclass_fields__, where)
    name = entry.get("file")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
            or name.startswith(".") or "\x00" in name:
        raise _Problem(f"file name {name!r} is not a plain file name inside the folder")
    if entry.get("format") not in FORMATS or entry.get("precision") not in PRECISIONS:
        raise _Problem(f"{name}: unknown format/precision {entry.get('format')!r}/{entry.get('precision')!r}")
    digest, size = entry.get("sha256"), entry.get("size")
    if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise _Problem(f"{name}: sha256 is not 64 hex digits")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _Problem(f"{name}: size is not a non-negative integer")
    details = entry.get("details", {})
    if not isinstance(details, dict):
        raise _Problem(f"{name}: details is not an object")
    tensors = details.get("tensor_map", {})
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tensors.items()):
        raise _Problem(f"{name}: tensor_map is not an object of layer and tensor names")
    return Artifact(name, entry["format"], entry["precision"], digest, size, details)


def _model(value) -> ModelSource:
    if not isinstance(value, dict):
        raise _Problem("'model' is not an object")
    _only(value, ModelSource.__dataclass_fields__, "'model'")
    digest = value.get("sha256")
    if digest is not None and (not isinstance(digest, str) or len(digest) != 64):
        raise _Problem("model sha256 is not 64 hex digits or null")
    shapes = [value.get("input_shape"), value.get("output_shape")]
    if not all(isinstance(s, list) and all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in s)
               for s in shapes):
        raise _Problem("model input_shape/output_shape are not lists of sizes")
    if not isinstance(value.get("trusted_code"), bool):
        raise _Problem("model trusted_code is not true or false")
    return ModelSource(_text(value, "source", "'model'"), digest, _text(value, "format", "'model'"),
                       _text(value, "saved_by_keras", "'model'"), value["trusted_code"], _text(value, "name", "'model'"),
                       tuple(shapes[0]), tuple(shapes[1]))


def _preprocessing(value) -> Preprocessing:
    if not isinstance(value, dict):
        raise _Problem("'preprocessing' is not an object")
    _only(value, Preprocessing.__dataclass_fields__, "'preprocessing'")
    for key in ("height", "width", "channels"):
        size = value.get(key)
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 16384:
            raise _Problem(f"preprocessing {key} {size!r} is not a positive image size")
    if value.get("channels") not in (1, 3):
        raise _Problem(f"preprocessing channels {value.get('channels')!r} is not 1 or 3")
    if value.get("scaling") not in SCALINGS:
        raise _Problem(f"preprocessing scaling {value.get('scaling')!r} is unknown")
    crop = value.get("crop_fraction", 0.875)
    if not finite_number(crop) or not 0.1 <= crop <= 1:
        raise _Problem(f"preprocessing crop_fraction {crop!r} is not in [0.1, 1]")
    if not isinstance(value.get("scaling_in_model", False), bool):
        raise _Problem("preprocessing scaling_in_model is not true or false")
    return Preprocessing.from_dict(value)


def _head(value) -> str:
    if not isinstance(value, dict) or value.get("kind") not in HEADS:
        raise _Problem(f"head {value!r} is not one of {', '.join(HEADS)}")
    _only(value, ("kind", "meaning"), "'head'")
    return value["kind"]


def _fallback(value, index: int) -> Fallback:
    if not isinstance(value, dict) or set(value) != set(Fallback.__dataclass_fields__) \
            or not all(isinstance(v, str) for v in value.values()):
        raise _Problem(f"fallbacks[{index}] is not an object of layer, setting and reason")
    return Fallback(**value)
