"""World v2: concept glyphs, captions and regime splits."""

import numpy as np
import pytest

from aria.world import captions, concepts, splits

ALL = np.arange(concepts.NUM_ITEMS)


def test_families_concepts_and_items():
    assert len(concepts.FAMILIES) == 8 and all(len(m) == 8 for m in concepts.FAMILIES.values())
    assert len(set(concepts.CONCEPTS)) == concepts.NUM_CONCEPTS == 64
    assert [concepts.FAMILY_NAMES[f] for f in concepts.FAMILY_OF[::8]] == list(concepts.FAMILIES)
    assert 2 <= len(concepts.HARD_FAMILIES) <= 3
    hard = np.isin(np.array(concepts.FAMILY_NAMES)[concepts.FAMILY_OF], concepts.HARD_FAMILIES)
    assert np.array_equal(concepts.DIFFICULTY == concepts.HARD, hard)
    attrs = concepts.item_attributes(ALL)
    assert np.array_equal(concepts.item_index(*attrs), ALL)
    assert [int(a) for a in concepts.item_attributes(concepts.item_index(63, 7, 2, 8))] == [63, 7, 2, 8]
    assert concepts.item_name(concepts.item_index(0, 0, 0, 0)) == "small red apple, top-left"
    with pytest.raises(ValueError):
        concepts.item_attributes(concepts.NUM_ITEMS)


def test_render_deterministic_and_slices_render_alone():
    items = np.random.default_rng(0).integers(0, concepts.NUM_ITEMS, 700)
    whole = concepts.render(items, seed=3)
    assert whole.dtype == np.uint8 and whole.shape == (700, 32, 32, 3)
    assert np.array_equal(whole, concepts.render(items, seed=3))
    assert (whole != concepts.render(items, seed=4)).mean() > 0.5
    part = concepts.render(items[250:613], seed=3, indices=np.arange(250, 613))
    assert np.array_equal(part, whole[250:613])
    masks = concepts.glyph_masks(items[:300], seed=3)
    assert np.array_equal(masks[100:], concepts.glyph_masks(items[100:300], seed=3, indices=np.arange(100, 300)))


def test_glyphs_fit_their_window():
    table = concepts._distance_table().reshape(concepts.NUM_CONCEPTS * 3, concepts._TABLE_SIDE, concepts._TABLE_SIDE)
    g = np.abs((np.arange(concepts._TABLE_SIDE) - (concepts._TABLE_SIDE - 1) / 2) * concepts._TABLE_STEP)
    c, s = np.cos(concepts.ROTATION_JITTER), np.sin(concepts.ROTATION_JITTER)
    reach = np.maximum(g[:, None] * c + g[None, :] * s, g[None, :] * c + g[:, None] * s) * (1 + concepts.SIZE_JITTER)
    assert table[:, reach > 0.5 * concepts._WINDOW - 1].min() > 0.5  # no ink the jittered window could miss


def test_colour_position_size_and_dark_background():
    images = concepts.render(ALL, seed=5).astype(np.float32)
    _, color, _, position = concepts.item_attributes(ALL)
    corners = np.concatenate([images[:, :2, :2], images[:, :2, -2:], images[:, -2:, :2], images[:, -2:, -2:]], axis=1)
    background = corners.reshape(len(images), -1, 3).mean(1)
    mask = np.abs(images - background[:, None, None]).max(-1) > 60
    area = mask.sum((1, 2))
    assert area.min() >= 8 and background.max() < 70 and background.mean() < 40
    ys, xs = np.mgrid[:32, :32]
    cx, cy = (mask * xs).sum((1, 2)) / area + 0.5, (mask * ys).sum((1, 2)) / area + 0.5
    grid = np.asarray(concepts.GRID_CENTERS)
    assert np.array_equal(3 * np.abs(cy[:, None] - grid).argmin(1) + np.abs(cx[:, None] - grid).argmin(1), position)
    mean_rgb = (images * mask[..., None]).sum((1, 2)) / area[:, None]
    table = np.array(list(concepts.COLORS.values()), dtype=np.float32)

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    assert (np.argmax(unit(mean_rgb) @ unit(table).T, axis=1) == color).all()
    ink = concepts.glyph_masks(ALL, seed=5).sum((1, 2)).reshape(concepts.NUM_CONCEPTS, 8, 3, 9)
    assert (ink[:, :, 0].max((1, 2)) < ink[:, :, 1].min((1, 2))).all()  # per concept, every small < every medium
    assert (ink[:, :, 1].max((1, 2)) < ink[:, :, 2].min((1, 2))).all()


