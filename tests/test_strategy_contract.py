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
from aria.strategies.base import draw_members, draw_regions, step_key, step_rng, step_uniforms

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
    n = 16 * DRAWS  # enough draws that two steps cannot agree by chance (rc/none: one region holds 98%)
    draws = [strategy.allocate(state, step, n).regions for step in range(5, 10)]
    for step, regions in zip(range(5, 10), draws):
        np.testing.assert_array_equal(again.allocate(state_from_json(state_to_json(state)), step, n).regions, regions)
    for a, b in zip(draws, draws[1:]):
        assert not np.array_equal(a, b)


def test_state_round_trips_exactly(strategy, tmp_path):
    state = run(strategy, strategy.init(RegionInfo(SIZES), SEED), 0, 6)
    path = tmp_path / "state.safetensors"
    save_file(state_to_arrays(state), str(path))
    copies = [state_from_json(state_to_json(state)), state_from_arrays(state_to_arrays(state)),
              state_from_arrays(load_file(str(path)))]
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
    for step, (sums, counts) in enumerate([(1e150 * ones, ones), (ones * 1e-300, ones), (0 * ones, ones),
                                           (1e150 * ones, 1e-3 * ones), (ones * 5e-324, ones)]):
        state = strategy.update(state, Feedback(sums, counts, step))
        assert_finite_state(state)
        check_allocation(strategy, state, step, DRAWS)
    assert state["dropped"] == 0
    state = strategy.update(state, Feedback(1e300 * ones, ones, 9))  # beyond FEEDBACK_LIMIT: dropped
    assert state["dropped"] == ones.size
    assert_finite_state(state)


def test_mix_floor_keeps_proportions_of_subnormal_weights():
    """A positive total far below 1 (subnormal) is still a distribution to follow, not an overflow."""
    from aria.strategies.base import mix_floor

    active = np.array([True, True, True, False])
    with np.errstate(all="raise"):
        p = mix_floor(np.array([1e-309, 0.0, 2e-309, 5.0]), 0.25, active)
    np.testing.assert_allclose(p, [0.75 / 3 + 0.25 / 3, 0.25 / 3, 1.5 / 3 + 0.25 / 3, 0.0])


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


# Pinned: a run resumed on another machine or numpy version must draw the same allocations.
@pytest.mark.parametrize("words, first", [
    ((0, 0), [0.2993980721090158, 0.6960102659260481, 0.772185731670054]),
    ((11, 5, 2), [0.9820797780828444, 0.10552582814222355, 0.6406567185937045]),
    ((2**70, 3, 1), [0.6838422200465278, 0.6762314055652084, 0.06729392433626702]),
])
def test_step_rng_is_a_pure_function_of_the_words(words, first):
    a, b = step_rng(*words), step_rng(*words)
    assert a.random(3).tolist() == first
    assert b.random(5)[:3].tolist() == first  # a fresh generator, undisturbed by ``a``


def test_step_rng_streams_differ_and_negative_words_fail():
    firsts = {step_rng(seed, step, stream).random() for seed in (0, 1, 2**40, 2**64) for step in (0, 1, 2**20, 2**50)
              for stream in (0, 1, 2)}
    assert len(firsts) == 4 * 4 * 3
    assert step_key(1, 23) != step_key(12, 3) and step_key(0, 0) == step_key(0, 0, 0)
    for words in [(-1, 0), (0, -1), (0, 0, -1)]:
        with pytest.raises(ValueError):
            step_rng(*words)


def test_draw_members_uses_the_member_uniforms_of_the_step():
    offsets = np.array([0, 3, 3, 10, 12])
    members = np.arange(12) * 10
    regions = draw_regions(np.array([0.3, 0.0, 0.5, 0.2]), SEED, 4, 500)
    assert set(regions.tolist()) == {0, 2, 3}  # never the empty region
    taken = draw_members(offsets, members, regions, SEED, 4)
    draw_regions(np.array([0.5, 0.0, 0.5, 0.0]), SEED, 5, 100)  # other draws in between change nothing
    again = draw_members(offsets, members, regions, SEED, 4)
    _, u = step_uniforms(SEED, 4, regions.size)
    expected = members[offsets[regions] + (u * np.diff(offsets)[regions]).astype(np.int64)]
    np.testing.assert_array_equal(taken, expected)
    np.testing.assert_array_equal(again, expected)
    assert not np.array_equal(draw_members(offsets, members, regions, SEED, 5), expected)
    with pytest.raises(ValueError, match="empty"):
        draw_members(offsets, members, np.array([0, 1]), SEED, 4)


