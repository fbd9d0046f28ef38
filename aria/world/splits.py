"""World v2 regimes, after Random Conditioning's unseen-class protocol, reproducible from a seed.

* unseen: whole families with no paired image (default two: always at least one easy and one hard
  family). Their concepts are named only by prompts, as the RC paper held out animal classes.
* under: concepts (default 8) with ``under_images`` paired images in all, spread over their items;
  drawn from the remaining families, round-robin over them, hard and easy families both included.
* seen: every other concept, its items with paired images Zipf-distributed by concept frequency.
* compositional: a control, v1's kind of unseen: a fraction (default 10%) of each seen concept's
  items (colour x size x position) with no paired image, every value of each attribute kept seen.

Difficulty is crossed with the regimes, never tied to one, so a result on the unseen regime cannot
be a result on hard glyphs. The unseen pair cycles with the seed: seed s holds out easy family
``s % 5`` and hard family ``s % 3`` (in ``FAMILIES`` order), so seeds that differ by less than 15
hold out different pairs and consecutive seeds disjoint ones.
"""

from __future__ import annotations

import numpy as np

from .concepts import (
    COLORS, CONCEPTS, FAMILY_DIFFICULTY, FAMILY_NAMES, FAMILY_OF, HARD, ITEMS_PER_CONCEPT, NUM_CONCEPTS, NUM_ITEMS,
    POSITIONS, SIZES, item_attributes,
)

SEEN, UNDER, UNSEEN, COMPOSITIONAL = 0, 1, 2, 3
REGIME_NAMES = ("seen", "under", "unseen", "compositional")
_SPLIT_STREAM, _PAIRED_STREAM = 41, 42
_EASY = np.flatnonzero(FAMILY_DIFFICULTY != HARD)
_HARD = np.flatnonzero(FAMILY_DIFFICULTY == HARD)


def held_out_families(seed: int, count: int = 2) -> np.ndarray:
    """Sorted indices of the ``count`` unseen families: easy ``seed % n_easy``, hard ``seed % n_hard``,
    then random others (at least one easy and one hard family always stays paired)."""
    if not 2 <= count <= len(FAMILY_NAMES) - 2:
        raise ValueError(f"unseen_families={count} must be in [2, {len(FAMILY_NAMES) - 2}]")
    chosen = [int(_EASY[seed % len(_EASY)]), int(_HARD[seed % len(_HARD)])]
    rng = np.random.default_rng([seed, _SPLIT_STREAM, 0])
    for family in rng.permutation(len(FAMILY_NAMES)):
        if len(chosen) == count:
            break
        kind = _HARD if FAMILY_DIFFICULTY[family] == HARD else _EASY
        if family not in chosen and len(set(kind) - set(chosen)) > 1:
            chosen.append(int(family))
    if len(chosen) < count:
        raise ValueError(f"unseen_families={count} leaves no easy or no hard family paired")
    return np.sort(np.array(chosen, dtype=np.int64))


def split_items(seed: int, unseen_families: int = 2, under_concepts: int = 8,
                compositional_fraction: float = 0.1) -> np.ndarray:
    """int8 regime (SEEN, UNDER, UNSEEN, COMPOSITIONAL) per item."""
    unseen = held_out_families(seed, unseen_families)
    rng = np.random.default_rng([seed, _SPLIT_STREAM, 1])
    concept_regime = np.where(np.isin(FAMILY_OF, unseen), UNSEEN, SEEN).astype(np.int8)

    # under: round-robin over the paired families, a hard one first and an easy one second
    paired = np.setdiff1d(np.arange(len(FAMILY_NAMES)), unseen)
    hard = rng.permutation(paired[FAMILY_DIFFICULTY[paired] == HARD])
    easy = rng.permutation(paired[FAMILY_DIFFICULTY[paired] != HARD])
    rest = rng.permutation(np.concatenate([hard[1:], easy[1:]]))
    order = np.concatenate([hard[:1], easy[:1], rest]).astype(np.int64)
    members = [list(rng.permutation(np.flatnonzero(FAMILY_OF == f))) for f in order]
    if not 0 <= under_concepts < sum(len(m) for m in members):
        raise ValueError(f"under_concepts={under_concepts} must leave at least one seen concept")
    for k in range(under_concepts):
        family = k % len(order)
        while not members[family]:  # a family used up: go on to the next one
            family = (family + 1) % len(order)
        concept_regime[members[family].pop()] = UNDER
    if (concept_regime == SEEN).sum() == 0:
        raise ValueError("no seen concept left")

    regimes = np.repeat(concept_regime, ITEMS_PER_CONCEPT)
    n_held = round(compositional_fraction * ITEMS_PER_CONCEPT)
    if not 0 <= n_held <= ITEMS_PER_CONCEPT - max(len(COLORS), len(SIZES), len(POSITIONS)):
        raise ValueError(f"compositional_fraction={compositional_fraction} is outside [0, 0.95]")
    for concept in np.flatnonzero(concept_regime == SEEN):
        regimes[concept * ITEMS_PER_CONCEPT + _held_out(rng, n_held)] = COMPOSITIONAL
    return regimes


