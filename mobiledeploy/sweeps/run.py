"""Run a sweep plan: one build per (model, setting), then one evaluation per (build, device,
evaluation set) and one latency measurement per (build, device), each a task on the local
backend (this process, or N processes) or on a Ray cluster.

Every task is cached in the output folder under the content hash of its inputs: the model's
bytes, the images' digest, the quantize options, the device, the bench settings and the
libraries' versions. A rerun computes only what changed, and an interrupted sweep resumes: a
build is published whole or not at all, a result is written whole once its task ends. A task
that fails is reported in its cell (and not cached), and the other cells still run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from importlib import metadata
from pathlib import Path

from ..data import datasets
from ..errors import MobiledeployError, OutputError
from ..jsonout import dumps
from ..manifest import sha256
from ..options import Progress
from ..reports import SweepReport
from ..staging import write_text_atomic
from ..version import __version__
from . import backends, cells
from .plan import Plan

MARKER = ".mobiledeploy-sweep"  # marks a folder a sweep made, that a rerun may write into
LIBRARIES = ("mobiledeploy", "tensorflow", "keras", "ai-edge-litert", "ai-edge-quantizer", "onnx", "onnxruntime",
             "tf2onnx", "numpy")


def run_sweep(plan: Plan, output_dir: str | Path, workers: int = 1, ray: str | None = None,
              trust_model_code: bool = False, progress: Progress | None = None) -> SweepReport:
    """Every cell of ``plan``, from the cache in ``output_dir`` where its inputs are unchanged."""
    report = progress or (lambda step, done, total: None)
    started = time.perf_counter()
    out = _sweep_folder(Path(output_dir), plan)
    versions = library_versions()
    calib = _digest(plan.calib)
    builds, todo = {}, []
    for model in plan.models:
        model_hash = content_hash(model.path)
        for setting in plan.settings:
            options = plan.options_for(model, setting, trust_model_code)
            settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in ("trust_model_code",
                                                                                          "overwrite")}
            key = _key({"model": model_hash, "calib": calib, "options": settings, "versions": versions})
            folder = out / "builds" / f"{model.name}.{setting.name}.{key[:16]}"
            builds[model.name, setting.name] = (key, folder)
            if not (folder / "manifest.json").is_file():
                todo.append({"kind": "build", "model": str(model.path), "calib": str(plan.calib),
                             "output": str(folder), "options": dataclasses.asdict(options)})
    ran, failed = 0, {}
    ran += _execute(todo, workers, ray, report, "build", failed)
    evals = {name: _digest(folder) for name, folder in plan.evals}
    measurements, todo = {}, []
    for (model, setting), (key, folder) in builds.items():
        if str(folder) in failed:
            continue
        for device in plan.devices:
            where = {"device": device.device, "remote_python": device.remote_python}
            for name, data in plan.evals:
                result = out / "results" / f"eval-{_key({'build': key, 'data': evals[name], **where})[:24]}.json"
                measurements[model, setting, device.name, name] = result
                if not _cached(result):
                    todo.append({"kind": "eval", "build": str(folder), "data": str(data), **where,
                                 "result": str(result)})
            if plan.bench is not None:
                bench = {"bench": dict(plan.bench)}
                result = out / "results" / f"bench-{_key({'build': key, **where, **bench})[:24]}.json"
                measurements[model, setting, device.name, "bench"] = result
                if not _cached(result):
                    todo.append({"kind": "bench", "build": str(folder), **where, **bench, "result": str(result)})
    ran += _execute(todo, workers, ray, report, "evaluate and time", failed)
    rows = cells.rows(plan, builds, measurements, failed)
    total = len(builds) + len(measurements)
    result = SweepReport(str(plan.source), str(out), rows, ran, total - ran, len(failed),
                         round(time.perf_counter() - started, 1), versions)
    write_text_atomic(out / "results.json", dumps(result.to_dict(), "sweep") + "\n")
    write_text_atomic(out / "results.csv", cells.csv_text(rows))
    write_text_atomic(out / "sweep.html", cells.html_page(result))
    return result


def _execute(tasks: list[dict], workers: int, ray: str | None, report, step: str, failed: dict) -> int:
    """Run ``tasks`` on the backend; a result is written as soon as its task ends. Returns how many
    ran; a failed one goes into ``failed`` (its output path -> its one-line error)."""
    report(step, 0, len(tasks))

    def finished(done: int, task: dict, outcome: dict) -> None:
        if "error" in outcome:
            failed[task.get("output") or task["result"]] = outcome["error"]
        elif task["kind"] != "build":
            write_text_atomic(Path(task["result"]), dumps(outcome["report"]) + "\n")
        report(step, done, len(tasks))

    backends.execute(tasks, workers, ray, finished)
    return len(tasks)


def _cached(result: Path) -> bool:
    """Whether a task's result is in the cache and readable; a damaged one is removed (and the
    task runs again) instead of failing the whole table."""
    if not result.is_file():
        return False
    try:
        cells.read_result(result)
        return True
    except MobiledeployError:
        result.unlink()
        return False


def _sweep_folder(out: Path, plan: Plan) -> Path:
    """The output folder, made on first use; an existing one must be a sweep's (its marker)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"output path {out} is a file or a symbolic link; name a folder with -o")
    inputs = [plan.calib, *(m.path for m in plan.models), *(folder for _, folder in plan.evals)]
    resolved = out.resolve()
    for source in inputs:  # neither inside the other: results among the images would become images
        source = source.resolve()
        if resolved == source or resolved in source.parents or source in resolved.parents:
            raise OutputError(f"output folder {out} and the input {source} overlap (one holds the other); "
                              "choose another -o folder")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise OutputError(f"output folder {out} exists and is not a sweep's (no {MARKER}); choose another -o "
                          "folder (a sweep reuses only its own)")
    if not resolved.parent.is_dir():
        raise OutputError(f"cannot create {out}: parent folder {resolved.parent} does not exist")
    for sub in ("builds", "results"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("a folder of mobiledeploy sweep results; a rerun reuses what it holds\n")
    return out


def library_versions() -> dict[str, str]:
    """The versions that make a result: a new one computes the cells again."""
    versions = {"mobiledeploy": __version__}  # this code's own, whatever metadata an old install left
    for name in LIBRARIES[1:]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def content_hash(path: Path) -> str:
    """sha256 of a model file, or of a SavedModel folder's files (their names and bytes)."""
    if path.is_file():
        return sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return _key({str(file.relative_to(path)): sha256(file) for file in files})


def _digest(folder: Path) -> str:
    """The images' digest (names, bytes and labels), as eval records it."""
    return datasets.open_data(folder).digest


def _key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