def _recentred(masks):
    """Masks rolled so that their mass centre is at the image centre (a CNN is translation-equivariant)."""
    ys, xs = np.mgrid[:32, :32]
    area = masks.sum((1, 2))
    dy = np.rint(15.5 - (masks * ys).sum((1, 2)) / area).astype(int)
    dx = np.rint(15.5 - (masks * xs).sum((1, 2)) / area).astype(int)
    return np.stack([np.roll(m, (y, x), axis=(0, 1)) for m, y, x in zip(masks, dy, dx)])


def test_concepts_render_distinguishably():
    per, n = 24, concepts.NUM_CONCEPTS
    truth = np.repeat(np.arange(n), per // 2)
    for size in range(3):
        items = concepts.item_index(np.repeat(np.arange(n), per), 2, size, 4)
        masks = _recentred(concepts.glyph_masks(items, seed=size)).reshape(n, per, -1)
        mean = masks.mean(1)
        for f in range(len(concepts.FAMILIES)):  # mean images of two concepts of a family differ clearly
            m = mean[concepts.FAMILY_OF == f]
            dist = np.linalg.norm(m[:, None] - m[None], axis=-1)
            norm = np.linalg.norm(m, axis=-1)
            assert (dist + np.eye(len(m)) * 1e9 > 0.25 * np.sqrt(norm[:, None] * norm[None])).all()
        centroids = masks[:, :per // 2].mean(1)
        test = masks[:, per // 2:].reshape(-1, masks.shape[-1])
        pred = ((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        assert (pred == truth).mean() >= 0.9, size  # nearest-centroid proxy for a CNN judge


def test_captions_distinct_and_parse_back():
    texts, items = captions.generate_captions(30_000, skew=1.0, seed=2)
    assert len(texts) == len(items) == 30_000 and len(set(texts)) == len(texts) and items.dtype == np.int64
    assert len(np.unique(items)) == concepts.NUM_ITEMS  # every item has a caption
    for text, item in zip(texts[:6000], items[:6000]):
        parsed = captions.parse_caption(text)
        assert concepts.item_index(*(parsed[a] for a in concepts.ATTRIBUTES)) == item, text
    again = captions.generate_captions(30_000, skew=1.0, seed=2)
    assert again[0] == texts and np.array_equal(again[1], items)
    assert captions.parse_caption("an apple, large and blue, at the center") == {
        "concept": concepts.CONCEPTS.index("apple"), "color": 5, "size": 2, "position": 4}
    assert captions.parse_caption("a red blue bunny")["color"] == captions.CONFLICT
    assert captions.parse_caption("a bunny")["position"] == captions.MISSING


def test_caption_frequencies_zipf_tail():
    counts = captions.prompt_counts(60_000, skew=1.0, seed=0)
    assert counts.sum() == 60_000 and counts.min() >= 1
    per_concept = counts.reshape(concepts.NUM_CONCEPTS, -1).sum(1)
    assert per_concept.max() > 8 * np.median(per_concept)
    freq = captions.concept_frequencies(1.0, 0)
    assert np.argmax(per_concept) == np.argmax(freq) and np.isclose(freq.sum(), 1)
    assert not np.array_equal(freq, captions.concept_frequencies(1.0, 1))
    few = captions.prompt_counts(5000, skew=1.0, seed=0)
    assert few.sum() == 5000 and few.max() <= 2 * (few > 0).sum()


@pytest.mark.parametrize("num_prompts", [1000, 2000, 5000])
def test_a_pool_of_fewer_prompts_than_items_keeps_every_concepts_share(num_prompts):
    """Below one prompt per item, every concept still gets its share of the pool (within one prompt), on
    distinct items first: no concept vanishes from a small pool."""
    counts = captions.prompt_counts(num_prompts, skew=1.0, seed=0).reshape(concepts.NUM_CONCEPTS, -1)
    share = num_prompts * captions.concept_frequencies(1.0, 0)
    assert counts.sum() == num_prompts and np.abs(counts.sum(1) - share).max() < 1
    spread = counts.max(1) - counts.min(1)
    assert (spread <= 1).all() and ((counts > 0).sum(1) == np.minimum(counts.sum(1), counts.shape[1])).all()


def test_paired_items_come_from_the_items_the_pool_names():
    """A small pool names only some items: the paired set keeps its size on those, every underrepresented
    concept keeps under_images images, and a concept the pool names too few items of is a clear error."""
    regimes = splits.split_items(0)
    freq = captions.concept_frequencies(1.0, 0)
    named = captions.prompt_counts(2000, 1.0, 0) > 0
    paired = splits.paired_items(regimes, 8000, 4, freq, seed=0, named=named)
    assert paired.size == 8000 and named[paired].all()
    under = np.flatnonzero(splits.concept_regimes(regimes) == splits.UNDER)
    per_concept = np.bincount(paired // concepts.ITEMS_PER_CONCEPT, minlength=concepts.NUM_CONCEPTS)
    assert (per_concept[under] == 4).all()
    assert np.array_equal(splits.paired_items(regimes, 8000, 4, freq, seed=0),
                          splits.paired_items(regimes, 8000, 4, freq, seed=0, named=np.ones(concepts.NUM_ITEMS, bool)))
    few = named.copy()
    few[under[0] * concepts.ITEMS_PER_CONCEPT:(under[0] + 1) * concepts.ITEMS_PER_CONCEPT] = False
    name = concepts.CONCEPTS[under[0]]
    with pytest.raises(ValueError, match=f"names 0 items of the underrepresented concept '{name}'"):
        splits.paired_items(regimes, 8000, 4, freq, seed=0, named=few)


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_split_regimes(seed):
    regimes = splits.split_items(seed)
    assert regimes.dtype == np.int8 and regimes.shape == (concepts.NUM_ITEMS,)
    per_concept = regimes.reshape(concepts.NUM_CONCEPTS, -1)
    concept_regime = splits.concept_regimes(regimes)
    unseen_fam = np.unique(concepts.FAMILY_OF[concept_regime == splits.UNSEEN])
    assert len(unseen_fam) == 2 and np.array_equal(unseen_fam, splits.held_out_families(seed))
    whole = (per_concept == splits.UNSEEN).all(1)
    assert np.array_equal(np.isin(concepts.FAMILY_OF, unseen_fam), whole)  # whole families
    assert set(concepts.FAMILY_DIFFICULTY[unseen_fam]) == {concepts.EASY, concepts.HARD}
    under = np.flatnonzero(concept_regime == splits.UNDER)
    assert len(under) == 8 and (per_concept[under] == splits.UNDER).all()
    assert set(concepts.DIFFICULTY[under]) == {concepts.EASY, concepts.HARD}
    assert len(set(concepts.FAMILY_OF[under])) == 6  # spread over the six paired families
    seen = np.flatnonzero(concept_regime == splits.SEEN)
    assert ((per_concept[seen] == splits.COMPOSITIONAL).sum(1) == round(0.1 * concepts.ITEMS_PER_CONCEPT)).all()
    _, color, size, position = concepts.item_attributes(ALL)
    kept = regimes == splits.SEEN
    for values, n in ((color, 8), (size, 3), (position, 9)):  # every attribute value stays seen for every concept
        seen_values = np.zeros((concepts.NUM_CONCEPTS, n), bool)
        seen_values[concepts.item_attributes(ALL[kept])[0], values[kept]] = True
        assert seen_values[seen].all()
    assert np.array_equal(regimes, splits.split_items(seed))


def test_two_seeds_hold_out_different_families():
    assert not set(splits.held_out_families(0)) & set(splits.held_out_families(1))
    pairs = {tuple(splits.held_out_families(s)) for s in range(15)}
    assert len(pairs) == 15
    four = splits.split_items(3, unseen_families=4, under_concepts=4)
    fam = np.unique(concepts.FAMILY_OF[splits.concept_regimes(four) == splits.UNSEEN])
    assert len(fam) == 4 and set(concepts.FAMILY_DIFFICULTY[np.setdiff1d(np.arange(8), fam)]) == {0, 1}
    with pytest.raises(ValueError):
        splits.split_items(0, unseen_families=1)


def test_paired_items():
    regimes = splits.split_items(1)
    freq = captions.concept_frequencies(1.0, 1)
    paired = splits.paired_items(regimes, paired_size=40_000, under_images=4, frequencies=freq, seed=1)
    assert paired.dtype == np.int64 and len(paired) == 40_000
    counts = np.bincount(paired, minlength=concepts.NUM_ITEMS)
    assert not counts[(regimes == splits.UNSEEN) | (regimes == splits.COMPOSITIONAL)].any()
    assert counts[regimes == splits.SEEN].min() >= 1
    under = regimes == splits.UNDER
    per_concept = counts.reshape(concepts.NUM_CONCEPTS, -1)
    under_concepts = splits.concept_regimes(regimes) == splits.UNDER
    assert (per_concept[under_concepts].sum(1) == 4).all() and counts[under].max() == 1  # on distinct items
    seen = splits.concept_regimes(regimes) == splits.SEEN
    totals, f = per_concept[seen].sum(1), freq[seen]
    assert np.all(np.diff(totals[np.argsort(f)]) >= 0)  # Zipf by frequency
    assert totals.max() > 3 * totals.min()
    assert np.array_equal(paired, splits.paired_items(regimes, 40_000, 4, freq, seed=1))
    with pytest.raises(ValueError):
        splits.paired_items(regimes, 1000, 4, freq, seed=1)
