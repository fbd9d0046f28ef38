"""The tracking bounds of the EMA tracker m <- (1 - a) m + a y (derivation: theory/README.md).

The error of the estimate in force ``delay`` steps after its last feedback is split (Minkowski)
into a noise part and a drift part:

    noise:  sqrt(v + (sigma^2 - v) rho^n),  v = a sigma^2 / (2 - a),  rho = 1 - p a (2 - a)
    drift:  sqrt(E[A_n^2] + 2 D delta E[A_n] + D^2 delta^2) + t0 delta rho^(n/2)

A is the worst-case drift envelope A_n = c_n (A_{n-1} + delta), c_n = 1 - a w.p. p else 1 (exact
moments below); D the delay; t0 the warm-up (first-update) horizon; n the steps since then.
With p = 1 the drift part is exactly delta (1 - a) / a + D delta in the stationary limit.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import bdtr


def update_probability(eps: float, regions: int, draws: int) -> float:
    """p_min: a floor eps over K regions with B draws updates each region w.p. >= 1 - (1 - eps/K)^B."""
    return float(1.0 - (1.0 - eps / regions) ** draws)


def warmup_eta(confidence: float, seeds: int) -> float:
    """eta = (1 - confidence) / (10 seeds): a configuration's seeds all see every region by t0 except w.p. <= a
    tenth of the check's error level, so the check errs w.p. <= 1.1 (1 - confidence) (theory/README.md)."""
    return (1.0 - confidence) / (10.0 * seeds)


