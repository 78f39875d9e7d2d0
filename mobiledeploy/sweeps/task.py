"""One sweep task, run wherever the backend puts it: build a model with one setting, evaluate a
build on one device and evaluation set, or time a build on one device. Plain dicts in and out,
so that a process pool or Ray can carry them."""

from __future__ import annotations

from ..errors import MobiledeployError, first_line
from ..evaluation.builds import evaluate_build
from ..evaluation.latency import bench_build
from ..options import BenchSettings, QuantizeOptions
from ..pipeline import quantize


def run_task(task: dict) -> dict:
    """{"report": ...} for an evaluation or a measurement, {} for a build; {"error": one line} when
    the task failed (the sweep goes on with the other cells)."""
    try:
        if task["kind"] == "build":
            quantize(task["model"], task["calib"], task["output"], QuantizeOptions(**task["options"]))
            return {}
        if task["kind"] == "eval":
            report = evaluate_build(task["build"], task["data"], device=task["device"],
                                    remote_python=task["remote_python"])
            return {"report": report.to_dict()}
        settings = BenchSettings.for_device(task["device"], **task["bench"])
        report = bench_build(task["build"], settings, device=task["device"], remote_python=task["remote_python"])
        return {"report": report.to_dict()}
    except MobiledeployError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a bug in one cell must not cost the others: reported in that cell
        return {"error": f"{type(exc).__name__}: {first_line(exc)} (a bug: please report it with the sweep file)"}

