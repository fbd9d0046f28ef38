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

import functools
import re

import numpy as np

from .concepts import COLORS, CONCEPTS, ITEMS_PER_CONCEPT, NUM_CONCEPTS, NUM_ITEMS, POSITIONS, SIZES, item_attributes

GENERATOR_VERSION = 1  # bump when the captions of a (num_prompts, skew, seed) change: cached pools are rebuilt
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
COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber"),
    "yellow": ("yellow", "golden", "bright yellow"),
    "green": ("green", "emerald", "grass-green"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "royal-blue"),
    "purple": ("purple", "violet", "amethyst"),
    "magenta": ("magenta", "pink", "fuchsia"),
}
SIZE_WORDS = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
assert tuple(CONCEPT_WORDS) == CONCEPTS and tuple(COLOR_WORDS) == tuple(COLORS) and tuple(SIZE_WORDS) == SIZES

_ROW_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_CORNER_PHRASES = ("in the {r} {c} corner", "at the {r} {c}", "in the {r}-{c} area", "near the {r} {c} corner")
_EDGE_PHRASES = ("at the {r} center", "in the {r} middle", "along the {r} edge")
_SIDE_PHRASES = ("on the {c}", "at the {c} edge", "in the middle {c}", "on the {c} side", "midway down the {c} side")
_CENTER_PHRASES = ("in the center", "in the centre", "in the middle", "at the center", "centered in the frame",
                   "in the very middle")