def warmup_steps(regions: int, eps: float, draws: int, delay: int = 0, eta: float = 1e-6) -> int:
    """t0: aria (floor ``eps``, warm start) has observed every one of K regions in steps [0, t0), except w.p. <= eta.

    The smaller of two guarantees (derivation: theory/README.md, "warm-up"); ``delay`` D: the
    allocation at step t reads the state after step t-1-D.

    - floor: any state gives every region probability >= eps/K per draw, so
      P(some region unobserved after n steps) <= K (1 - eps/K)^(n B).
    - warm start: in blocks of D+1 steps, the first block always finds a region (step 0 draws
      uniformly from all-unvisited), and each later block finds one except w.p. <= f =
      (eps (1 - 1/K))^B whatever the past; K - 1 successes among J - 1 blocks are missed w.p.
      <= P(Binomial(J - 1, 1 - f) <= K - 2).
    """
    k, b, d = int(regions), int(draws), int(delay)
    if not (k >= 1 and b >= 1 and d >= 0 and 0 <= eps <= 1 and 0 < eta < 1):
        raise ValueError("warmup_steps needs K >= 1, B >= 1, delay >= 0, 0 <= eps <= 1, 0 < eta < 1")
    if k == 1:
        return 1  # step 0 draws the only region
    floor = eps / k
    t_floor = math.ceil(math.log(k / eta) / (-b * math.log1p(-floor))) if floor > 0 else math.inf
    fail = (eps * (1.0 - 1.0 / k)) ** b
    missed = lambda j: bdtr(k - 2, j - 1, 1.0 - fail)  # noqa: E731 - P(Binomial(J - 1, 1 - f) <= K - 2), falls in J
    lo, hi = k - 1, int(min(t_floor, 10**9) // (d + 1)) + 1  # J blocks in all: missed(lo) > eta unless lo >= K
    t_warm = math.inf
    if hi >= k and missed(hi) <= eta:
        while hi - lo > 1:  # the smallest J >= K with missed(J) <= eta
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if missed(mid) <= eta else (mid, hi)
        t_warm = hi * (d + 1)
    t0 = min(t_floor, t_warm)
    if not math.isfinite(t0):
        raise ValueError(f"no warm-up guarantee for K={k}, eps={eps:g}, B={b}, delay={d}")
    return int(t0)


def noise_term(alpha, sigma):
    """Stationary RMS of the noise part: sqrt(a sigma^2 / (2 - a))."""
    alpha = np.asarray(alpha, dtype=np.float64)
    return sigma * np.sqrt(alpha / (2.0 - alpha))


def drift_moments(alpha, delta, p=1.0, n=None):
    """(E[A_n], E[A_n^2]) of the worst-case drift envelope started at 0 (n=None: stationary).

    c1 = E[c] = 1 - p a and c2 = E[c^2] = 1 - p a (2 - a); the closed forms solve
    mu_n = c1 (mu_{n-1} + delta) and s_n = c2 (s_{n-1} + 2 delta mu_{n-1} + delta^2).
    """
    a, p = np.asarray(alpha, dtype=np.float64), np.asarray(p, dtype=np.float64)
    c1, c2 = 1.0 - p * a, 1.0 - p * a * (2.0 - a)
    k = c1 / (1.0 - c1)  # mu_inf / delta
    if n is None:
        mu = delta * k
        return mu, c2 * (2.0 * mu * delta + delta**2) / (1.0 - c2)
    n = np.asarray(n, dtype=np.float64)
    mu = delta * k * (1.0 - c1**n)
    geo2 = c2 * (1.0 - c2**n) / (1.0 - c2)  # sum_{j=1..n} c2^j
    gap = c1 - c2  # = p a (1 - a) >= 0; mixed sum sum_j c2^j c1^(n-j), its a = 1 limit n c2^n
    mixed = np.where(gap > 1e-12, c2 * (c1**n - c2**n) / np.where(gap > 1e-12, gap, 1.0), n * c2**n)
    s = delta**2 * ((1.0 + 2.0 * k) * geo2 - 2.0 * k * mixed)
    return mu, np.maximum(s, 0.0)


def drift_term(alpha, delta, p=1.0, delay=0, n=None):
    """RMS bound of the drift part, staleness of ``delay`` steps included (exact for a linear trend)."""
    mu, s = drift_moments(alpha, delta, p, n)
    return np.sqrt(s + 2.0 * delay * delta * mu + (delay * delta) ** 2)


def theory_md_drift(alpha, delta, p):
    """THEORY.md's sampled drift term sqrt(2) delta (1-a)/(a p) + delta (1-p)/p (kept for comparison)."""
    a = np.asarray(alpha, dtype=np.float64)
    return np.sqrt(2.0) * delta * (1.0 - a) / (a * p) + delta * (1.0 - p) / p


def step_bound(alpha, sigma, delta, p=1.0, delay=0, n=None, warmup=0):
    """Bound on sqrt(E[(m_{t-D} - d_t)^2]) with n = t - D - t0 steps after the warm-up t0 (None: limit)."""
    a = np.asarray(alpha, dtype=np.float64)
    v = noise_term(a, sigma) ** 2
    if n is None:
        return np.sqrt(v) + drift_term(a, delta, p, delay)
    rho = 1.0 - p * a * (2.0 - a)
    n = np.maximum(np.asarray(n, dtype=np.float64), 0.0)
    noise = np.sqrt(v + (sigma**2 - v) * rho**n)
    return noise + drift_term(a, delta, p, delay, n) + warmup * delta * rho ** (n / 2.0)


def window_bound(alpha, sigma, delta, p=1.0, delay=0, start=0, stop=1, warmup=0) -> float:
    """Bound on the RMSE over the steps [start, stop): sqrt(mean_t step_bound_t^2)."""
    n = np.arange(start, stop) - delay - warmup
    return float(np.sqrt(np.mean(step_bound(alpha, sigma, delta, p, delay, n, warmup) ** 2)))


def a_star(sigma: float, delta: float, p: float = 1.0, delay: int = 0) -> float:
    """The step a in (0, 1] minimising the stationary bound (numerically)."""
    if delta <= 0:
        return 1e-6
    f = lambda u: float(step_bound(np.exp(u), sigma, delta, p, delay))  # noqa: E731
    lo, hi = np.log(1e-6), 0.0  # golden section on log a (noise term rises, drift term falls)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = f(x1), f(x2)
    while hi - lo > 1e-7:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - g * (hi - lo)
            f1 = f(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + g * (hi - lo)
            f2 = f(x2)
    return float(np.exp((lo + hi) / 2.0))


def a_star_approx(sigma: float, delta: float, p: float = 1.0) -> float:
    """Small-a closed form: minimising sigma sqrt(a/2) + delta/(a p) gives a* = 2 (delta / (p sigma))^(2/3)."""
    return float(min(1.0, 2.0 * (delta / (p * sigma)) ** (2.0 / 3.0)))
