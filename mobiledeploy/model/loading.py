"""Read a model file safely: Keras 3 and Keras 2 ``.h5``, ``.keras``, Keras 2 SavedModel.

Nothing from the file is executed. The architecture is read as JSON and checked against an
allowlist of the MobileNet family's layers (``allowlist``) *before* Keras deserializes
anything; Lambda layers and custom objects are refused unless the caller explicitly trusts the
file.

Keras 2 files (most ``model.h5`` files in the wild) do not load with Keras 3's
``load_model`` (e.g. DepthwiseConv2D's ``groups`` key), so every format goes through the
same path: config JSON -> check -> translate for Keras 3 (``keras2_config``) -> ``from_config``
-> weights assigned by layer name -> nested models inlined (``flatten``).
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from ..errors import ModelLoadError, first_line
from .flatten import flatten
from ..inputs import is_regular, parse_json
from ..manifest import MANIFEST, ManifestError, open_build
from ..quiet import import_tensorflow
from .allowlist import check_config, checked_keras2_config, parsing
from .declared import check_declared_size
from ..limits import MAX_JSON_BYTES
from . import qat
from .sizing import fixed_size
from .checkpoint_input import checkpoint_weights
from .h5_input import check_tree, text_attribute

@dataclass(frozen=True)
class LoadedModel:
    """A Keras 3 model plus where it came from (recorded in the manifest)."""

    model: Any  # keras.Model
    path: str
    source_format: str  # "h5", "keras", "savedmodel"
    saved_by: str  # Keras version that wrote the file, when known
    trusted: bool
    # a quantization-aware trained model: the ranges its training learned (None for any other model)
    learned_ranges: qat.LearnedRanges | None = None


def load_model(path: str | Path, *, trust: bool = False, input_size: tuple[int, int] | None = None) -> LoadedModel:
    """Load ``path`` as a Keras 3 model without running code from it.

    Pass ``trust=True`` only for files you made or vetted: it lets Lambda layers and custom
    objects through (Keras unsafe mode). ``input_size`` (height, width) fixes the input of a
    model saved without one (``input_shape=(None, None, 3)``, fully convolutional).
    """
    loaded = _load(Path(path), trust)
    _check_finite(loaded.model, path)
    return replace(loaded, model=fixed_size(loaded.model, input_size))


def _check_finite(model, path) -> None:
    """Refuse weights holding NaN or Inf: every later stage would turn them into garbage files."""
    import numpy as np

    for layer in model.layers:
        for weight in layer.weights:
            if not np.isfinite(np.asarray(weight)).all():
                raise ModelLoadError(f"{path}: weight '{weight.path}' of layer '{layer.name}' holds NaN or Inf; "
                                     "the file is damaged or the training diverged: re-export a good checkpoint")


def float_model(target: str | Path, trust: bool = False, input_size: tuple[int, int] | None = None):
    """The Keras model of a model file, or the folded float model of a build folder (its file
    checked against the manifest, then loaded like any model file: nothing in it runs)."""
    target = Path(target)
    import_tensorflow()
    if target.is_dir() and (target / MANIFEST).is_file():
        build = open_build(target)
        entry = next((e for e in build.verified_files() if e.format == "keras"), None)
        if entry is None:
            raise ManifestError(f"{target}/{MANIFEST} lists no Keras model; re-run mobiledeploy quantize")
        return load_model(build.path(entry)).model
    return load_model(target, trust=trust, input_size=input_size).model


def _load(path: Path, trust: bool) -> LoadedModel:
    if not path.exists():
        raise ModelLoadError(
            f"model not found: {path}; expected a .h5 or .keras file or a SavedModel directory"
        )
    if path.is_dir():
        return _load_savedmodel(path, trust)
    if not is_regular(path):
        raise ModelLoadError(f"{path}: not a regular file (a FIFO, device or socket); expected a .h5 or .keras file "
                             "or a SavedModel directory")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _load_h5(path, trust)
    if suffix == ".keras":
        return _load_keras_zip(path, trust)
    raise ModelLoadError(
        f"{path}: unknown model format '{suffix or '(no extension)'}'; "
        "expected .h5, .keras or a SavedModel directory"
    )


# --- format readers ---------------------------------------------------------------------


def _load_h5(path: Path, trust: bool) -> LoadedModel:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ModelLoadError(
            f"{path}: not a readable HDF5 file ({first_line(exc)}); "
            "re-save the model with model.save('model.h5') or model.save('model.keras')"
        ) from None
    with handle:
        check_tree(handle, path)  # nothing from outside the file, nothing over budget
        raw = text_attribute(handle, "model_config", path)
        if raw is None:
            hint = "it holds weights only" if "layer_names" in handle.attrs else "no model_config"
            raise ModelLoadError(
                f"{path}: HDF5 file is not a full Keras model ({hint}); "
                "save the whole model with model.save('model.h5'), not save_weights()"
            )
        config = _parse_json(raw, path)
        quantization_aware = qat.is_quantization_aware(config)
        if quantization_aware:  # the float model inside the wrappers, with the ranges they learned
            config = qat.unwrap(config, path)
        saved_by = text_attribute(handle, "keras_version", path) or "unknown"
        model, renamed = _build(config, path, trust)
        group = handle["model_weights"] if "model_weights" in handle else handle
        weights = {renamed.get(name, name): values for name, values in _h5_weights(group, path)}
    learned = qat.learned_ranges(weights, path) if quantization_aware else None
    _assign_weights(model, qat.layer_weights(weights) if quantization_aware else weights, path)
    return LoadedModel(flatten(model), str(path), "h5", saved_by, trust, learned)


def _h5_weights(group, path: Path) -> Iterator[tuple[str, list]]:
    """(layer name, [(weight name, array)]) for every layer group; ``check_tree`` has vetted
    every dataset, so reading them reads only this file, within budget."""
    import h5py
    import numpy as np

    names = group.attrs.get("layer_names")
    layer_names = [_as_str(n) for n in names] if names is not None else list(group.keys())
    for layer_name in layer_names:
        layer_group = group.get(layer_name)
        if not isinstance(layer_group, h5py.Group):
            continue
        weight_names = [_as_str(n) for n in layer_group.attrs.get("weight_names", [])]
        try:
            yield layer_name, [(n, np.asarray(layer_group[n])) for n in weight_names]
        except (KeyError, OSError, TypeError) as exc:
            raise ModelLoadError(
                f"{path}: weights of layer '{layer_name}' are unreadable ({first_line(exc)}); "
                "the file is truncated or corrupt: re-save or re-download it"
            ) from None


def _load_keras_zip(path: Path, trust: bool) -> LoadedModel:
    import keras

    try:
        with zipfile.ZipFile(path) as archive:
            config = _parse_json(_zip_member(archive, "config.json", path), path)
            names = archive.namelist()
            metadata = parse_json(_zip_member(archive, "metadata.json", path), f"{path}: metadata.json",
                                  ModelLoadError, "re-save the model") if "metadata.json" in names else {}
            if "model.weights.h5" in names:
                _check_zipped_weights(archive, path)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, NotImplementedError, zlib.error) as exc:
        raise ModelLoadError(
            f"{path}: not a valid .keras archive ({first_line(exc)}); "
            "re-save the model with model.save('model.keras')"
        ) from None
    with parsing(path):
        check_config(config, path, trust)
        check_declared_size(config, path)
    version = str(metadata.get("keras_version", "")) if isinstance(metadata, dict) else ""
    if version.startswith("2."):  # tf-keras' .keras files name their weights by class, not by layer
        raise ModelLoadError(
            f"{path}: a .keras file saved by Keras {version} (tf-keras) is not supported; save the "
            "model with model.save('model.h5') or as a SavedModel directory, which load as saved"
        )
    try:
        with _safe_mode(not trust):
            model = keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except Exception as exc:  # Keras raises many types for broken archives
        raise ModelLoadError(
            f"{path}: Keras could not rebuild the model ({first_line(exc)}); "
            "re-save it with the Keras version that trained it"
        ) from None
    return LoadedModel(flatten(_as_functional(model)), str(path), "keras", version or "unknown", trust)


def _zip_member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """A small member of a .keras archive, its declared size checked before it is inflated (the
    archive's own directory states it, and Python's reader stops there)."""
    size = archive.getinfo(name).file_size
    if size > MAX_JSON_BYTES:
        raise ModelLoadError(f"{path}: refused: {name} inflates to {size:,} bytes, more than the "
                             f"{MAX_JSON_BYTES:,} allowed; re-save the model with model.save('model.keras')")
    return archive.read(name)


def _check_zipped_weights(archive: zipfile.ZipFile, path: Path) -> None:
    """The archive's weights file is HDF5: vetted like an .h5 model before Keras reads it."""
    import h5py

    with archive.open("model.weights.h5") as member, h5py.File(member, "r") as handle:
        check_tree(handle, path)


