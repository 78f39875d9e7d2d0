"""User errors: one base class, messages that say what was expected, what was found, the fix.

The CLI prints a ``MobiledeployError`` as one line and exits 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class MobiledeployError(Exception):
    """An error caused by the user's input, not by a bug in mobiledeploy."""

    exit_code = 1


class ModelLoadError(MobiledeployError):
    """The model file is missing, corrupt, unsafe or uses something we do not support."""


class CalibrationError(MobiledeployError):
    """The calibration data is missing, empty, unreadable or has the wrong shape/values."""


class DataError(MobiledeployError):
    """The evaluation data or its labels file is missing, empty or inconsistent."""


class FoldingError(MobiledeployError):
    """Folding BatchNorm changed the model's outputs beyond the tolerance."""


class ExportError(MobiledeployError):
    """A converter failed or produced a file that breaks a promise (e.g. float ops in int8)."""


class OutputError(MobiledeployError):
    """The output folder cannot be written as asked (exists without --overwrite, unwritable)."""


def first_line(exc: BaseException) -> str:
    """The first line of a library exception's message (at most 200 characters), to quote in ours."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
