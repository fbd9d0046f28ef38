"""The sweep of ``aria theory-sim``: a typed config (unknown keys rejected), default and quick presets.

A YAML file overrides the chosen preset key by key (nested sections merge), so a file may hold
only what it changes. ``configs/theory.yaml`` is the default preset written out. Every number has
the range the simulation honours (``aria.errors.StrictModel``: finite, no ``true`` for a number;
sizes, scales and list lengths bounded), so a bad value fails here, not in the sweep or the plots.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, ValidationError, model_validator

from aria.config import Seed, read_yaml
from aria.errors import StrictModel, UserError, format_validation_error

from .bounds import warmup_eta, warmup_steps
from .processes import Drift, Noise

Alpha = Field(gt=0, le=1)
SIGMA_MAX, DELTA_MAX, LIST_MAX = 100.0, 10.0, 64  # noise and drift in units of a discrepancy of ~1
Sampled = Literal["linear", "random_walk", "sinusoid", "piecewise", "decay", "coupled"]


class _Section(StrictModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def Sweep(**kw):  # noqa: N802 - a list of values to sweep: 1 to LIST_MAX of them
    return Field(min_length=kw.pop("min_length", 1), max_length=LIST_MAX, **kw)


class Runs(_Section):
    seeds: int = Field(ge=2, le=1000, description="independent seeds per configuration")
    steps: int = Field(ge=50, le=200_000, description="steps simulated per seed")
    burn_in: int = Field(ge=0, le=200_000, description="steps discarded before measuring")

    @model_validator(mode="after")
    def _window(self):
        if self.steps - self.burn_in < 20:
            raise ValueError("steps - burn_in must leave at least 20 measured steps")
        return self


class Every(Runs):
    """Regions observed at every step (one strategy instance for all seeds x regions)."""

    alphas: list[float] = Sweep()
    sigmas: list[Annotated[float, Field(le=SIGMA_MAX)]] = Sweep()
    deltas: list[Annotated[float, Field(le=DELTA_MAX)]] = Sweep()
    processes: list[Drift] = Sweep()
    noises: list[Noise] = Sweep()
    delays: list[int] = Sweep()
    regions: int = Field(4, ge=1, le=64, description="regions per seed (independent replicates here)")


class Scan(_Section):
    """The alpha scan on the worst-case drift (linear trend, Gaussian noise): measured minimiser vs a*."""

    alphas: list[float] = Sweep(min_length=5)
    sigma: float = Field(gt=0, le=SIGMA_MAX)
    delta: float = Field(gt=0, le=DELTA_MAX)
    delays: list[int] = Sweep()


class SampledRuns(Runs):
    """Regions observed only when the allocation draws them; designs are (K regions, eps, B draws)."""

    alphas: list[float] = Sweep()
    sigmas: list[Annotated[float, Field(le=SIGMA_MAX)]] = Sweep()
    deltas: list[Annotated[float, Field(le=DELTA_MAX)]] = Sweep()
    designs: list[tuple[Annotated[int, Field(le=256)], float, Annotated[int, Field(le=10_000)]]] = Sweep()
    delays: list[int] = Sweep()
    processes: list[Sampled] = Sweep(description="cycled over the configurations")
    noises: list[Noise] = Sweep(description="cycled over the configurations")


class Outside(_Section):
    """Processes outside the assumptions: jumps far above delta, Student-t with df <= 2."""

    alphas: list[float] = Sweep()
    sigma: float = Field(gt=0, le=SIGMA_MAX)
    delta: float = Field(gt=0, le=DELTA_MAX)
    jump: float = Field(gt=0, le=100 * DELTA_MAX, description="jump size (compare with delta)")
    jump_every: int = Field(ge=2, le=200_000, description="mean steps between jumps")
    heavy_df: list[float] = Sweep(min_length=0, description="Student-t degrees of freedom, each in (0, 2]")
    heavy_processes: list[Drift] = Sweep()
    delays: list[int] = Sweep()


class AllocationCheck(_Section):
    """Allocation quality on the coupled process: every registered strategy but ``exclude``."""

    regions: int = Field(ge=2, le=256)
    draws: int = Field(ge=1, le=10_000)
    steps: int = Field(ge=10, le=200_000)
    seeds: int = Field(ge=1, le=1000)
    alpha: float = Alpha
    eps: float = Field(ge=0, le=1)
    sigma: float = Field(ge=0, le=SIGMA_MAX)
    delta: float = Field(gt=0, le=DELTA_MAX)
    noise: Noise = "uniform"
    skew: float = Field(1.0, ge=0, le=8, description="Zipf exponent of the region sizes (small regions start worse)")
    exclude: list[str] = Field(["none"], max_length=LIST_MAX)


class TheoryConfig(_Section):
    seed: Seed = 0
    confidence: float = Field(gt=0.5, lt=1, description="one-sided level of the confidence limits")
    student_df: float = Field(gt=2, le=1e6, description="degrees of freedom of the in-assumption Student-t")
    workers: int = Field(0, ge=0, le=64, description="processes (0: min(2, CPUs))")
    every: Every
    scan: Scan
    sampled: SampledRuns
    outside: Outside
    allocation: AllocationCheck

    @model_validator(mode="after")
    def _check(self):
        for name in ("every", "scan", "sampled", "outside"):
            sec = getattr(self, name)
            if any(not 0 < a <= 1 for a in sec.alphas):
                raise ValueError(f"{name}.alphas must lie in (0, 1]")
            if any(not 0 <= d <= 8 for d in sec.delays):
                raise ValueError(f"{name}.delays must lie in 0..8")
        for sec in (self.every, self.sampled):
            if any(s <= 0 for s in sec.sigmas) or any(d < 0 for d in sec.deltas):
                raise ValueError("sigmas must be > 0 and deltas >= 0")
        late = max(self.every.delays + self.scan.delays + self.outside.delays)
        if self.every.burn_in < late:
            raise ValueError("every.burn_in must be at least the largest delay")
        sa = self.sampled
        if any(k < 1 or not 0 < eps <= 1 or b < 1 for k, eps, b in sa.designs):
            raise ValueError("sampled.designs are (K >= 1, 0 < eps <= 1, B >= 1)")
        eta = warmup_eta(self.confidence, sa.seeds)
        need, k, eps, b, delay = max((warmup_steps(k, eps, b, delay, eta) + delay, k, eps, b, delay)
                                     for k, eps, b in sa.designs for delay in set(sa.delays))
        if sa.burn_in < need:
            raise ValueError(f"sampled.burn_in {sa.burn_in} is shorter than the warm-up of design [{k}, {eps:g}, {b}] "
                             f"at delay {delay}: t0 + delay = {need} steps (every region observed by t0 except with "
                             f"probability {eta:.2g}; theory/README.md, warm-up)")
        if any(not 0 < df <= 2 for df in self.outside.heavy_df):
            raise ValueError("outside.heavy_df must lie in (0, 2]")
        return self


_ALL_DRIFTS = ["linear", "random_walk", "sinusoid", "piecewise", "decay"]
_ALL_NOISES = ["gaussian", "uniform", "student_t", "two_point"]

DEFAULT = {
    "seed": 0, "confidence": 0.999, "student_df": 3.0, "workers": 0,
    "every": {"alphas": [0.02, 0.08, 0.3], "sigmas": [0.1, 0.3], "deltas": [0.0005, 0.003],
              "processes": _ALL_DRIFTS, "noises": _ALL_NOISES, "delays": [0, 1], "regions": 4,
              "seeds": 12, "steps": 2200, "burn_in": 700},
    "scan": {"alphas": [0.005, 0.0075, 0.011, 0.016, 0.023, 0.033, 0.047, 0.068, 0.1, 0.17, 0.3, 0.5],
             "sigma": 0.3, "delta": 0.001, "delays": [0, 1]},
    "sampled": {"alphas": [0.05, 0.2], "sigmas": [0.2], "deltas": [0.002],
                "designs": [[4, 0.5, 1], [8, 1.0, 2], [16, 0.3, 4]], "delays": [0, 1],
                "processes": ["sinusoid", "piecewise", "linear", "random_walk", "decay", "coupled"],
                "noises": _ALL_NOISES,
                "seeds": 5, "steps": 1400, "burn_in": 450},
    "outside": {"alphas": [0.02, 0.08, 0.3], "sigma": 0.1, "delta": 0.0005, "jump": 0.5, "jump_every": 300,
                "heavy_df": [1.5, 2.0], "heavy_processes": ["random_walk"], "delays": [0, 1]},
    "allocation": {"regions": 12, "draws": 4, "steps": 1000, "seeds": 3, "alpha": 0.1, "eps": 0.2,
                   "sigma": 0.1, "delta": 0.01, "noise": "uniform", "skew": 1.0, "exclude": ["none"]},
}

QUICK_CHANGES = {
    "every": {"alphas": [0.03, 0.15], "sigmas": [0.2], "deltas": [0.002], "seeds": 8, "steps": 1000, "burn_in": 330},
    "scan": {"alphas": [0.01, 0.015, 0.022, 0.032, 0.045, 0.065, 0.1, 0.15, 0.3]},
    "sampled": {"alphas": [0.1], "designs": [[4, 0.5, 2], [8, 1.0, 1]], "seeds": 4, "steps": 500, "burn_in": 150},
    "outside": {"alphas": [0.05], "heavy_df": [1.5]},
    "allocation": {"regions": 8, "steps": 300, "seeds": 2},
}


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key (nested dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


QUICK = merge(DEFAULT, QUICK_CHANGES)


def load_config(path: Optional[Path] = None, quick: bool = False) -> TheoryConfig:
    """The preset (default or quick) overridden by the YAML file at ``path``; UserError on a bad one."""
    data = QUICK if quick else DEFAULT
    source = "theory preset"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            changes = read_yaml(path, what="theory config")
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror or err})") from err
        data = merge(data, changes)
    try:
        return TheoryConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=source)) from err