def _load_savedmodel(path: Path, trust: bool) -> LoadedModel:
    if not (path / "saved_model.pb").exists():
        raise ModelLoadError(
            f"{path}: directory is not a SavedModel (no saved_model.pb); "
            "pass a .h5/.keras file or a SavedModel directory"
        )
    metadata_file = path / "keras_metadata.pb"
    special = [f for f in [metadata_file, *(path / "variables").glob("*")] if f.exists() and not is_regular(f)]
    if special:
        raise ModelLoadError(f"{special[0]}: not a regular file (a FIFO, device or folder) inside the SavedModel; "
                             "re-save the model")
    if not metadata_file.exists():
        raise ModelLoadError(
            f"{path}: SavedModel has no Keras metadata (keras_metadata.pb), so its layers "
            "cannot be folded; save the Keras model itself with model.save('model.keras')"
        )
    from tensorflow.python.keras.protobuf import saved_metadata_pb2

    proto = saved_metadata_pb2.SavedMetadata()
    if metadata_file.stat().st_size > MAX_JSON_BYTES:
        raise ModelLoadError(f"{metadata_file}: refused: {metadata_file.stat().st_size:,} bytes of Keras metadata, "
                             f"more than the {MAX_JSON_BYTES:,} allowed; re-save the model")
    try:
        proto.ParseFromString(metadata_file.read_bytes())
        root = next(n for n in proto.nodes if n.node_path == "root")
        meta = parse_json(root.metadata, f"{metadata_file}", ModelLoadError, "re-save the model")
        config = {"class_name": meta["class_name"], "config": meta["config"]}
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{metadata_file}: unreadable Keras metadata ({first_line(exc)}); "
            "re-save the model with model.save('model.keras')"
        ) from None
    model, renamed = _build(config, path, trust)
    weights = checkpoint_weights(path / "variables" / "variables", path)
    _assign_weights(model, {renamed.get(name, name): values for name, values in weights.items()}, path)
    return LoadedModel(flatten(model), str(path), "savedmodel", str(meta.get("keras_version", "unknown")), trust)


