"""Discrepancy processes: bounded drift and bounded variance, or deliberately not."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aria.theory import processes as P

FAST = settings(max_examples=25, deadline=None, derandomize=True)


@FAST
@given(st.sampled_from(P.DRIFTS), st.floats(1e-5, 0.05), st.integers(0, 2**16))
def test_in_assumption_paths_move_at_most_delta(name, delta, seed):
    d = P.drift_path(name, 600, (3, 4), delta, np.random.default_rng(seed))
    assert d.shape == (600, 3, 4) and np.isfinite(d).all() and d.min() > 0
    assert np.abs(np.diff(d, axis=0)).max() <= delta * (1 + 1e-9) + 1e-12


def test_linear_trend_uses_the_whole_budget_and_jumps_exceed_it():
    rng = np.random.default_rng(0)
    lin = P.drift_path("linear", 100, (5,), 0.01, rng)
    assert np.allclose(np.abs(np.diff(lin, axis=0)), 0.01)
    jumps = P.drift_path("jumps", 3000, (5,), 0.01, rng, jump=0.5, jump_every=100)
    assert np.abs(np.diff(jumps, axis=0)).max() == pytest.approx(0.5)


@pytest.mark.parametrize("name,tol", [("gaussian", 0.02), ("uniform", 0.02), ("two_point", 0.02), ("student_t", 0.1)])
def test_noise_laws_have_mean_zero_and_variance_sigma2(name, tol):
    e = P.noise(name, 400_000, 0.3, np.random.default_rng(1), df=5.0 if name == "student_t" else 3.0)
    assert abs(e.mean()) < 0.005
    assert e.var() == pytest.approx(0.09, rel=tol)


def test_student_t_and_heavy_t_split_at_df_2():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        P.noise("student_t", 10, 1.0, rng, df=2.0)
    with pytest.raises(ValueError):
        P.noise("heavy_t", 10, 1.0, rng, df=3.0)
    heavy = P.noise("heavy_t", 200_000, 1.0, rng, df=1.5)
    assert heavy.var() > 20.0  # infinite variance: the sample variance blows up


@FAST
@given(st.floats(-10, 10), st.floats(-10, 10))
def test_fold_is_one_lipschitz_into_the_band(x, y):
    fx, fy = P.fold(np.array([x, y]), 0.5, 2.5)
    assert 0.5 <= fx <= 2.5 and abs(fx - fy) <= abs(x - y) + 1e-12


def test_coupled_process_learns_where_it_samples_within_delta():
    proc = P.Coupled(np.full((1, 3), 2.0), np.full((1, 3), 0.5), delta=0.02, draws=4)
    prev = proc.d.copy()
    for _ in range(200):
        d = proc.step(np.array([[4, 0, 0]]))
        assert np.abs(d - prev).max() <= 0.02 + 1e-12
        assert (d >= proc.floor).all() and (d <= proc.cap).all()
        prev = d.copy()
    assert d[0, 0] < 1.5 < d[0, 1]  # the sampled region fell, the others drifted up (forgetting)