def _held_out(rng: np.random.Generator, n_held: int) -> np.ndarray:
    """``n_held`` random local item offsets of one concept, redrawn until every colour, size and position
    keeps a seen item (almost always the first draw)."""
    _, color, size, position = item_attributes(np.arange(ITEMS_PER_CONCEPT))
    while True:
        held = rng.choice(ITEMS_PER_CONCEPT, n_held, replace=False)
        kept = np.ones(ITEMS_PER_CONCEPT, dtype=bool)
        kept[held] = False
        if all(len(np.unique(v[kept])) == n for v, n in ((color, len(COLORS)), (size, len(SIZES)),
                                                           (position, len(POSITIONS)))):
            return held


def concept_regimes(regimes: np.ndarray) -> np.ndarray:
    """int8 regime per concept (SEEN, UNDER or UNSEEN; a concept with compositional items is SEEN)."""
    per = np.asarray(regimes).reshape(NUM_CONCEPTS, ITEMS_PER_CONCEPT)
    return np.where(per == COMPOSITIONAL, SEEN, per).max(axis=1).astype(np.int8)


def paired_items(regimes, paired_size: int, under_images: int, frequencies, seed: int,
                 named: np.ndarray | None = None) -> np.ndarray:
    """int64 item of every paired image (sorted), ``paired_size`` in all.

    Each underrepresented concept gets exactly ``under_images`` images on distinct random items;
    every seen item gets one, and the rest go to seen items by concept frequency (``frequencies``:
    per concept, e.g. ``captions.concept_frequencies``, or per item), evenly within a concept.
    Unseen and compositional items get none. ``named`` (bool per item; None: all): the items the prompt
    pool has a caption for, the only ones a paired image can be captioned with; a pool of fewer prompts
    than items names only some, and the rules above then apply to those (an underrepresented concept with
    fewer than ``under_images`` named items is an error).
    """
    regimes = np.asarray(regimes)
    if regimes.shape != (NUM_ITEMS,):
        raise ValueError(f"regimes must have one entry per item ({NUM_ITEMS})")
    named = np.ones(NUM_ITEMS, dtype=bool) if named is None else np.asarray(named, dtype=bool)
    if named.shape != (NUM_ITEMS,):
        raise ValueError(f"named must have one entry per item ({NUM_ITEMS})")
    frequencies = np.asarray(frequencies, dtype=np.float64)
    if frequencies.shape not in ((NUM_CONCEPTS,), (NUM_ITEMS,)) or (frequencies < 0).any():
        raise ValueError(f"frequencies must be non-negative, one per concept ({NUM_CONCEPTS}) or item ({NUM_ITEMS})")
    if not 0 < under_images <= ITEMS_PER_CONCEPT:
        raise ValueError(f"under_images={under_images} is outside [1, {ITEMS_PER_CONCEPT}]")
    rng = np.random.default_rng([seed, _PAIRED_STREAM])
    seen = (regimes == SEEN) & named
    counts = seen.astype(np.int64)
    for concept in np.flatnonzero(concept_regimes(regimes) == UNDER):
        items = concept * ITEMS_PER_CONCEPT + np.flatnonzero(named.reshape(NUM_CONCEPTS, ITEMS_PER_CONCEPT)[concept])
        if items.size < under_images:
            raise ValueError(f"the prompt pool names {items.size} items of the underrepresented concept "
                             f"{CONCEPTS[concept]!r}, fewer than under_images={under_images}: raise num_prompts")
        counts[items[rng.choice(items.size, under_images, replace=False)]] = 1
    extra = paired_size - counts.sum()
    if extra < 0:
        raise ValueError(f"paired_size={paired_size} is below {counts.sum()} (one image per seen item the pool "
                         f"names and {under_images} per underrepresented concept)")
    if frequencies.shape == (NUM_CONCEPTS,):  # spread evenly over the concept's seen items
        seen_per_concept = seen.reshape(NUM_CONCEPTS, ITEMS_PER_CONCEPT).sum(axis=1)
        frequencies = np.repeat(frequencies / np.maximum(seen_per_concept, 1), ITEMS_PER_CONCEPT)
    weight = np.where(seen, frequencies, 0.0)
    if extra and weight.sum() <= 0:
        raise ValueError("frequencies give no weight to any seen item")
    if extra:
        share = extra * weight / weight.sum()
        add = np.floor(share).astype(np.int64)
        order = np.lexsort((rng.random(NUM_ITEMS), -(share - add)))
        add[order[:extra - add.sum()]] += 1
        counts += add
    return np.repeat(np.arange(NUM_ITEMS, dtype=np.int64), counts)
