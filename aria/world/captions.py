"""World v2 captions: templated phrasings of items with a Zipf long tail over concepts.

A caption names an item's concept, colour, size and position in one of several templates
("a small red apple in the top left corner", "an apple, large and blue, at the center", ...) with
synonyms for every slot (a few concept nouns too: "bunny", "spanner", "aeroplane"), so captions of
one concept vary as real captions do while ``parse_caption`` reads all four attributes back.

Frequency: concepts get prompts by a Zipf law (exponent ``skew``) over a seeded permutation,
independent of family and difficulty, so the long tail is crossed with everything else. Every
item gets one prompt first (when ``num_prompts`` allows), the rest follow the concept's frequency,
spread evenly over its items, each item capped at half its distinct phrasings. All prompts are
distinct.
"""

from __future__ import annotations

import numpy as np

from .concepts import COLORS, CONCEPTS, ITEMS_PER_CONCEPT, NUM_CONCEPTS, NUM_ITEMS, SIZES, item_attributes
from .phrases import (  # noqa: F401 (part of this module's interface)
    BACKGROUNDS, CONFLICT, FRAMES, MISSING, POSITION_LABELS, POSITION_PHRASES,
)
from .phrases import COLOR_WORDS as V1_COLOR_WORDS
from .phrases import SIZE_WORDS, Phrasebook, zipf_frequencies
from .phrases import TEMPLATES as V1_TEMPLATES

GENERATOR_VERSION = 2  # bump when the captions of a (num_prompts, skew, seed) change: cached pools are rebuilt
_FREQ_STREAM, _TIE_STREAM, _PHRASE_STREAM = 31, 32, 33

CONCEPT_WORDS = {
    "apple": ("apple",), "pear": ("pear",), "cherry": ("cherry", "pair of cherries"), "banana": ("banana",),
    "grapes": ("bunch of grapes", "grape cluster", "grape bunch"), "lemon": ("lemon",), "strawberry": ("strawberry",),
    "watermelon": ("watermelon", "watermelon slice", "slice of watermelon"),
    "hammer": ("hammer", "claw hammer"), "key": ("key", "door key"), "scissors": ("pair of scissors", "pair of shears"),
    "wrench": ("wrench", "spanner"), "saw": ("saw", "handsaw"), "screwdriver": ("screwdriver",),
    "axe": ("axe", "hatchet"), "shovel": ("shovel", "spade"),
    "cat": ("cat", "kitten", "kitty"), "fish": ("fish", "goldfish"), "bird": ("bird", "songbird", "sparrow"),
    "snake": ("snake", "serpent"), "turtle": ("turtle", "tortoise"), "rabbit": ("rabbit", "bunny", "hare"),
    "elephant": ("elephant",), "mouse": ("mouse",),
    "car": ("car", "automobile"), "truck": ("truck", "lorry"), "bus": ("bus", "city bus"),
    "bicycle": ("bicycle", "bike"),
    "boat": ("boat", "sailboat", "sailing boat"), "airplane": ("airplane", "aeroplane", "plane"),
    "rocket": ("rocket", "space rocket"), "helicopter": ("helicopter", "chopper"),
    "sun": ("sun",), "moon": ("moon", "crescent moon"), "star": ("star", "five-pointed star"), "cloud": ("cloud",),
    "lightning": ("lightning bolt", "bolt of lightning", "thunderbolt"),
    "raindrop": ("raindrop", "drop of water", "water drop"),
    "snowflake": ("snowflake",), "rainbow": ("rainbow",),
    "house": ("house", "cottage"), "skyscraper": ("skyscraper", "high-rise", "office tower"),
    "castle": ("castle", "fortress"), "windmill": ("windmill",), "tent": ("tent",),
    "pyramid": ("pyramid", "stepped pyramid"), "bridge": ("bridge", "arch bridge"),
    "igloo": ("igloo",),
    "ant": ("ant",), "spider": ("spider",), "butterfly": ("butterfly",), "bee": ("bee", "honeybee", "bumblebee"),
    "ladybug": ("ladybug", "ladybird"), "dragonfly": ("dragonfly",), "caterpillar": ("caterpillar",),
    "grasshopper": ("grasshopper", "locust"),
    "guitar": ("guitar", "acoustic guitar"), "piano": ("piano", "keyboard"), "drum": ("drum", "snare drum"),
    "trumpet": ("trumpet",), "harp": ("harp",), "xylophone": ("xylophone",), "flute": ("flute",),
    "accordion": ("accordion",),
}
# world v1's colour words less the fruit ones ("lemon" is a concept)
COLOR_WORDS = {**V1_COLOR_WORDS, "orange": ("orange", "amber"), "yellow": ("yellow", "golden", "bright yellow")}
assert tuple(CONCEPT_WORDS) == CONCEPTS and tuple(COLOR_WORDS) == tuple(COLORS) and tuple(SIZE_WORDS) == SIZES

