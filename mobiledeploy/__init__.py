"""mobiledeploy: make a trained Keras MobileNet ready for phones and small ARM boards.

The Python API mirrors the CLI::

    import mobiledeploy
    result = mobiledeploy.quantize("model.h5", "calibration_data/", "build/")
    print(result.drift)

Heavy libraries (TensorFlow, ONNX Runtime) load only when a function needs them.
"""

from __future__ import annotations

import os

# TensorFlow logs C++ chatter to stderr on import; keep the terminal for our own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from .errors import MobiledeployError  # noqa: E402
from .types import QuantizeOptions, QuantizeResult  # noqa: E402

__version__ = "0.1.0"
__all__ = ["quantize", "QuantizeOptions", "QuantizeResult", "MobiledeployError", "__version__"]


def quantize(model_path, calib, output_dir="build", options: QuantizeOptions | None = None,
             progress=None, **settings) -> QuantizeResult:
    """Same as ``mobiledeploy quantize``. Settings are ``QuantizeOptions`` fields."""
    from .pipeline import quantize as run

    if settings:
        options = QuantizeOptions(**{**(options or QuantizeOptions()).to_dict(), **settings})
    return run(model_path, calib, output_dir, options, progress)
