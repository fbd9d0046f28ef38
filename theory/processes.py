"""Discrepancy processes: true per-region paths d_t^k and observation noise laws.

In-assumption paths move by at most ``delta`` a step; in-assumption noise laws have mean 0 and
variance exactly sigma^2 (the bound needs at most sigma^2). ``jumps`` (steps far above delta)
and ``heavy_t`` (Student-t with df <= 2: infinite variance) each break one assumption, so that
the check has something to fail on. Arrays are (steps, *shape); every draw comes from ``rng``.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Drift = Literal["linear", "random_walk", "sinusoid", "piecewise", "decay"]
Noise = Literal["gaussian", "uniform", "student_t", "two_point"]
DRIFTS: tuple[str, ...] = get_args(Drift)
NOISES: tuple[str, ...] = get_args(Noise)
COUPLED = "coupled"  # truth that falls where the allocation samples (needs the allocation)
OUTSIDE_DRIFTS = ("jumps",)
OUTSIDE_NOISES = ("heavy_t",)
BAND = (0.5, 2.5)  # random walks and piecewise paths are folded into this band


def fold(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect x into [lo, hi]; 1-Lipschitz, so a folded path never moves faster than the original."""
    width = hi - lo
    y = np.mod(x - lo, 2 * width)
    return lo + np.where(y > width, 2 * width - y, y)


def drift_path(name: str, steps: int, shape: tuple, delta: float, rng: np.random.Generator,
               jump: float = 0.5, jump_every: int = 300) -> np.ndarray:
    """True discrepancy (steps, *shape): in-assumption paths satisfy |d_t - d_{t-1}| <= delta."""
    t = np.arange(steps, dtype=np.float64).reshape(-1, *([1] * len(shape)))
    level = rng.uniform(1.0, 2.0, shape)
    if name == "linear":  # the worst case of the drift term: delta every step, one direction
        sign = rng.choice([-1.0, 1.0], shape)
        return level + np.where(sign < 0, delta * (steps - 1), 0.0) + sign * delta * t
    if name == "random_walk":
        moves = delta * rng.choice([-1.0, 1.0], (steps, *shape))
        moves[0] = 0.0
        return fold(level + np.cumsum(moves, 0), *BAND)
    if name == "sinusoid":  # amplitude 0.5, angular frequency delta / 0.5: slope at most delta
        phase = rng.uniform(0, 2 * np.pi, shape)
        return level + 0.5 * np.sin(2.0 * delta * t + phase)
    if name == "piecewise":  # linear pieces, slopes uniform in [-delta, delta], ~8 pieces
        change = rng.random((steps, *shape)) < 8.0 / steps
        change[0] = True
        piece = np.cumsum(change, 0) - 1
        slope = np.take_along_axis(rng.uniform(-delta, delta, (steps, *shape)), piece, 0)
        slope[0] = 0.0
        return fold(level + np.cumsum(slope, 0), *BAND)
    if name == "decay":  # exponential decay to a floor, initial slope delta
        floor = rng.uniform(0.3, 0.8, shape)
        start = level + 0.5
        rate = np.minimum(1.0, delta / (start - floor))
        return floor + (start - floor) * (1.0 - rate) ** t
    if name == "jumps":  # outside: constant, then jumps of size ``jump`` every ~jump_every steps
        flips = rng.random((steps, *shape)) < 1.0 / jump_every
        flips[0] = False
        return level + jump * (np.cumsum(flips, 0) % 2)
    raise ValueError(f"unknown process {name!r}")


def noise(name: str, size, sigma: float, rng: np.random.Generator, df: float = 3.0) -> np.ndarray:
    """Observation noise of mean 0; variance sigma^2 for the in-assumption laws."""
    if name == "gaussian":
        return sigma * rng.standard_normal(size)
    if name == "uniform":
        return sigma * np.sqrt(3.0) * rng.uniform(-1.0, 1.0, size)
    if name == "student_t":
        if df <= 2:
            raise ValueError("student_t needs df > 2 (finite variance); use heavy_t for df <= 2")
        return sigma * np.sqrt((df - 2.0) / df) * rng.standard_t(df, size)
    if name == "two_point":
        return sigma * (2.0 * rng.integers(0, 2, size) - 1.0)
    if name == "heavy_t":  # outside: scale sigma, infinite variance
        if df > 2:
            raise ValueError("heavy_t is the df <= 2 (infinite variance) law; use student_t for df > 2")
        return sigma * rng.standard_t(df, size)
    raise ValueError(f"unknown noise law {name!r}")


class Coupled:
    """A student that learns where it trains: a region's discrepancy falls with its share of draws.

    d <- d - learn * (n / B) * (d - floor) + learn * forget * (cap - d), with learn = delta / (cap - floor),
    so |d_{t+1} - d_t| <= delta and d stays in [floor, cap].
    """

    def __init__(self, start: np.ndarray, floor: np.ndarray, delta: float, draws: int,
                 cap: float = 3.0, forget: float = 0.05):
        self.d = np.array(start, dtype=np.float64)
        self.floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), self.d.shape).copy()
        self.cap, self.draws, self.forget = float(cap), int(draws), float(forget)
        if not ((self.floor <= self.d).all() and (self.d <= cap).all()):
            raise ValueError("coupled process needs floor <= start <= cap")
        self.learn = np.minimum(1.0 / (1.0 + forget), delta / (cap - self.floor))

    @classmethod
    def random(cls, shape: tuple, delta: float, draws: int, rng: np.random.Generator) -> "Coupled":
        return cls(rng.uniform(1.0, 2.0, shape), rng.uniform(0.3, 0.8, shape), delta, draws)

    @property
    def low(self) -> float:
        return float(self.floor.min())

    def step(self, counts: np.ndarray) -> np.ndarray:
        """Advance one step given the draws per region (same shape as d); returns the new d."""
        share = np.asarray(counts, dtype=np.float64) / self.draws
        self.d = self.d - self.learn * share * (self.d - self.floor) + self.learn * self.forget * (self.cap - self.d)
        return self.d
