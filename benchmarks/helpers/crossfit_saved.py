"""crossfit_levers.py's saved outputs: each fold's outputs for one lever, kept beside its build
with what they depend on, so that --reuse can take them back instead of building again."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAVED = "crossfit-outputs.npz"


def sources_digest(model: Path) -> str:
    """What a build's outputs depend on besides its options and images: the model file,
    mobiledeploy's source and the versions of the converters and runtimes."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    import mobiledeploy

    digest = hashlib.sha256(model.read_bytes())
    for path in sorted(Path(mobiledeploy.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    for package in ("tensorflow", "tf-keras", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy"):
        try:
            digest.update(f"{package}={version(package)}".encode())
        except PackageNotFoundError:  # a package this environment does not have
            digest.update(f"{package}=none".encode())
    return digest.hexdigest()


def save_outputs(out: Path, fingerprint: dict, saved: dict) -> None:
    """One fold's outputs for one lever, and what they depend on, beside its build."""
    import json

    arrays = {"fingerprint": np.array(json.dumps(fingerprint, sort_keys=True))}
    for kind in ("float", "float_views"):
        if saved[kind]:
            arrays[f"{kind}/names"] = np.array(list(saved[kind]))
            arrays[f"{kind}/values"] = np.stack(list(saved[kind].values()))
    for kind in ("int8", "int8_views"):
        for artifact, rows in saved[kind].items():
            arrays[f"{kind}/{artifact}/names"] = np.array(list(rows))
            arrays[f"{kind}/{artifact}/values"] = np.stack(list(rows.values()))
    partial = out / (SAVED + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(out / SAVED)


def load_outputs(out: Path, fingerprint: dict) -> dict | None:
    """What save_outputs saved, or None when it is missing or anything it depends on changed."""
    import json

    if not (out / SAVED).is_file():
        return None
    with np.load(out / SAVED) as arrays:
        if str(arrays["fingerprint"]) != json.dumps(fingerprint, sort_keys=True):
            return None
        saved: dict = {"float": {}, "int8": {}, "float_views": {}, "int8_views": {}}
        for key in arrays.files:
            parts = key.split("/")
            if parts[-1] != "names":
                continue
            rows = dict(zip(arrays[key].tolist(), arrays["/".join(parts[:-1]) + "/values"]))
            if len(parts) == 2:
                saved[parts[0]] = rows
            else:
                saved[parts[0]][parts[1]] = rows
    return saved
