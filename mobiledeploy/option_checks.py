"""Refuse quantize settings no stage can run, before any work: the Python API reaches the pipeline
without the CLI's choices, so every field is checked here once."""

from __future__ import annotations

import math

from .errors import MobiledeployError
from .inputs import finite_number
from .options import PRECISIONS, QuantizeOptions
from .reports import HEADS


def check_options(options: QuantizeOptions) -> None:
    """Refuse settings no stage can run, before any work (the CLI's choices catch them first)."""
    choices = {"refine": ("adaround", "bias", "none"), "equalize": ("auto", "on", "off"), "logit_floor": ("auto", "off"),
               "activation_ranges": ("auto", "minmax", "mse"), "head": ("auto", *HEADS),
               "onnx_activations": ("int8", "uint8"), "dither": ("spare", "auto", "on", "off"),
               "precision": PRECISIONS, "io": ("int8", "uint8", "float")}
    for field, allowed in choices.items():
        value = getattr(options, field)
        if value not in allowed:
            raise MobiledeployError(f"unknown {field.replace('_', ' ')} setting '{value}'; expected {', '.join(allowed)}")
    if options.precision != "int8" and options.keep_float:
        raise MobiledeployError(f"--keep-float keeps layers in float within int8 files; --precision {options.precision} "
                                "has none: drop it, or use --precision int8")
    if options.precision not in ("int8", "mixed") and options.max_disagreement is not None:
        raise MobiledeployError(f"--max-disagreement is the budget of the int8 and mixed precisions' layer search; "
                                f"--precision {options.precision} has none: drop it")
    if options.rounding_samples < 1 or not 0 <= options.rounding_positions_per_weight < math.inf:
        raise MobiledeployError(
            f"rounding_samples {options.rounding_samples} and rounding_positions_per_weight "
            f"{options.rounding_positions_per_weight}: expected at least 1 image and a finite ratio of 0 or more")
    numbers = {"num_calib": (options.num_calib, 1, None), "num_holdout": (options.num_holdout, 0, None),
               "seed": (options.seed, 0, 2**32 - 1), "batch_size": (options.batch_size, 1, 4096),
               "crop_fraction": (options.crop_fraction, 0.1, 1.0), "fold_tolerance": (options.fold_tolerance, 0.0, 1.0),
               "max_disagreement": (options.max_disagreement, 0.0, 100.0)}
    for field, (value, low, high) in numbers.items():
        if value is None and field == "max_disagreement":
            continue
        if not finite_number(value) or value < low or (high is not None and value > high):
            raise MobiledeployError(f"{field} {value!r}: expected a finite number from {low}"
                                    + (f" to {high}" if high is not None else " up"))
