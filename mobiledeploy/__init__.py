"""mobiledeploy: make a trained Keras MobileNet ready for phones and small ARM boards.

The Python API mirrors the CLI: each function builds the same option objects the command does
and returns the report it prints::

    import mobiledeploy
    result = mobiledeploy.quantize("model.h5", "calibration_data/", "build/")
    report = mobiledeploy.evaluate_build("build/", "eval_images/", device="arm:cortex-a53")
    gate = mobiledeploy.check_build("build/", "eval_images/", max_drop=1.0, compare=["their_int8.tflite"])
    latency = mobiledeploy.bench_build("build/", num_threads=2)
    costs = mobiledeploy.inspect_model("model.h5", alpha=0.5)
    layers = mobiledeploy.analyze_build("build/", "eval_images/")

Problems with the inputs raise a ``MobiledeployError`` subclass whose message is one line saying
what was expected, what was found and what to do; anything else is a bug. Heavy libraries
(TensorFlow, ONNX Runtime) load only when a function needs them, and importing this package
changes no process-wide state.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from os import PathLike
from typing import Sequence

from .errors import MobiledeployError
from .limits import MAX_WORKERS
from .options import PRESETS, BenchSettings, GateRules, Progress, QuantizeOptions
from .reports import AnalyzeReport, BenchReport, CostReport, EvalReport, GateResult, QuantizeResult, SweepReport
from .version import __version__

__all__ = ["quantize", "evaluate_build", "check_build", "bench_build", "inspect_model", "analyze_build", "sweep",
           "QuantizeOptions", "BenchSettings", "GateRules", "PRESETS", "QuantizeResult", "EvalReport", "GateResult",
           "BenchReport", "CostReport", "AnalyzeReport", "SweepReport", "MobiledeployError", "__version__"]

Path = str | PathLike
# The functions import their stages when called: the worker that runs files under ARM emulation
# imports this package too, and there every module imported costs a hundred times more.


def quantize(model_path: Path, calib: Path, output_dir: Path = "build", options: QuantizeOptions | None = None,
             progress: Progress | None = None, *, preset: str = "default", **settings) -> QuantizeResult:
    """``mobiledeploy quantize``: fold BatchNorm, calibrate, refine and write the float and int8
    TFLite and ONNX files of the model at ``model_path`` to ``output_dir`` (all at once, or not at
    all), with the drift of each int8 file on held-out calibration images.

    Start from ``options`` or the named ``preset`` ("default": every refinement; "plain": what the
    converters give alone) and override any ``QuantizeOptions`` field by keyword, e.g.
    ``num_calib=300, refine="bias", max_disagreement=2.0``."""
    from .pipeline import quantize as run

    if "max_drop" in settings:  # the old name, for one release
        warnings.warn("quantize(max_drop=...) is now max_disagreement=...", DeprecationWarning, stacklevel=2)
        settings["max_disagreement"] = settings.pop("max_drop")
    if preset not in PRESETS:
        raise MobiledeployError(f"unknown preset '{preset}'; expected one of {', '.join(PRESETS)}")
    options = replace(options or PRESETS[preset], **settings)
    return run(model_path, calib, output_dir, options, progress)


def evaluate_build(build_dir: Path, data: Path, labels: Path | None = None, batch_size: int = 64,
                   device: str = "cpu", progress: Progress | None = None, compare: Sequence[Path] = (),
                   workers: int = 1, remote_python: str | None = None, ray: str | None = None) -> EvalReport:
    """``mobiledeploy eval``: every file of the build (and the ``compare`` files) on the images in
    ``data``, scored against the build's float model and the labels; ``device="arm:CPU"`` runs the
    .tflite/.onnx files under ARM emulation, ``device="ssh://user@host"`` on that board (with its
    Python at ``remote_python``, or one set up there); ``workers`` runs them in that many
    processes, each on a share of the images (the same results); ``ray`` (an address, or "auto")
    runs those shards as tasks on a Ray cluster."""
    from .evaluation import builds

    return builds.evaluate_build(build_dir, data, labels, batch_size, progress, device, tuple(compare),
                                 _workers(workers), remote_python, ray)


def check_build(build_dir: Path, data: Path, labels: Path | None = None, max_drop: float = GateRules.max_drop,
                min_agreement: float = GateRules.min_agreement, baseline: Path | None = None,
                tolerance: float = GateRules.tolerance, sqnr_tolerance: float = GateRules.sqnr_tolerance,
                compare: Sequence[Path] = (), update_baseline: bool = False, batch_size: int = 64,
                device: str = "cpu", progress: Progress | None = None, workers: int = 1,
                remote_python: str | None = None, ray: str | None = None) -> GateResult:
    """``mobiledeploy check``: evaluate the build, then apply the CI gate's rules (top-1 at most
    ``max_drop`` points below float, agreement at least ``min_agreement``, no regression against
    ``baseline``, no loss against the ``compare`` files). A failed rule is in the result
    (``result.passed``), not raised; bad input raises ``MobiledeployError``."""
    from .evaluation import builds

    rules = GateRules(max_drop, min_agreement, tolerance, sqnr_tolerance)
    return builds.check_build(build_dir, data, rules, labels, baseline, update_baseline, batch_size, progress,
                              device, tuple(compare), _workers(workers), remote_python, ray)


def _workers(workers: int) -> int:
    """``workers`` checked as the CLI's --workers is: a whole number from 1 to MAX_WORKERS."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise MobiledeployError(f"workers={workers!r}: expected a whole number of processes from 1 to {MAX_WORKERS}")
    return workers


