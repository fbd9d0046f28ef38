"""The contract every registered strategy (plugins included) must keep; see strategies/base.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from aria.strategies import (
    Feedback,
    RegionInfo,
    create_strategy,
    list_strategies,
    state_from_arrays,
    state_from_json,
    state_hash,
    state_to_arrays,
    state_to_json,
)
from aria.strategies.base import step_rng

NAMES = list(list_strategies())  # at collection time, so installed plugins are covered too
SIZES = np.array([0, 7, 0, 120, 1, 3, 0, 9000, 15, 2, 40, 0])  # empty regions first, last, inside
DRAWS = 64
BINS = 4
SEED = 11


def make_feedback(regions: np.ndarray, num_regions: int, step: int) -> Feedback:
    """Synthetic discrepancy of the drawn samples: region-dependent level, gamma noise, random bins."""
    rng = np.random.default_rng([SEED, step, 7])
    values = (1.0 + regions % 3) * rng.gamma(2.0, 0.5, regions.size)
    return Feedback.from_samples(regions, values, num_regions, rng.integers(0, BINS, regions.size), BINS, step)


def run(strategy, state, first: int, steps: int):
    for step in range(first, first + steps):
        alloc = strategy.allocate(state, step, DRAWS)
        state = strategy.update(state, make_feedback(alloc.regions, state["sizes"].size, step))
    return state


def check_probabilities(strategy, p: np.ndarray, sizes: np.ndarray) -> None:
    assert p.shape == sizes.shape and np.isfinite(p).all() and (p >= 0).all()
    assert abs(p.sum() - 1.0) < 1e-9
    assert (p[sizes == 0] == 0).all()
    eps = getattr(strategy.config, "eps", None)
    if eps is not None:
        assert (p[sizes > 0] >= eps / np.count_nonzero(sizes) - 1e-12).all()


def check_allocation(strategy, state, step: int, n: int) -> np.ndarray:
    sizes = state["sizes"]
    alloc = strategy.allocate(state, step, n)
    check_probabilities(strategy, alloc.probabilities, sizes)
    assert alloc.regions.shape == (n,) and alloc.regions.dtype.kind == "i"
    assert ((alloc.regions >= 0) & (alloc.regions < sizes.size)).all()
    assert (sizes[alloc.regions] > 0).all(), "drew an empty region"
    if alloc.weights is not None:
        assert alloc.weights.shape == (n,) and np.isfinite(alloc.weights).all() and (alloc.weights >= 0).all()
    return alloc.regions


def assert_finite_state(state) -> None:
    for key, value in state.items():
        assert np.isfinite(np.asarray(value, dtype=np.float64)).all(), f"state[{key!r}] is not finite"


@pytest.fixture(params=NAMES)
def strategy(request):
    return create_strategy(request.param)


def test_probabilities_and_allocations_are_valid(strategy):
    state = strategy.init(RegionInfo(SIZES), SEED)
    for step in range(12):
        check_probabilities(strategy, strategy.probabilities(state), SIZES)
        regions = check_allocation(strategy, state, step, DRAWS)
        state = strategy.update(state, make_feedback(regions, SIZES.size, step))
    assert state["updates"] == 12 and state["dropped"] == 0


def test_same_step_same_allocation_and_steps_differ(strategy):
    state = run(strategy, strategy.init(RegionInfo(SIZES), SEED), 0, 5)
    again = create_strategy(strategy.name, strategy.config.model_dump())
    draws = [strategy.allocate(state, step, DRAWS).regions for step in range(5, 10)]
    for step, regions in zip(range(5, 10), draws):
        np.testing.assert_array_equal(again.allocate(state_from_json(state_to_json(state)), step, DRAWS).regions, regions)
    for a, b in zip(draws, draws[1:]):
        assert not np.array_equal(a, b)


def test_state_round_trips_exactly(strategy, tmp_path):
    state = run(strategy, strategy.init(RegionInfo(SIZES), SEED), 0, 6)
    path = tmp_path / "state.safetensors"
    save_file(state_to_arrays(state), str(path))
    copies = [state_from_json(state_to_json(state)), state_from_arrays(state_to_arrays(state)), state_from_arrays(load_file(str(path)))]
    for copy in copies:
        assert state_hash(copy) == state_hash(state)
        assert state_to_json(copy) == state_to_json(state)


def test_save_load_resume_equals_uninterrupted(strategy, tmp_path):
    steps = 7
    straight = run(strategy, strategy.init(RegionInfo(SIZES), SEED), 0, 2 * steps)
    first = run(strategy, strategy.init(RegionInfo(SIZES), SEED), 0, steps)
    path = tmp_path / "state.safetensors"
    save_file(state_to_arrays(first), str(path))
    resumed = run(create_strategy(strategy.name), state_from_arrays(load_file(str(path))), steps, steps)
    assert state_hash(resumed) == state_hash(straight)


def expected_dropped(sums: np.ndarray, counts: np.ndarray) -> int:
    """The documented rule, restated: non-finite, negative, or a sum without a count."""
    with np.errstate(invalid="ignore"):
        good = np.isfinite(sums) & np.isfinite(counts) & (sums >= 0) & (counts >= 0) & ((counts > 0) | (sums == 0))
    return int(np.count_nonzero(~good))


def test_bad_feedback_is_dropped_and_counted(strategy):
    rng = np.random.default_rng(5)
    sum_palette = np.array([0.0, 1.0, 1e30, -1.0, np.nan, np.inf, 0.3])
    count_palette = np.array([0.0, 1.0, 3.0, -1.0, np.nan, np.inf, 1e30])
    state = strategy.init(RegionInfo(SIZES), SEED)
    dropped = 0
    for step in range(25):
        alloc = strategy.allocate(state, step, DRAWS)
        check_probabilities(strategy, alloc.probabilities, SIZES)
        assert (SIZES[alloc.regions] > 0).all()
        sums = sum_palette[rng.integers(0, sum_palette.size, (SIZES.size, BINS))]
        counts = count_palette[rng.integers(0, count_palette.size, (SIZES.size, BINS))]
        dropped += expected_dropped(sums, counts)
        state = strategy.update(state, Feedback(sums, counts, step))
        assert_finite_state(state)
        assert state["dropped"] == dropped
    assert dropped > 0


def test_extreme_but_valid_feedback_keeps_state_finite(strategy):
    state = strategy.init(RegionInfo(SIZES), SEED)
    ones = np.ones((SIZES.size, BINS))
    for step, (sums, counts) in enumerate([(1e150 * ones, ones), (ones * 1e-300, ones), (0 * ones, ones), (1e150 * ones, 1e-3 * ones)]):
        state = strategy.update(state, Feedback(sums, counts, step))
        assert_finite_state(state)
        check_allocation(strategy, state, step, DRAWS)
    assert state["dropped"] == 0
    state = strategy.update(state, Feedback(1e300 * ones, ones, 9))  # beyond FEEDBACK_LIMIT: dropped
    assert state["dropped"] == ones.size
    assert_finite_state(state)


@st.composite
def adversarial_sizes(draw):
    """Region sizes with many empty regions, a huge one, or a single one (K from 1 to 512)."""
    k = draw(st.integers(1, 512))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = rng.integers(1, 100, k)
    sizes[rng.random(k) < draw(st.sampled_from([0.0, 0.5, 0.99]))] = 0
    if draw(st.booleans()):
        sizes[rng.integers(k)] = 10**12
    if sizes.sum() == 0:
        sizes[rng.integers(k)] = 1
    return sizes


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=adversarial_sizes())
@example(sizes=np.array([3]))
@example(sizes=np.array([0] * 511 + [1]))
@example(sizes=np.array([10**12] + [0, 1] * 255 + [0]))
def test_adversarial_region_sizes(name, sizes):
    strategy = create_strategy(name)
    state = strategy.init(RegionInfo(sizes), SEED)
    for step in range(4):
        check_probabilities(strategy, strategy.probabilities(state), sizes)
        regions = check_allocation(strategy, state, step, 3 * DRAWS)
        state = strategy.update(state, make_feedback(regions, sizes.size, step))
        assert_finite_state(state)
    assert state_hash(state_from_json(state_to_json(state))) == state_hash(state)


@pytest.mark.parametrize("words", [(0, 0), (11, 5), (2**32 - 1, 7, 2), (2**32, 3), (2**40 + 5, 2**33, 1)])
def test_step_rng_is_default_rng_of_the_words(words):
    np.testing.assert_array_equal(step_rng(*words).random(5), np.random.default_rng(list(words)).random(5))