# --- config checks and model building ---------------------------------------------------


def _build(config: dict, path: Path, trust: bool):
    """Check, sanitize and deserialize a Keras 2 model config (no weights); the layers renamed
    for Keras 3 (old name -> new), whose weights the file keeps under the old name."""
    import keras

    config, renamed = checked_keras2_config(config, path, trust)
    class_name = config.get("class_name")
    builder = keras.Sequential if class_name == "Sequential" else keras.Model
    try:
        with keras.saving.custom_object_scope({}), _safe_mode(not trust):
            model = builder.from_config(config["config"])
    except Exception as exc:
        raise ModelLoadError(
            f"{path}: Keras could not rebuild the architecture ({first_line(exc)}); "
            "re-save it as .keras with the Keras version that trained it"
        ) from None
    return _as_functional(model), renamed


def _safe_mode(enabled: bool):
    from keras.src.saving import serialization_lib

    return serialization_lib.SafeModeScope(enabled)


def _as_functional(model):
    """Sequential models become Functional so every later stage sees one graph type."""
    import keras

    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ModelLoadError(
                f"Sequential model '{model.name}' has no input shape; add an Input layer"
            )
        inputs = keras.Input(shape=model.inputs[0].shape[1:], name=f"{model.name}_input")
        outputs = inputs
        for layer in model.layers:
            outputs = layer(outputs)
        model = keras.Model(inputs, outputs, name=model.name)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelLoadError(
            f"model '{model.name}' has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; expected one image input and one output"
        )
    # Keras 2 configs nest the single input in a list; Keras 3 then warns on every call.
    model = keras.Model(model.inputs[0], model.outputs[0], name=model.name)
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise ModelLoadError(
            f"model input shape is {shape}; expected an image input (batch, height, width, 1 or 3)"
        )
    return model


def _assign_weights(model, weights: dict[str, list], path: Path) -> None:
    """Give every layer its saved weights, matched by layer name then by weight name. A nested
    model's weights are saved under its own name as '<inner layer>/<weight>' (HDF5), or under
    the inner layers' names (SavedModel)."""
    import keras

    for layer in model.layers:
        expected = layer.weights
        if not expected:
            continue
        saved = weights.get(layer.name)
        if isinstance(layer, keras.Model):
            inner = weights
            if saved is not None:
                inner = {}
                for name, value in saved:
                    parts = name.split("/")
                    inner.setdefault(parts[-2] if len(parts) > 1 else "", []).append((name, value))
            _assign_weights(layer, inner, path)
            continue
        if saved is None:
            raise ModelLoadError(
                f"{path}: no saved weights for layer '{layer.name}'; the file is incomplete"
            )
        by_name = {_short(n): a for n, a in saved}
        values = []
        for index, variable in enumerate(expected):
            short = _short(variable.name)
            value = by_name.get(short)
            if value is None and len(saved) == len(expected):
                value = saved[index][1]
            if value is None or tuple(value.shape) != tuple(variable.shape):
                found = None if value is None else tuple(value.shape)
                raise ModelLoadError(
                    f"{path}: weight '{short}' of layer '{layer.name}' has shape {found}, "
                    f"expected {tuple(variable.shape)}; the file does not match its own config"
                )
            values.append(value)
        layer.set_weights(values)


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _parse_json(raw, path: Path) -> dict:
    data = parse_json(raw, f"{path}: model config", ModelLoadError,
                      "the file is corrupt: re-save the model with model.save('model.keras')")
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: model config is not a JSON object; the file is corrupt")
    return data


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
