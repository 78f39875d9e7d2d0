"""mobiledeploy: make a trained Keras MobileNet ready for phones and small ARM boards.

The Python API mirrors the CLI::

    import mobiledeploy
    result = mobiledeploy.quantize("model.h5", "calibration_data/", "build/")
    report = mobiledeploy.evaluate_build("build/", "eval_images/", device="arm:cortex-a53")
    gate = mobiledeploy.check_build("build/", "eval_images/", max_drop=1.0, compare=["their_int8.tflite"])
    latency = mobiledeploy.bench_build("build/", num_threads=2)
    costs = mobiledeploy.inspect_model("model.h5", alpha=0.5)
    layers = mobiledeploy.analyze_build("build/", "eval_images/")

(``evaluate``, ``bench`` and ``analyze`` are the stage modules, hence the ``_build`` names.)

Heavy libraries (TensorFlow, ONNX Runtime) load only when a function needs them.
"""

from __future__ import annotations

import os

# TensorFlow logs C++ chatter to stderr on import; keep the terminal for our own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from .errors import MobiledeployError  # noqa: E402
from .options import GateRules, QuantizeOptions  # noqa: E402
from .reports import QuantizeResult  # noqa: E402

__version__ = "0.1.0"
__all__ = ["quantize", "evaluate_build", "check_build", "bench_build", "inspect_model", "analyze_build",
           "QuantizeOptions", "QuantizeResult", "MobiledeployError", "__version__"]


def quantize(model_path, calib, output_dir="build", options: QuantizeOptions | None = None,
             progress=None, **settings) -> QuantizeResult:
    """Same as ``mobiledeploy quantize``. Settings are ``QuantizeOptions`` fields."""
    from .pipeline import quantize as run

    if settings:
        options = QuantizeOptions(**{**(options or QuantizeOptions()).to_dict(), **settings})
    return run(model_path, calib, output_dir, options, progress)


def evaluate_build(build_dir, data, labels=None, batch_size: int = 64, device: str = "cpu", progress=None,
                   compare=()):
    """Same as ``mobiledeploy eval``: an ``EvalReport`` of every artifact (and of the files in
    ``compare``) against float."""
    from .evaluation import builds as build_eval

    return build_eval.evaluate_build(build_dir, data, labels, batch_size, progress, device, tuple(compare))


def check_build(build_dir, data, labels=None, max_drop: float = 1.0, min_agreement: float = 0.90,
                baseline=None, tolerance: float = 0.5, sqnr_tolerance: float = 1.0, compare=(),
                update_baseline: bool = False, batch_size: int = 64, device: str = "cpu", progress=None):
    """Same as ``mobiledeploy check``: a ``GateResult`` (the ``EvalReport``, every rule's result and
    ``passed``). A failed rule is in the result, not raised; bad input raises ``MobiledeployError``."""
    from .evaluation import builds as build_eval, gate

    rules = GateRules(max_drop, min_agreement, tolerance, sqnr_tolerance)
    return build_eval.check_build(build_dir, data, rules, labels, baseline, update_baseline, batch_size, progress,
                                  device, tuple(compare))


def bench_build(target, data=None, include_keras: bool = False, device: str = "cpu", progress=None, **settings):
    """Same as ``mobiledeploy bench``. Settings are ``BenchSettings`` fields (num_threads, ...)."""
    from .evaluation import latency
    from .options import BenchSettings

    return latency.bench_build(target, BenchSettings(**settings), data, include_keras, progress, device)


def inspect_model(model, alpha: float = 1.0, rho: float = 1.0, trust_model_code: bool = False, input_size=None):
    """Same as ``mobiledeploy inspect``: a ``CostReport`` of params and multiply-adds per layer."""
    from .evaluation import costs

    return costs.inspect_model(model, alpha, rho, trust_model_code, input_size)


def analyze_build(build_dir, data, max_images: int = 200, progress=None):
    """Same as ``mobiledeploy analyze``: an ``AnalyzeReport`` of per-layer drift."""
    from .evaluation import layers

    return layers.analyze_build(build_dir, data, max_images, progress=progress)
