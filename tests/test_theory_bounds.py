"""The tracking bounds: closed forms against their recursions and against Monte Carlo."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aria.theory import bounds as Bd

FAST = settings(max_examples=40, deadline=None, derandomize=True)


def envelope_recursion(a, delta, p, n):
    mu = s = 0.0
    c1, c2 = 1 - p * a, 1 - p * a * (2 - a)
    for _ in range(n):
        mu, s = c1 * (mu + delta), c2 * (s + 2 * delta * mu + delta**2)
    return mu, s


@FAST
@given(st.floats(0.001, 1.0), st.floats(0.01, 1.0), st.integers(0, 400), st.floats(1e-4, 0.1))
def test_drift_moments_closed_form_matches_recursion(a, p, n, delta):
    mu, s = Bd.drift_moments(a, delta, p, n)
    mu_r, s_r = envelope_recursion(a, delta, p, n)
    assert mu == pytest.approx(mu_r, rel=1e-7, abs=1e-14)
    assert s == pytest.approx(s_r, rel=1e-6, abs=1e-14)


@FAST
@given(st.floats(0.001, 0.999), st.floats(1e-4, 0.1), st.integers(0, 3))
def test_every_step_drift_term_is_the_linear_trend_lag(a, delta, delay):
    assert Bd.drift_term(a, delta, 1.0, delay) == pytest.approx(delta * (1 - a) / a + delay * delta, rel=1e-9)


@pytest.mark.parametrize("a,p", [(0.05, 0.1), (0.3, 0.4), (1.0, 0.5), (0.2, 1.0)])
def test_drift_envelope_matches_monte_carlo(a, p):
    """A linear trend attains the envelope; Bernoulli(p) updates give exactly the stationary moments."""
    rng = np.random.default_rng(1)
    delta, paths, steps = 0.01, 8000, int(25 / (a * p))
    x = np.zeros(paths)
    for _ in range(steps):
        x = np.where(rng.random(paths) < p, 1 - a, 1.0) * (x + delta)
    assert np.sqrt(np.mean(x**2)) == pytest.approx(float(Bd.drift_term(a, delta, p)), rel=0.03)


def test_theory_md_sampled_drift_is_loose_for_small_a_and_too_small_near_a_1():
    a = np.array([0.01, 0.05, 0.2])
    for p in (0.05, 0.3):
        ours, theirs = Bd.drift_term(a, 0.01, p), Bd.theory_md_drift(a, 0.01, p)
        assert np.all(theirs / ours > 1.25)
    # a = 1: the estimate is the last observation; staleness G has E[G^2] = (1-p)(2-p)/p^2, not E[G]^2
    assert float(Bd.theory_md_drift(1.0, 0.01, 0.5)) < float(Bd.drift_term(1.0, 0.01, 0.5)) == pytest.approx(
        0.01 * np.sqrt(3.0))


@pytest.mark.parametrize("p", [1.0, 0.3, 0.05])
def test_noise_term_unchanged_by_oblivious_sampling(p):
    rng = np.random.default_rng(2)
    a, sigma, paths = 0.2, 1.0, 8000
    n = np.zeros(paths)
    for _ in range(int(25 / (a * p))):
        u = rng.random(paths) < p
        n = np.where(u, (1 - a) * n + a * sigma * rng.standard_normal(paths), n)
    assert np.sqrt(np.mean(n**2)) == pytest.approx(float(Bd.noise_term(a, sigma)), rel=0.03)


@FAST
@given(st.floats(0.05, 1.0), st.floats(1e-4, 0.01), st.floats(0.05, 1.0), st.integers(0, 1))
def test_a_star_minimises_the_bound(sigma, delta, p, delay):
    star = Bd.a_star(sigma, delta, p, delay)
    grid = np.geomspace(1e-5, 1.0, 4000)
    values = Bd.step_bound(grid, sigma, delta, p, delay)
    assert float(Bd.step_bound(star, sigma, delta, p, delay)) <= values.min() * (1 + 1e-6)


@FAST
@given(st.floats(0.1, 1.0), st.floats(1e-5, 1e-3))
def test_a_star_closed_form_for_small_steps(sigma, delta):
    star = Bd.a_star(sigma, delta)
    assert star == pytest.approx(Bd.a_star_approx(sigma, delta), rel=0.25)
    assert Bd.a_star(sigma, 8 * delta) / star == pytest.approx(4.0, rel=0.25)  # (delta/sigma)^(2/3)


def test_update_probability_and_delay_term():
    assert Bd.update_probability(0.2, 8, 1) == pytest.approx(0.025)
    assert Bd.update_probability(0.2, 8, 4) == pytest.approx(1 - 0.975**4)
    extra = Bd.step_bound(0.1, 0.3, 0.002, 0.2, 1) - Bd.step_bound(0.1, 0.3, 0.002, 0.2, 0)
    assert 0 < extra <= 0.002  # the staleness costs at most delay * delta


def test_window_bound_includes_the_transient():
    early = Bd.window_bound(0.05, 0.3, 0.001, 1.0, 0, 0, 50)
    late = Bd.window_bound(0.05, 0.3, 0.001, 1.0, 0, 2000, 2050)
    assert late == pytest.approx(float(Bd.step_bound(0.05, 0.3, 0.001)), rel=1e-3)
    assert early != pytest.approx(late, rel=1e-3)