@pytest.mark.parametrize("k", [5, 3000])
def test_draw_regions_follows_the_probabilities_and_never_draws_a_zero(k):
    rng = np.random.default_rng(k)
    p = rng.random(k) * (rng.random(k) < 0.5)
    p[0] = p[-3:] = 0.0  # zero probability first and last (the CDF's last value repeats)
    p[k // 2] += 1.0
    p /= p.sum()
    counts = np.zeros(k)
    for step in range(200):
        regions = draw_regions(p, SEED, step, 500)
        assert regions.dtype == np.int64 and (p[regions] > 0).all()
        counts += np.bincount(regions, minlength=k)
    assert abs(counts[k // 2] / counts.sum() - p[k // 2]) < 5 * np.sqrt(p[k // 2] / counts.sum())


@pytest.mark.parametrize("strategy_name", ["aria", "exp3", "rc"])
def test_sample_feedback_with_bad_values_is_dropped_and_counted(strategy_name):
    """Bad samples make their cell of ``Feedback.from_samples`` bad: the update drops those cells
    (and counts them), the same as for a dense copy of the arrays."""
    rng = np.random.default_rng(3)
    palette = np.array([0.0, 0.5, 2.0, -1.0, np.nan, np.inf, 1e300])
    strategy = create_strategy(strategy_name)
    state = strategy.init(RegionInfo(SIZES), SEED)
    dropped = 0
    for step in range(30):
        alloc = strategy.allocate(state, step, DRAWS)
        values = palette[rng.integers(0, palette.size, DRAWS)] if step % 3 == 0 else rng.random(DRAWS)
        fb = Feedback.from_samples(alloc.regions, values, SIZES.size, rng.integers(0, BINS, DRAWS), BINS, step)
        dropped += expected_dropped(np.where(fb.sums > 1e200, np.nan, fb.sums), fb.counts)  # 1e300: over the limit
        dense = strategy.update(state, Feedback(fb.sums.copy(), fb.counts.copy(), step))
        state = strategy.update(state, fb)
        assert state_hash(state) == state_hash(dense) and state["dropped"] == dropped
        assert_finite_state(state)
    assert dropped > 0
    with pytest.raises(ValueError, match="outside"):
        Feedback.from_samples(np.array([SIZES.size]), np.ones(1), SIZES.size, np.zeros(1, int), BINS)


def test_sample_feedback_sums_and_counts_every_cell():
    rng = np.random.default_rng(2)
    regions, bins = rng.integers(0, 50, 200), rng.integers(0, BINS, 200)
    values = rng.gamma(2.0, 1.0, 200)
    fb = Feedback.from_samples(regions, values, 50, bins, BINS, 3)
    sums, counts = np.zeros((50, BINS)), np.zeros((50, BINS))
    for region, b, value in zip(regions, bins, values):  # each cell adds its samples in order
        sums[region, b] += value
        counts[region, b] += 1
    np.testing.assert_array_equal(fb.sums, sums)
    np.testing.assert_array_equal(fb.counts, counts)
    assert fb.step == 3 and fb.sums.dtype == fb.counts.dtype == np.float64
    single = Feedback.from_samples(regions, values, 50)  # one timestep bin
    np.testing.assert_array_equal(single.sums[:, 0], np.bincount(regions, values, minlength=50))
    np.testing.assert_array_equal(single.counts[:, 0], counts.sum(1))


def test_draw_regions_keeps_keys_below_any_total():
    """The CDF is scaled to end at exactly 1 > u, so the zero-probability tail is never drawn, whatever the
    total of the probabilities (a subnormal one included)."""
    k = 2000
    for scale in (1.0, 2.0**-20, 1e-310):
        p = np.full(k, scale / (k - 100))
        p[-100:] = 0.0  # the last regions cannot be drawn
        for step in range(20):
            assert draw_regions(p, SEED, step, 300).max() < k - 100