def _position_phrases(position: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(phrases used after the noun, short labels) for one grid position."""
    row, col = position.split("-") if "-" in position else ("middle", "center")
    if row in _ROW_WORDS and col != "center":
        rows = _ROW_WORDS[row]
        return (tuple(p.format(r=r, c=col) for p in _CORNER_PHRASES for r in rows),
                tuple(lab for r in rows for lab in (f"{r}-{col}", f"{r} {col}")))
    if row in _ROW_WORDS:
        rows = _ROW_WORDS[row]
        return (tuple(p.format(r=r) for p in _EDGE_PHRASES for r in rows) + (f"at the {row}", f"centered at the {row}"),
                (row,) + tuple(lab for r in rows for lab in (f"{r} center", f"{r}-middle")))
    if col != "center":
        return tuple(p.format(c=col) for p in _SIDE_PHRASES), (col, f"middle {col}", f"{col} side")
    return _CENTER_PHRASES, ("center", "centre", "middle")


POSITION_PHRASES = {p: _position_phrases(p)[0] for p in POSITIONS}
POSITION_LABELS = {p: _position_phrases(p)[1] for p in POSITIONS}

FRAMES = ("", "an image of ", "a picture of ", "a photo of ", "a render of ", "a drawing of ",
          "a simple graphic of ", "a pixel-art image of ", "an icon of ")
BACKGROUNDS = ("", " on a dark background", " on black", " against a dark backdrop", " on a dark textured background")
# slots: F frame, B background, D article, S size, C colour, H concept noun, P position phrase, L position label
TEMPLATES = (
    "{F}{D} {S} {C} {H} {P}{B}",
    "{F}{D} {H}, {S} and {C}, {P}{B}",
    "{F}{D} {C} {H}, {S}, {P}{B}",
    "{P}, {D} {S} {C} {H}{B}",
    "{L}: {S} {C} {H}",
    "{F}{D} {S} {H} in {C} {P}{B}",
    "{F}{D} {H} that is {S} and {C}, {P}{B}",
    "{S} {C} {H} ({L})",
    "there is {D} {S} {C} {H} {P}{B}",
    "{D} {S} {H}, colored {C}, {P}{B}",
    "{H}, {C}, {S}, {L}",
)
_USES = np.array([[f"{{{s}}}" in t for s in "FBPL"] for t in TEMPLATES])  # (T, 4): frame, bg, phrase, label
_ARTICLE_BEFORE = [t[t.index("{D}") + 5] if "{D}" in t else None for t in TEMPLATES]  # slot after the article

_SYNONYMS = (
    [CONCEPT_WORDS[n] for n in CONCEPTS], [COLOR_WORDS[n] for n in COLORS], [SIZE_WORDS[n] for n in SIZES],
    [POSITION_PHRASES[n] for n in POSITIONS], [POSITION_LABELS[n] for n in POSITIONS],
)
_SYN_COUNTS = [np.array([len(w) for w in words]) for words in _SYNONYMS]
_RADIX = (len(TEMPLATES), len(FRAMES), len(BACKGROUNDS), 4, 4, 4, 16)  # template frame bg concept colour size position
assert all(c.max() <= r for c, r in zip(_SYN_COUNTS[:3] + [np.maximum(_SYN_COUNTS[3], _SYN_COUNTS[4])], _RADIX[3:]))


def _slot_sizes(items: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """(n, 7) number of choices of each slot (1 where the template does not use it)."""
    concept, color, size, position = item_attributes(items)
    uses = _USES[templates]
    pos = np.where(uses[:, 2], _SYN_COUNTS[3][position], _SYN_COUNTS[4][position])
    frame, bg = np.where(uses[:, 0], len(FRAMES), 1), np.where(uses[:, 1], len(BACKGROUNDS), 1)
    syn = [counts[values] for counts, values in zip(_SYN_COUNTS, (concept, color, size))]
    return np.stack([np.ones(len(items), dtype=np.int64), frame, bg, *syn, pos], axis=1)


def phrasing_capacity(items=None) -> np.ndarray:
    """Number of distinct captions each item can be phrased as."""
    items = np.arange(NUM_ITEMS) if items is None else np.asarray(items)
    return sum(_slot_sizes(items, np.full(len(items), t)).prod(axis=1) for t in range(len(TEMPLATES)))


def concept_frequencies(skew: float, seed: int) -> np.ndarray:
    """Zipf probabilities (rank ** -skew) over a seeded permutation of the concepts."""
    order = np.random.default_rng([seed, _FREQ_STREAM]).permutation(NUM_CONCEPTS)
    rank = np.empty(NUM_CONCEPTS, dtype=np.float64)
    rank[order] = np.arange(1, NUM_CONCEPTS + 1)
    weights = rank ** -float(skew)
    return weights / weights.sum()


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
    """Prompts per item: one each (when ``num_prompts`` allows), the rest by concept frequency."""
    cap = phrasing_capacity() // 2
    if not 0 < num_prompts <= cap.sum():
        raise ValueError(f"num_prompts={num_prompts} is outside [1, {cap.sum()}] (distinct phrasings)")
    weight = np.repeat(concept_frequencies(skew, seed) / ITEMS_PER_CONCEPT, ITEMS_PER_CONCEPT)
    floor = np.full(NUM_ITEMS, 1 if num_prompts >= NUM_ITEMS else 0)
    return _allocate(num_prompts, weight, floor, cap, np.random.default_rng([seed, _TIE_STREAM]))


def _draw_phrasings(counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (item, slot choices) draws, ``counts[i]`` of item i; repeats are drawn again."""
    items = np.empty(0, dtype=np.int64)
    choices = np.empty((0, len(_RADIX)), dtype=np.int64)
    weights = np.cumprod((1,) + _RADIX[::-1])[::-1]  # mixed radix of a phrasing key
    while (deficit := counts - np.bincount(items, minlength=NUM_ITEMS)).any():
        want = np.repeat(np.arange(NUM_ITEMS), np.where(deficit > 0, deficit + deficit // 8 + 1, 0))
        templates = rng.integers(0, len(TEMPLATES), len(want))
        sizes = _slot_sizes(want, templates)
        draw = np.floor(rng.random(sizes.shape) * sizes).astype(np.int64)
        draw[:, 0] = templates
        items, choices = np.concatenate([items, want]), np.concatenate([choices, draw])
        _, first = np.unique(items * weights[0] + choices @ weights[1:], return_index=True)
        keep = np.sort(first)  # first copy of every phrasing, in draw order
        items, choices = items[keep], choices[keep]
        order = np.argsort(items, kind="stable")
        rank = np.empty(len(items), dtype=np.int64)
        rank[order] = np.arange(len(items)) - np.repeat(np.searchsorted(items[order], np.arange(NUM_ITEMS)),
                                                        np.bincount(items, minlength=NUM_ITEMS))
        keep = rank < counts[items]  # drop surplus draws
        items, choices = items[keep], choices[keep]
    return items, choices


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrases(items: np.ndarray, choices: np.ndarray) -> list[str]:
    concept_syn, color_syn, size_syn, phrase_syn, label_syn = _SYNONYMS
    attrs = np.stack(item_attributes(items), axis=1).tolist()
    out = []
    for (concept, color, size, position), (template, frame, bg, h, c, s, p) in zip(attrs, choices.tolist()):
        words = {"F": FRAMES[frame], "B": BACKGROUNDS[bg], "H": concept_syn[concept][h], "C": color_syn[color][c],
                 "S": size_syn[size][s]}
        if _USES[template, 2]:
            words["P"] = phrase_syn[position][p]
        else:
            words["L"] = label_syn[position][p]
        if _ARTICLE_BEFORE[template]:
            words["D"] = _article(words[_ARTICLE_BEFORE[template]])
        out.append(TEMPLATES[template].format(**words))
    return out


def generate_captions(num_prompts: int, skew: float, seed: int) -> tuple[list[str], np.ndarray]:
    """(captions, int64 item of each) in a seeded shuffled order; all captions distinct."""
    counts = prompt_counts(num_prompts, skew, seed)
    rng = np.random.default_rng([seed, _PHRASE_STREAM])
    items, choices = _draw_phrasings(counts, rng)
    order = rng.permutation(len(items))
    items, choices = items[order], choices[order]
    return _phrases(items, choices), items


# ---------------------------------------------------------------- reading captions back

MISSING, CONFLICT = -1, -2
_ROW_KEYS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_COL_KEYS = {"left": 0, "right": 2}
_CENTER_KEYS = {"center", "centre", "middle", "centered"}


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@functools.lru_cache(maxsize=1)
def _vocabulary() -> dict[tuple[str, ...], tuple[str, int]]:
    """Token tuple of every concept / colour / size phrase -> (attribute, value index)."""
    vocab = {}
    for attr, table in (("concept", CONCEPT_WORDS), ("color", COLOR_WORDS), ("size", SIZE_WORDS)):
        for value, phrases in enumerate(table.values()):
            for phrase in phrases:
                key = tuple(_tokens(phrase))
                assert key not in vocab and not set(key) & (set(_ROW_KEYS) | set(_COL_KEYS) | _CENTER_KEYS), phrase
                vocab[key] = (attr, value)
    return vocab


def _parse_position(tokens: list[str]) -> int:
    rows = {_ROW_KEYS[t] for t in tokens if t in _ROW_KEYS}
    cols = {_COL_KEYS[t] for t in tokens if t in _COL_KEYS}
    if len(rows) > 1 or len(cols) > 1:
        return CONFLICT
    if not (rows or cols or _CENTER_KEYS.intersection(tokens)):
        return MISSING
    return 3 * (rows.pop() if rows else 1) + (cols.pop() if cols else 1)


def parse_caption(text: str) -> dict[str, int]:
    """Attribute indices a caption names (concept, color, size, position): MISSING (-1) where none,
    CONFLICT (-2) where several."""
    vocab = _vocabulary()
    longest = max(len(k) for k in vocab)
    tokens, found, i = _tokens(text), {"concept": set(), "color": set(), "size": set()}, 0
    while i < len(tokens):  # greedy longest match of vocabulary phrases
        for n in range(longest, 0, -1):
            hit = vocab.get(tuple(tokens[i:i + n]))
            if hit:
                found[hit[0]].add(hit[1])
                i += n
                break
        else:
            i += 1
    parsed = {a: (v.pop() if len(v) == 1 else (MISSING if not v else CONFLICT)) for a, v in found.items()}
    parsed["position"] = _parse_position(tokens)
    return parsed