TEMPLATES = V1_TEMPLATES[:1] + ("{F}{D} {H}, {S} and {C}, {P}{B}",) + V1_TEMPLATES[1:]  # slots as in v1
_BOOK = Phrasebook(TEMPLATES, {"concept": CONCEPT_WORDS, "color": COLOR_WORDS, "size": SIZE_WORDS},
                   item_attributes, NUM_ITEMS, oversample=(8, 1))
phrasing_capacity = _BOOK.capacity


def concept_frequencies(skew: float, seed: int) -> np.ndarray:
    """Zipf probabilities (rank ** -skew) over a seeded permutation of the concepts."""
    return zipf_frequencies(NUM_CONCEPTS, skew, seed, _FREQ_STREAM)


def _allocate(total: int, weight: np.ndarray, floor: np.ndarray, cap: np.ndarray, rng) -> np.ndarray:
    """``floor`` plus ``total - floor.sum()`` more in proportion to ``weight`` (largest remainder, ties
    broken at random), never above ``cap``: the excess flows on to the items still open."""
    counts = floor.astype(np.int64).copy()
    tie = rng.random(len(weight))
    while (left := total - counts.sum()) > 0:
        open_ = (counts < cap) & (weight > 0)
        if not open_.any():
            raise ValueError(f"cannot place {left} more under the caps")
        share = left * weight * open_ / (weight * open_).sum()
        add = np.floor(share).astype(np.int64)
        order = np.lexsort((tie, -(share - add), ~open_))
        add[order[:left - add.sum()]] += 1
        counts = np.minimum(counts + add, cap)
    return counts


def prompt_counts(num_prompts: int, skew: float, seed: int) -> np.ndarray:
    """Prompts per item: one each (when ``num_prompts`` allows), the rest by concept frequency.

    A pool of fewer prompts than items is allocated per concept first (largest remainder over the concept
    frequencies), then over random distinct items of each concept: every concept keeps its share. (Before
    version 2 it was allocated per item, where every item's share is below one: the largest remainders went
    to the frequent concepts' items, and a pool of 2,000 prompts named 9 of the 64 concepts.)"""
    cap = phrasing_capacity() // 2
    if not 0 < num_prompts <= cap.sum():
        raise ValueError(f"num_prompts={num_prompts} is outside [1, {cap.sum()}] (distinct phrasings)")
    freq = concept_frequencies(skew, seed)
    rng = np.random.default_rng([seed, _TIE_STREAM])
    if num_prompts >= NUM_ITEMS:
        weight = np.repeat(freq / ITEMS_PER_CONCEPT, ITEMS_PER_CONCEPT)
        return _allocate(num_prompts, weight, np.ones(NUM_ITEMS, np.int64), cap, rng)
    item_cap = cap.reshape(NUM_CONCEPTS, ITEMS_PER_CONCEPT)
    per_concept = _allocate(num_prompts, freq, np.zeros(NUM_CONCEPTS, np.int64), item_cap.sum(1), rng)
    return np.concatenate([_allocate(n, np.ones(ITEMS_PER_CONCEPT), np.zeros(ITEMS_PER_CONCEPT, np.int64), c, rng)
                           for n, c in zip(per_concept, item_cap)])


def generate_captions(num_prompts: int, skew: float, seed: int) -> tuple[list[str], np.ndarray]:
    """(captions, int64 item of each) in a seeded shuffled order; all captions distinct."""
    counts = prompt_counts(num_prompts, skew, seed)
    items, choices = _BOOK.shuffled(counts, np.random.default_rng([seed, _PHRASE_STREAM]))
    return list(_BOOK.texts(items, choices)), items


def parse_caption(text: str) -> dict[str, int]:
    """Attribute indices a caption names (concept, color, size, position): MISSING (-1) where none,
    CONFLICT (-2) where several."""
    return _BOOK.parse(text)
