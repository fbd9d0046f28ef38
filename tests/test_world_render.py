"""The world's renderer and regime split."""

import numpy as np
import pytest

from aria.config import WorldConfig
from aria.errors import UserError
from aria.world import regimes, shapes
from aria.world.prompts import prompt_counts

ALL = np.arange(shapes.NUM_COMBOS)


def test_vocabulary_sizes():
    assert len(shapes.SHAPES) >= 8 and len(shapes.COLORS) == 8 and len(shapes.SIZES) == 3
    assert len(shapes.POSITIONS) == 9 and shapes.NUM_COMBOS >= 1728
    hues = np.array(list(shapes.COLORS.values()))
    assert len({tuple(h) for h in hues}) == len(hues)


def test_combo_index_round_trip():
    attrs = shapes.combo_attributes(ALL)
    assert np.array_equal(shapes.combo_index(*attrs), ALL)
    assert [int(a) for a in shapes.combo_attributes(shapes.combo_index(7, 3, 2, 8))] == [7, 3, 2, 8]
    with pytest.raises(ValueError):
        shapes.combo_attributes(shapes.NUM_COMBOS)


def test_render_deterministic_and_seed_dependent():
    combos = np.random.default_rng(0).integers(0, shapes.NUM_COMBOS, 600)
    first = shapes.render(combos, seed=3)
    assert first.dtype == np.uint8 and first.shape == (600, 32, 32, 3)
    assert np.array_equal(first, shapes.render(combos, seed=3))
    assert (first != shapes.render(combos, seed=4)).mean() > 0.5


def test_render_depends_only_on_seed_and_index():
    combos = np.random.default_rng(1).integers(0, shapes.NUM_COMBOS, 700)
    whole = shapes.render(combos, seed=9)
    part = shapes.render(combos[250:613], seed=9, indices=np.arange(250, 613))
    assert np.array_equal(part, whole[250:613])


def _object_masks(images):
    """Pixels far from the image's background level (estimated from its four corners)."""
    corners = np.concatenate([images[:, :2, :2], images[:, :2, -2:], images[:, -2:, :2], images[:, -2:, -2:]], axis=1)
    background = corners.reshape(len(images), -1, 3).mean(1)
    return np.abs(images - background[:, None, None]).max(-1) > 60, background


def test_object_colour_position_and_dark_background():
    images = shapes.render(ALL, seed=5).astype(np.float32)
    shape, color, size, position = shapes.combo_attributes(ALL)
    mask, background = _object_masks(images)
    ys, xs = np.mgrid[:32, :32]
    area = mask.sum((1, 2))
    cx, cy = (mask * xs).sum((1, 2)) / area + 0.5, (mask * ys).sum((1, 2)) / area + 0.5
    grid = np.asarray(shapes.GRID_CENTERS)
    nearest_col = np.abs(cx[:, None] - grid).argmin(1)
    nearest_row = np.abs(cy[:, None] - grid).argmin(1)
    assert np.array_equal(3 * nearest_row + nearest_col, position)  # the mass centre is in its own cell
    mean_rgb = (images * mask[..., None]).sum((1, 2)) / area[:, None]
    table = np.array(list(shapes.COLORS.values()), dtype=np.float32)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    assert (np.argmax(unit(mean_rgb) @ unit(table).T, axis=1) == color).all()
    assert background.max() < 70 and background.mean() < 40


def test_sizes_grow_and_large_fits_everywhere():
    images = shapes.render(ALL, seed=6).astype(np.float32)
    shape, _, size, _ = shapes.combo_attributes(ALL)
    mask, _ = _object_masks(images)
    area = mask.sum((1, 2))
    for s in range(len(shapes.SHAPES)):  # per shape, every small < every medium < every large
        assert area[(shape == s) & (size == 0)].max() < area[(shape == s) & (size == 1)].min()
        assert area[(shape == s) & (size == 1)].max() < area[(shape == s) & (size == 2)].min()
    border = np.ones((32, 32), bool)
    border[1:-1, 1:-1] = False
    assert mask[:, border].sum(1).max() <= 6  # even large objects in corner cells barely touch the edge


def test_tensor_range_round_trip():
    images = shapes.render(ALL[:50], seed=1)
    x = shapes.to_tensor_range(images)
    assert x.dtype == np.float32 and x.shape == (50, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(shapes.from_tensor_range(x), images)


def test_regime_split_disjoint_covering_and_reproducible():
    world = WorldConfig()
    split = regimes.split_regimes(world)
    assert split.dtype == np.int8 and split.shape == (shapes.NUM_COMBOS,)
    assert set(np.unique(split)) == {regimes.SEEN, regimes.UNDER, regimes.UNSEEN}
    counts = np.bincount(split, minlength=3)
    assert counts[regimes.UNSEEN] == round(world.unseen_fraction * shapes.NUM_COMBOS)
    assert counts[regimes.UNDER] == round(world.under_fraction * shapes.NUM_COMBOS)
    assert np.array_equal(split, regimes.split_regimes(WorldConfig()))
    assert (split != regimes.split_regimes(WorldConfig(seed=1))).mean() > 0.2


@pytest.mark.parametrize("unseen, under", [(0.15, 0.25), (0.5, 0.46)])
def test_every_attribute_value_is_seen(unseen, under):
    split = regimes.split_regimes(WorldConfig(unseen_fraction=unseen, under_fraction=under))
    attrs = shapes.combo_attributes(ALL[split == regimes.SEEN])
    for values, n in zip(attrs, shapes.NUM_VALUES):
        assert len(np.unique(values)) == n
    shape, color = attrs[:2]
    assert len(np.unique(shape * len(shapes.COLORS) + color)) == len(shapes.SHAPES) * len(shapes.COLORS)


def test_too_few_seen_combinations_is_a_user_error():
    with pytest.raises(UserError, match="seen combinations"):
        regimes.split_regimes(WorldConfig(unseen_fraction=0.5, under_fraction=0.49))


def test_paired_set():
    world = WorldConfig(num_prompts=20_000)
    split = regimes.split_regimes(world)
    paired = regimes.paired_combos(world, split)
    assert paired.dtype == np.int64 and len(paired) == world.paired_size
    per_combo = np.bincount(paired, minlength=shapes.NUM_COMBOS)
    assert (per_combo[split == regimes.UNSEEN] == 0).all()
    assert (per_combo[split == regimes.UNDER] == world.under_images).all()
    seen = split == regimes.SEEN
    assert (per_combo[seen] > world.under_images).all()
    frequency = prompt_counts(world.num_prompts, world.skew, world.seed)
    head = seen & (frequency >= np.percentile(frequency[seen], 90))
    tail = seen & (frequency <= np.percentile(frequency[seen], 10))
    assert per_combo[head].mean() > 3 * per_combo[tail].mean()
    with pytest.raises(UserError, match="paired_size"):
        regimes.paired_combos(WorldConfig(paired_size=1000), split)
