"""The world's prompt pool: paraphrases of every combination with a long-tailed frequency.

Each prompt is drawn from a template (varied word order and style) with synonyms for shape,
colour, size and position; a prompt's words name exactly its own attribute values, so
``parse_prompt`` reads them back. Combinations get prompt counts from a Zipf law (exponent
``skew``) over a seeded permutation, at least ``MIN_PROMPTS_PER_COMBO`` each, capped at half the
distinct phrasings of the combination (the excess flows to the next ones).
"""

from __future__ import annotations

import numpy as np

from aria.errors import UserError
from aria.world import shapes
from aria.world.phrases import (  # noqa: F401 (part of this module's interface)
    BACKGROUNDS, CONFLICT, FRAMES, MISSING, POSITION_LABELS, POSITION_PHRASES,
)
from aria.world.phrases import COLOR_WORDS, SIZE_WORDS, TEMPLATES, Phrasebook, zipf_frequencies

GENERATOR_VERSION = 1
MIN_PROMPTS_PER_COMBO = 3
_FREQ_STREAM, _PHRASE_STREAM = 11, 12

SHAPE_WORDS = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box", "square tile"),
    "triangle": ("triangle", "triangular shape", "trigon"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "star": ("star", "five-pointed star", "star shape"),
    "cross": ("cross", "plus sign", "plus shape"),
    "ring": ("ring", "hoop", "annulus", "donut"),
    "hexagon": ("hexagon", "six-sided polygon", "hex tile"),
}
assert tuple(SHAPE_WORDS) == shapes.SHAPES and tuple(COLOR_WORDS) == tuple(shapes.COLORS)

_BOOK = Phrasebook(TEMPLATES, {"shape": SHAPE_WORDS, "color": COLOR_WORDS, "size": SIZE_WORDS},
                   shapes.combo_attributes, shapes.NUM_COMBOS, oversample=(4, 2))
_slot_sizes, _phrases, phrasing_capacity = _BOOK.slot_sizes, _BOOK.texts, _BOOK.capacity


def combo_frequencies(skew: float, seed: int) -> np.ndarray:
    """Zipf probabilities (rank ** -skew) over a seeded permutation of the combinations."""
    return zipf_frequencies(shapes.NUM_COMBOS, skew, seed, _FREQ_STREAM)


def prompt_counts(num_prompts: int, skew: float, seed: int) -> np.ndarray:
    """Prompts per combination: a floor for every one, the rest by frequency, capped by capacity."""
    if num_prompts < shapes.NUM_COMBOS:
        raise UserError(f"world.num_prompts={num_prompts} is below {shapes.NUM_COMBOS} (one prompt per combination)")
    cap = phrasing_capacity() // 2
    if num_prompts > cap.sum():
        raise UserError(f"world.num_prompts={num_prompts} exceeds the {cap.sum()} prompts the world phrases distinctly")
    counts = np.full(shapes.NUM_COMBOS, min(MIN_PROMPTS_PER_COMBO, num_prompts // shapes.NUM_COMBOS), dtype=np.int64)
    freq = combo_frequencies(skew, seed)
    while (left := num_prompts - counts.sum()) > 0:  # largest remainder, then water-fill past caps
        open_ = counts < cap
        share = left * freq * open_ / (freq * open_).sum()
        add = np.floor(share).astype(np.int64)
        rest = left - add.sum()
        add[np.argsort(-(share - add) - open_, kind="stable")[:rest]] += 1
        counts = np.minimum(counts + add, cap)
    return counts


def generate(num_prompts: int, skew: float, seed: int):
    """(combo int32 array, iterator of prompt strings) in a seeded shuffled order."""
    counts = prompt_counts(num_prompts, skew, seed)
    combos, choices = _BOOK.shuffled(counts, np.random.default_rng([seed, _PHRASE_STREAM]))
    return combos.astype(np.int32), _BOOK.texts(combos, choices)


def combo_members(pool) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping of prompt ids by combination: ids of combo c are members[offsets[c]:offsets[c+1]]."""
    combos = np.asarray(pool.meta("combo"), dtype=np.int64)
    members = np.argsort(combos, kind="stable")
    offsets = np.zeros(shapes.NUM_COMBOS + 1, dtype=np.int64)
    np.cumsum(np.bincount(combos, minlength=shapes.NUM_COMBOS), out=offsets[1:])
    return offsets, members


def parse_prompt(text: str) -> dict[str, int]:
    """Attribute indices a prompt names: MISSING (-1) where none, CONFLICT (-2) where several."""
    return _BOOK.parse(text)
