"""eval and check: every artifact of a build (and any file to compare with) run on the same
images, scored against the build's float model and the labels."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import metrics as evaluate, gate
from .. import manifest
from . import sanity
from ..jsonout import dumps
from ..inputs import is_regular
from ..errors import MobiledeployError, first_line
from ..options import GateRules, Progress
from ..reports import EvalReport, GateResult
from ..data import datasets
from ..model.heads import head_for
from ..quiet import import_tensorflow
from ..runtime import devices
from ..runtime.host import Process, outputs_of
from ..runtime.runners import is_quantized, open_runner
from ..staging import write_text_atomic


def evaluate_build(
    build_dir: str | Path,
    data: str | Path,
    labels_file: str | Path | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
    device: str = "cpu",
    compare: tuple[str | Path, ...] = (),
    workers: int = 1,
    remote_python: str | None = None,
    ray: str | None = None,
) -> EvalReport:
    """Run every artifact listed in ``build_dir/manifest.json`` on ``data``; compare with float.

    The preprocessing comes from the manifest, and each file's sha256 is checked against it
    first, so a changed or truncated artifact is refused by name. With ``device="arm[:cpu]"``
    the .tflite/.onnx files also run under ARM emulation, with ``device="ssh://user@host"`` on
    that board (its Python: ``remote_python``, or one set up there): their metrics come from
    those outputs, and each row says how many outputs were bit-identical to this CPU's. ``compare``
    adds .tflite/.onnx files from elsewhere (an int8 file published with the model, another
    tool's) to the same run and table, scored against the same float model and labels.

    ``workers`` above 1 runs each .tflite/.onnx file in that many worker processes at once, each
    on a contiguous share of the batches (this machine's Python, or the emulated ARM one): the
    same outputs and metrics as one process, and a shard whose worker died runs again. ``ray``
    (an address, or "auto") runs the shards as tasks on that Ray cluster's nodes instead, as many
    as it has CPUs unless ``workers`` says otherwise.
    """
    import numpy as np

    report = progress or (lambda step, done, total: None)
    build = manifest.open_build(build_dir)
    # the paths are the build's checked ones (manifest.Build.path), never read from the manifest
    files = [{"file": e.file, "path": build.path(e), "format": e.format, "precision": e.precision}
             for e in build.verified_files()]
    files += [_compared(Path(path), {f["file"] for f in files}) for path in compare]
    preprocessing = build.manifest.preprocessing
    dataset = datasets.open_data(data, labels_file)
    import_tensorflow()
    labels = np.asarray(dataset.labels) if dataset.labelled else None
    reference_name = next((f["file"] for f in files if f["format"] == "keras"), None)
    if reference_name is None:
        raise MobiledeployError(f"{build_dir}/manifest.json lists no Keras float model to compare with; "
                                "re-run mobiledeploy quantize")
    total = len(dataset.items)
    target = devices.open_target(device, remote_python, report, ray)
    runners = {entry["file"]: open_runner(entry["path"]) for entry in files}
    head = head_for(runners[reference_name].model, build.manifest.head)
    expected = runners[reference_name].input_shape
    build.check_input(expected)
    for entry in (e for e in files if e.get("compared")):
        if runners[entry["file"]].input_shape != expected:
            raise MobiledeployError(f"{entry['file']}: input {runners[entry['file']].input_shape} differs from the "
                                    f"build's {expected}; compare files made for the same input size")
    step = f"evaluate {len(runners)} artifacts"
    retried: list[str] = []  # the shards whose worker died and ran again
    with tempfile.TemporaryDirectory(prefix="mobiledeploy-eval-") as tmp:
        saved: list[str] = []
        batches = datasets.iter_batches(dataset, preprocessing, batch_size)
        elsewhere = target is not None and target.kind != "cpu"  # another CPU: rows compare with this one's
        pooled = target is not None or workers > 1  # worker processes, which read the very same batches
        if pooled:
            batches = _saving(batches, Path(tmp), saved)
        seconds: dict[str, float] = {}
        here = runners if elsewhere or not pooled else {reference_name: runners[reference_name]}
        outputs = evaluate.collect(here, batches, lambda done: report(step, done, total), seconds)
        x86 = dict(outputs)
        if pooled:
            process = target.process() if target is not None else Process()
            shards = target.cpus if ray is not None and workers == 1 else workers
            where = (f"in {shards} shards on the Ray cluster at {ray}" if ray is not None else
                     f"on {target.device} ({target.kind})" if target is not None else f"in {workers} worker processes")
            for done, entry in enumerate(e for e in files if e["format"] != "keras"):
                report(f"run {where}", done, len(files) - 1)
                started = time.perf_counter()
                outputs[entry["file"]] = outputs_of(entry["path"], entry["format"], saved, Path(tmp), process,
                                                    shards, retried.append)
                seconds[entry["file"]] = time.perf_counter() - started
    for entry in (e for e in files if e.get("compared")):
        outputs[entry["file"]] = _same_classes(entry, outputs[entry["file"]], outputs[reference_name].shape[1])
        x86[entry["file"]] = _same_classes(entry, x86[entry["file"]], outputs[reference_name].shape[1])
    classes = head.classes(outputs[reference_name])
    if labels is not None and labels.max(initial=0) >= classes:
        raise MobiledeployError(
            f"{data}: class index {int(labels.max())} is beyond the model's {classes} classes; "
            "pass --labels with the model's class order"
        )
    reference = outputs[reference_name]
    # which samples each file gets right and agrees on: its row's shares, a compared file's lead
    # paired on them, and what a baseline keeps so that a later check can pair its change with them
    hits = {e["file"]: evaluate.sample_hits(reference, outputs[e["file"]], labels, head) for e in files}
    rows = []
    for e in files:
        row = {"format": e["format"], "precision": e["precision"],
               **({k: e[k] for k in ("compared", "background_dropped") if k in e}),
               **evaluate.artifact_metrics(e["file"], reference, outputs[e["file"]], labels, head,
                                           hits[e["file"]], hits[reference_name])}
        if elsewhere:
            row["device"] = "cpu" if e["format"] == "keras" else target.device
            if e["format"] != "keras":
                row.update(evaluate.bit_exactness(x86[e["file"]], outputs[e["file"]], head))
        rows.append(row)
    own_int8 = [e["file"] for e in files if e["precision"] != "float32" and not e.get("compared")]
    for row in (r for r in rows if r.get("compared")):
        row["paired_ci95"] = {ours: evaluate.paired_intervals(hits[ours], hits[row["artifact"]]) for ours in own_int8}
    per_sample = {e["file"]: hits[e["file"]] for e in files if not e.get("compared")}
    warnings = retried + sanity.calibrated_on(dataset.items, build.manifest.calibrated_on)
    warnings += sanity.float_model(reference, head, "evaluation images")
    warnings += sanity.int8_files(tuple(evaluate.drift(e["file"], reference, outputs[e["file"]], head)
                                        for e in files if e["precision"] != "float32"))
    return EvalReport(str(build_dir), str(data), dataset.digest, build.manifest.model.sha256,
                      total, dataset.labelled, reference_name, tuple(rows), preprocessing.to_dict(),
                      target.device if target is not None else "cpu", head.kind, per_sample,
                      {name: round(spent, 3) for name, spent in seconds.items()}, tuple(warnings))


def check_build(
    build_dir: str | Path,
    data: str | Path,
    rules: GateRules = GateRules(),
    labels_file: str | Path | None = None,
    baseline: str | Path | None = None,
    update_baseline: bool = False,
    batch_size: int = 64,
    progress: Progress | None = None,
    device: str = "cpu",
    compare: tuple[str | Path, ...] = (),
    workers: int = 1,
    remote_python: str | None = None,
    ray: str | None = None,
) -> GateResult:
    """The CI gate: evaluate the build (and the ``compare`` files), then apply ``rules``, against
    ``baseline`` when given. ``update_baseline`` writes the baseline instead of reading it."""
    if update_baseline and baseline is None:
        raise MobiledeployError("updating a baseline needs its path (--baseline FILE)")
    report = evaluate_build(build_dir, data, labels_file, batch_size, progress, device, compare, workers,
                            remote_python, ray)
    stored = gate.read_baseline(Path(baseline), report) if baseline is not None and not update_baseline else None
    result = GateResult(report, tuple(gate.evaluate_rules(report, rules, stored)))
    if update_baseline:
        write_text_atomic(Path(baseline), dumps(gate.make_baseline(report, rules)) + "\n")
    return result


def _compared(path: Path, taken: set[str]) -> dict:
    """The eval entry of a file to compare with the build's own (not in the manifest)."""
    if not is_regular(path) or path.suffix.lower() not in (".tflite", ".onnx"):
        raise MobiledeployError(f"--compare {path}: expected an existing .tflite or .onnx file")
    try:
        precision = "int8" if is_quantized(path) else "float32"
    except Exception as exc:  # onnx and LiteRT raise their own types for bytes that are no model
        raise MobiledeployError(f"--compare {path}: not a readable {path.suffix} model ({first_line(exc)}); "
                                "pass the .tflite or .onnx file itself") from None
    name = str(path) if str(path) not in taken else str(path.resolve())
    return {"file": name, "path": path.resolve(), "format": path.suffix.lower()[1:], "precision": precision,
            "compared": True}


def _same_classes(entry: dict, outputs, classes: int):
    """A compared file's outputs in the build's classes. TF-slim models (the int8 MobileNets
    TensorFlow published) have one more output, class 0 for 'background': it is dropped, and
    ``entry`` (which becomes the file's row) says so."""
    if outputs.shape[1] == classes + 1 and classes > 1:
        entry["background_dropped"] = True
        return outputs[:, 1:]
    if outputs.shape[1] != classes:
        raise MobiledeployError(f"{entry['file']}: {outputs.shape[1]} outputs where the build's model has "
                                f"{classes}; compare files of the same classifier")
    return outputs


def _saving(batches, folder: Path, saved: list[str]):
    """Pass batches through, keeping each as a .npy file for the worker processes."""
    import numpy as np

    for i, batch in enumerate(batches):
        path = folder / f"batch_{i:05d}.npy"
        np.save(path, batch, allow_pickle=False)
        saved.append(str(path))
        yield batch