def bench_build(target: Path, data: Path | None = None, include_keras: bool = False, device: str = "cpu",
                progress: Progress | None = None, remote_python: str | None = None, **settings) -> BenchReport:
    """``mobiledeploy bench``: the latency of every file of a build folder (or of one file), each
    timed in its own process (on ``device``: this CPU, ``arm:CPU`` emulated, ``ssh://user@host``
    a board). ``settings`` are ``BenchSettings`` fields (``num_threads``, ``num_runs``, ...); the
    ones not given take ``device``'s defaults, as the command does."""
    from .evaluation import latency

    if "batch" in settings:  # the old name, for one release
        warnings.warn("bench_build(batch=...) is now batch_size=...", DeprecationWarning, stacklevel=2)
        settings["batch_size"] = settings.pop("batch")
    return latency.bench_build(target, BenchSettings.for_device(device, **settings), data, include_keras, progress,
                               device, remote_python)


def inspect_model(model: Path, alpha: float = 1.0, rho: float = 1.0, trust_model_code: bool = False,
                  input_size: tuple[int, int] | None = None) -> CostReport:
    """``mobiledeploy inspect``: params and multiply-adds per layer of a model file or a build's
    float model, or of the same network at another width (``alpha``) or resolution (``rho``)."""
    from .evaluation import costs

    return costs.inspect_model(model, alpha, rho, trust_model_code, input_size)


def analyze_build(build_dir: Path, data: Path, max_images: int = 200,
                  progress: Progress | None = None) -> AnalyzeReport:
    """``mobiledeploy analyze``: per-layer drift of each int8 file of the build against the float
    model it was made from, on up to ``max_images`` images of ``data``."""
    from .evaluation import layers

    return layers.analyze_build(build_dir, data, max_images, progress=progress)


def sweep(sweep_file: Path, output_dir: Path = "sweep", workers: int = 1, ray: str | None = None,
          trust_model_code: bool = False, progress: Progress | None = None) -> SweepReport:
    """``mobiledeploy sweep``: every cell (model x setting x device x evaluation set) of the TOML
    file ``sweep_file``, each build, evaluation and measurement cached in ``output_dir`` under
    the hash of its inputs; ``workers`` tasks at once in local processes, or on the Ray cluster
    at ``ray``. A failed cell is in the report (``report.failed``), not raised."""
    from .sweeps.plan import read_plan
    from .sweeps.run import run_sweep

    return run_sweep(read_plan(sweep_file), output_dir, _workers(workers), ray, trust_model_code, progress)
