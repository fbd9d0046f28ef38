"""Drive the registered strategies through simulated discrepancy and measure what they do.

- ``run_every_step``: every region observed at every step. The ``aria`` EMA is then independent
  per region, so all seeds x regions x streams of one alpha are a single strategy instance.
- ``run_sampled``: a region is observed only when the allocation draws it. Each seed allocates
  with the real ``allocate`` on its own slice of the state; one ``update`` serves all seeds
  (aria's update is per region, so this equals one instance per seed; a test checks it).
- ``run_allocation``: any registered strategy on the coupled process, one instance per seed. A
  probing strategy (``probe_every``, the oracle) gets ``observe`` with the true discrepancy at
  every step divisible by ``probe_every``, before it allocates that step, as the engine does.

Feedback may be applied ``delay`` steps late: allocation at step t reads the state after step
t-1-delay, and the error at step t is m_{t-delay} - d_t (the estimate the next allocation uses).
Observations are shifted by a constant when needed so that none is negative (``update`` drops
negative feedback); the EMA is translation-equivariant, so the tracking error is unchanged.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np

from aria.strategies import Feedback, RegionInfo, check_allocation, create_strategy

from . import processes as P


@dataclass(frozen=True)
class Stream:
    """Truth and noise for seeds x regions: one process under one noise law (deterministic)."""

    process: str
    noise: str
    sigma: float
    delta: float
    regions: int
    seeds: int
    steps: int
    df: float = 3.0
    jump: float = 0.5
    jump_every: int = 300
    seed: int = 0

    def rng(self, salt: str = "") -> np.random.Generator:
        key = zlib.crc32(repr((self.process, self.noise, self.sigma, self.delta, self.regions, self.seeds,
                               self.steps, self.df, self.jump, self.jump_every, salt)).encode())
        return np.random.default_rng([self.seed, key])

    def truth(self) -> np.ndarray:
        """(steps, seeds, regions) true discrepancy of an exogenous process."""
        return P.drift_path(self.process, self.steps, (self.seeds, self.regions), self.delta,
                            self.rng("truth"), self.jump, self.jump_every)

    def noise_draws(self, per_step: int) -> np.ndarray:
        """(steps, seeds, per_step) observation noise."""
        return P.noise(self.noise, (self.steps, self.seeds, per_step), self.sigma, self.rng("noise"), self.df)


def aria(alpha: float, eps: float = 0.2, **extra):
    return create_strategy("aria", {"alpha": alpha, "eps": eps, "timestep_norm": False, **extra})


def run_every_step(alpha: float, streams: list[Stream], burn: int, max_delay: int = 1, trace: int = 0):
    """Per stream: mean squared error (delays 0..max_delay, seeds, regions) over steps >= burn.

    ``trace``: also return estimate and truth of the first ``trace`` columns of the first stream.
    """
    steps = streams[0].steps
    truths, obs = [], []
    for s in streams:
        d = s.truth().reshape(steps, -1)
        truths.append(d)
        obs.append(d + s.noise_draws(s.regions).reshape(steps, -1))
    truth, obs = np.concatenate(truths, 1), np.concatenate(obs, 1)
    shift = max(0.0, -float(obs.min()))
    obs += shift
    truth += shift  # errors are taken against the shifted truth
    cols = truth.shape[1]
    strategy = aria(alpha)
    state = strategy.init(RegionInfo(np.ones(cols, dtype=np.int64)), 0)
    ones = np.ones(cols)
    hist: deque = deque(maxlen=max_delay + 1)
    acc = np.zeros((max_delay + 1, cols))
    buf = np.empty(cols)
    traced = np.zeros((steps, trace)) if trace else None
    for t in range(steps):
        state = strategy.update(state, Feedback(obs[t], ones, t))
        hist.appendleft(state["estimate"])
        if trace:
            traced[t] = hist[0][:trace] - shift
        if t >= burn:
            for lag, m in enumerate(hist):
                np.subtract(m, truth[t], out=buf)
                acc[lag] += np.square(buf, out=buf)
    acc /= steps - burn
    out, start = [], 0
    for s in streams:
        width = s.seeds * s.regions
        out.append({"mse": acc[:, start:start + width].reshape(max_delay + 1, s.seeds, s.regions),
                    "dropped": int(state["dropped"]), "shift": shift})
        start += width
    if trace:
        out[0]["trace"] = {"estimate": traced, "truth": truth[:, :trace] - shift}
    return out


def _views(state: dict, seeds: list[int], regions: int) -> list[dict]:
    """Per-seed states sliced from a seeds x regions state (per-region arrays split, scalars kept)."""
    n = len(seeds)
    split = {k: v.reshape(n, regions, *v.shape[1:]) for k, v in state.items()
             if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n * regions}
    return [{**state, **{k: v[i] for k, v in split.items()}, "seed": seeds[i]} for i in range(n)]


def run_sampled(alpha: float, eps: float, draws: int, delay: int, stream: Stream, burn: int, trace: bool = False):
    """Mean squared error (seeds, regions) over steps >= burn when regions update only when drawn."""
    n, k, steps = stream.seeds, stream.regions, stream.steps
    coupled = stream.process == P.COUPLED
    if coupled:
        proc = P.Coupled.random((n, k), stream.delta, draws, stream.rng("truth"))
        low, truth = proc.low, None
    else:
        truth = stream.truth()
        low = float(truth.min())
    noise = stream.noise_draws(draws)
    shift = max(0.0, -(low + float(noise.min())))
    strategy = aria(alpha, eps)
    seeds = [stream.seed * 1000 + i for i in range(n)]
    state = strategy.init(RegionInfo(np.ones(n * k, dtype=np.int64)), 0)
    hist = deque([state], maxlen=delay + 1)
    offset = (np.arange(n) * k)[:, None]
    rows = np.arange(n)[:, None]
    acc = np.zeros((n, k))
    rec = {"estimate": np.zeros((steps, k)), "truth": np.zeros((steps, k)), "probabilities": np.zeros((steps, k))}
    regs = np.empty((n, draws), dtype=np.int64)
    for t in range(steps):
        d = proc.d if coupled else truth[t]
        for i, view in enumerate(_views(hist[0], seeds, k)):
            alloc = strategy.allocate(view, t, draws)
            regs[i] = alloc.regions
            if trace and i == 0:
                rec["probabilities"][t] = alloc.probabilities
        flat = (regs + offset).ravel()
        y = (d[rows, regs] + noise[t] + shift).ravel()
        sums = np.bincount(flat, weights=y, minlength=n * k)
        counts = np.bincount(flat, minlength=n * k).astype(np.float64)
        state = strategy.update(state, Feedback(sums, counts, t))
        hist.append(state)
        if t >= burn:
            acc += (hist[0]["estimate"].reshape(n, k) - shift - d) ** 2
        if trace:
            seen = np.asarray(hist[0]["visits"][:k]) > 0
            rec["estimate"][t] = np.where(seen, hist[0]["estimate"][:k] - shift, np.nan)
            rec["truth"][t] = d[0]
        if coupled:
            proc.step(counts.reshape(n, k))
    rate = np.asarray(state["visits"], dtype=np.float64).reshape(n, k) / steps
    out = {"mse": acc / (steps - burn), "dropped": int(state["dropped"]), "shift": shift, "rate": rate}
    if trace:
        out["trace"] = rec
    return out


def run_allocation(name: str, params: dict, sizes: np.ndarray, start: np.ndarray, floor: np.ndarray,
                   delta: float, sigma: float, noise_law: str, draws: int, steps: int, seeds: int,
                   seed: int = 0, trace: bool = False, df: float = 3.0):
    """Any registered strategy on the coupled process; final and time-averaged discrepancy per seed.

    A strategy with ``probe_every`` (the oracle) observes the true discrepancy ``proc.d`` (noise-free,
    unshifted: it lies in [floor, cap], > 0) at every step divisible by it, before allocating.
    """
    strategy = create_strategy(name, params)
    probe = int(getattr(strategy, "probe_every", None) or 0)
    measurements = 0
    k = len(sizes)
    proc = P.Coupled(np.tile(start, (seeds, 1)), np.tile(floor, (seeds, 1)), delta, draws)
    rng = np.random.default_rng([seed, zlib.crc32(b"allocation")])  # same noise for every strategy
    noise = P.noise(noise_law, (steps, seeds, draws), sigma, rng, df)
    shift = max(0.0, -(proc.low + float(noise.min())))
    states = [strategy.init(RegionInfo(sizes), seed * 1000 + i) for i in range(seeds)]
    worst = np.zeros((steps, seeds))
    probs = np.zeros((steps, k)) if trace else None
    counts = np.zeros((seeds, k))
    for t in range(steps):
        counts[:] = 0.0
        for i in range(seeds):
            if probe and t % probe == 0:
                states[i] = strategy.observe(states[i], proc.d[i].copy())
                measurements += i == 0
            alloc = strategy.allocate(states[i], t, draws)
            check_allocation(alloc, k, draws)  # a strategy that breaks the contract is reported as failed
            if trace and i == 0:
                probs[t] = alloc.probabilities
            y = proc.d[i, alloc.regions] + noise[t, i] + shift
            fb = Feedback.from_samples(alloc.regions, y, k, step=t)
            counts[i] = fb.counts[:, 0]
            states[i] = strategy.update(states[i], fb)
        worst[t] = proc.d.max(1)
        proc.step(counts)
    return {"final": proc.d.copy(), "worst": worst, "probabilities": probs, "measurements": measurements}
