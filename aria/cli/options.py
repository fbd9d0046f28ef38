"""Click types shared by the commands: numbers in the range the code honours (finite floats, seeds)."""

from __future__ import annotations

import math

import click

from aria.config import SEED_MAX


class FiniteFloat(click.FloatRange):
    """A float in [min, max] that is finite: click's FloatRange lets ``nan`` through (every comparison
    with it is false) and ``inf`` past an open maximum."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


SEED = click.IntRange(0, SEED_MAX)  # as the config's seeds (int64, torch.manual_seed)
