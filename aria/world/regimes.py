"""Regimes of the world's combinations: seen (common), underrepresented (few images), unseen (none).

The split is stratified by (shape, colour) pair: each pair's 27 (size, position) combinations are
ranked at random and the ranks interleaved across pairs, so every regime takes about the same
fraction of every pair, every pair keeps at least one seen combination (as long as there are 64
seen), and those guaranteed seen ones cover every size and position. Unseen combinations are
therefore new compositions of known words. Paired images: ``under_images`` per underrepresented
combination; the rest of ``paired_size`` goes to seen ones, at least ``under_images + 1`` each and
the remainder in proportion to their prompt frequency in the pool.
"""

from __future__ import annotations

import numpy as np

from aria.errors import UserError
from aria.world import shapes
from aria.world.prompts import prompt_counts

SEEN, UNDER, UNSEEN = 0, 1, 2
REGIME_NAMES = ("seen", "under", "unseen")
_SPLIT_STREAM = 21
_PAIRS = len(shapes.SHAPES) * len(shapes.COLORS)
_PER_PAIR = shapes.NUM_COMBOS // _PAIRS  # (size, position) combinations of one (shape, colour) pair


def split_regimes(world) -> np.ndarray:
    """int8 regime per combination, reproducible from ``world.seed`` (a WorldConfig)."""
    n_unseen = round(world.unseen_fraction * shapes.NUM_COMBOS)
    n_under = round(world.under_fraction * shapes.NUM_COMBOS)
    n_seen = shapes.NUM_COMBOS - n_unseen - n_under
    if n_seen < _PAIRS:
        raise UserError(f"world.unseen_fraction + world.under_fraction leave {n_seen} seen combinations; "
                        f"need at least {_PAIRS} (one per shape-colour pair)")
    rng = np.random.default_rng([world.seed, _SPLIT_STREAM])
    # the top-ranked (size, position) of each pair: every one of the 27 at least twice over the 64 pairs
    tops = rng.permutation(np.resize(rng.permutation(_PER_PAIR), _PAIRS))
    rank = np.empty((_PAIRS, _PER_PAIR), dtype=np.int64)
    for pair in range(_PAIRS):
        order = rng.permutation(_PER_PAIR)
        order = np.append(order[order != tops[pair]], tops[pair])
        rank[pair, order] = np.arange(_PER_PAIR)
    key = ((rank + rng.random(rank.shape)) / _PER_PAIR).reshape(-1)  # combo order: pair-major
    regimes = np.full(shapes.NUM_COMBOS, SEEN, dtype=np.int8)
    by_key = np.argsort(key, kind="stable")
    regimes[by_key[:n_unseen]] = UNSEEN
    regimes[by_key[n_unseen:n_unseen + n_under]] = UNDER
    return regimes


def paired_combos(world, regimes: np.ndarray) -> np.ndarray:
    """int64 combination of every paired image (sorted), ``world.paired_size`` in all."""
    regimes = np.asarray(regimes)
    if regimes.shape != (shapes.NUM_COMBOS,):
        raise ValueError(f"regimes must have one entry per combination ({shapes.NUM_COMBOS})")
    seen, under = regimes == SEEN, regimes == UNDER
    floor = world.under_images + 1
    need = int(under.sum()) * world.under_images + int(seen.sum()) * floor
    if world.paired_size < need:
        raise UserError(f"world.paired_size={world.paired_size} is too small: {int(under.sum())} underrepresented x "
                        f"{world.under_images} + {int(seen.sum())} seen x {floor} need {need}")
    counts = np.where(under, world.under_images, np.where(seen, floor, 0)).astype(np.int64)
    weight = prompt_counts(world.num_prompts, world.skew, world.seed) * seen
    extra = world.paired_size - need
    share = extra * weight / weight.sum()
    add = np.floor(share).astype(np.int64)
    add[np.argsort(-(share - add), kind="stable")[:extra - add.sum()]] += 1
    counts += add
    return np.repeat(np.arange(shapes.NUM_COMBOS, dtype=np.int64), counts)
