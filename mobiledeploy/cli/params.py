"""Parameter types and option groups shared by the commands, so an option means the same thing,
in the same unit, checked the same way, wherever it appears."""

from __future__ import annotations

import math

import click


class Finite(click.FloatRange):
    """A float in a range that is also finite: 'nan' and 'inf' parse as floats and would slip
    through a plain range (nan compares false with every bound) into the stages."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SEED = click.IntRange(min=0, max=2**32 - 1)  # what numpy's seeded generators take
