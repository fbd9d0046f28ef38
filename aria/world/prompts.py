"""The world's prompt pool: paraphrases of every combination with a long-tailed frequency.

Each prompt is drawn from a template (varied word order and style) with synonyms for shape,
colour, size and position; a prompt's words name exactly its own attribute values, so
``parse_prompt`` reads them back. Combinations get prompt counts from a Zipf law (exponent
``skew``) over a seeded permutation, at least ``MIN_PROMPTS_PER_COMBO`` each, capped at half the
distinct phrasings of the combination (the excess flows to the next ones).
"""

from __future__ import annotations

import functools
import re

import numpy as np

from aria.errors import UserError
from aria.world import shapes

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
COLOR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "golden", "lemon-yellow"),
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
assert tuple(SHAPE_WORDS) == shapes.SHAPES and tuple(COLOR_WORDS) == tuple(shapes.COLORS)
assert tuple(SIZE_WORDS) == shapes.SIZES

_ROW_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_CORNER_PHRASES = ("in the {r} {c} corner", "at the {r} {c}", "in the {r}-{c} area", "near the {r} {c} corner")
_EDGE_PHRASES = ("at the {r} center", "in the {r} middle", "along the {r} edge")  # + "at the top" etc.
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


POSITION_PHRASES = {p: _position_phrases(p)[0] for p in shapes.POSITIONS}
POSITION_LABELS = {p: _position_phrases(p)[1] for p in shapes.POSITIONS}

FRAMES = ("", "an image of ", "a picture of ", "a photo of ", "a render of ", "a drawing of ",
          "a simple graphic of ", "a pixel-art image of ", "an icon of ")
BACKGROUNDS = ("", " on a dark background", " on black", " against a dark backdrop", " on a dark textured background")
# slots: F frame, B background, D article, S size, C colour, H shape, P position phrase, L position label
TEMPLATES = (
    "{F}{D} {S} {C} {H} {P}{B}",
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

_SYN_COUNTS = [np.array([len(words[v]) for v in values]) for words, values in (
    (SHAPE_WORDS, shapes.SHAPES), (COLOR_WORDS, tuple(shapes.COLORS)), (SIZE_WORDS, shapes.SIZES))]
_PHRASE_COUNTS = np.array([len(POSITION_PHRASES[p]) for p in shapes.POSITIONS])
_LABEL_COUNTS = np.array([len(POSITION_LABELS[p]) for p in shapes.POSITIONS])
_RADIX = (len(TEMPLATES), len(FRAMES), len(BACKGROUNDS), 4, 4, 4, 16)  # template frame bg shape colour size position


def _slot_sizes(combos: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """(n, 7) number of choices of each slot (1 where the template does not use it)."""
    shape, color, size, position = shapes.combo_attributes(combos)
    uses = _USES[templates]
    n = len(combos)
    pos = np.where(uses[:, 2], _PHRASE_COUNTS[position], _LABEL_COUNTS[position])
    frame, bg = np.where(uses[:, 0], len(FRAMES), 1), np.where(uses[:, 1], len(BACKGROUNDS), 1)
    syn = [counts[values] for counts, values in zip(_SYN_COUNTS, (shape, color, size))]
    return np.stack([np.ones(n, dtype=np.int64), frame, bg, *syn, pos], axis=1)


def phrasing_capacity(combos=None) -> np.ndarray:
    """Number of distinct prompts each combination can be phrased as."""
    combos = np.arange(shapes.NUM_COMBOS) if combos is None else np.asarray(combos)
    total = np.zeros(len(combos), dtype=np.int64)
    for t in range(len(TEMPLATES)):
        total += _slot_sizes(combos, np.full(len(combos), t)).prod(axis=1)
    return total


def combo_frequencies(skew: float, seed: int) -> np.ndarray:
    """Zipf probabilities (rank ** -skew) over a seeded permutation of the combinations."""
    order = np.random.default_rng([seed, _FREQ_STREAM]).permutation(shapes.NUM_COMBOS)
    rank = np.empty(shapes.NUM_COMBOS, dtype=np.float64)
    rank[order] = np.arange(1, shapes.NUM_COMBOS + 1)
    weights = rank ** -float(skew)
    return weights / weights.sum()


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


def _draw_phrasings(counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (combo, slot choices) draws, ``counts[c]`` for combination c; rejection of repeats."""
    combos = np.empty(0, dtype=np.int64)
    keys = np.empty(0, dtype=np.int64)
    choices = np.empty((0, len(_RADIX)), dtype=np.int64)
    weights = np.cumprod((1,) + _RADIX[::-1])[::-1]  # mixed radix of a phrasing key
    while True:
        have = np.bincount(combos, minlength=shapes.NUM_COMBOS)
        deficit = counts - have
        if not deficit.any():
            return combos, choices
        want = np.repeat(np.arange(shapes.NUM_COMBOS), np.where(deficit > 0, deficit + deficit // 4 + 2, 0))
        templates = rng.integers(0, len(TEMPLATES), len(want))
        sizes = _slot_sizes(want, templates)
        draw = np.floor(rng.random(sizes.shape) * sizes).astype(np.int64)
        draw[:, 0] = templates
        combos = np.concatenate([combos, want])
        choices = np.concatenate([choices, draw])
        keys = np.concatenate([keys, want * weights[0] + draw @ weights[1:]])
        _, first = np.unique(keys, return_index=True)
        keep = np.sort(first)
        combos, choices, keys = combos[keep], choices[keep], keys[keep]
        order = np.argsort(combos, kind="stable")
        rank = np.empty(len(combos), dtype=np.int64)
        starts = np.searchsorted(combos[order], np.arange(shapes.NUM_COMBOS))
        rank[order] = np.arange(len(combos)) - np.repeat(starts, np.bincount(combos, minlength=shapes.NUM_COMBOS))
        keep = rank < counts[combos]
        combos, choices, keys = combos[keep], choices[keep], keys[keep]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_SYNONYMS = (
    [SHAPE_WORDS[n] for n in shapes.SHAPES], [COLOR_WORDS[n] for n in shapes.COLORS],
    [SIZE_WORDS[n] for n in shapes.SIZES],
    [POSITION_PHRASES[n] for n in shapes.POSITIONS], [POSITION_LABELS[n] for n in shapes.POSITIONS],
)
_ARTICLE_BEFORE = [t[t.index("{D}") + 5] if "{D}" in t else None for t in TEMPLATES]  # slot after the article


def _phrases(combos: np.ndarray, choices: np.ndarray):
    """Prompt strings for (combo, slot choices) rows, one at a time."""
    shape_syn, color_syn, size_syn, phrase_syn, label_syn = _SYNONYMS
    attrs = np.stack(shapes.combo_attributes(combos), axis=1).tolist()
    for (shape, color, size, position), (template, frame, bg, h, c, s, p) in zip(attrs, choices.tolist()):
        words = {"F": FRAMES[frame], "B": BACKGROUNDS[bg], "H": shape_syn[shape][h], "C": color_syn[color][c],
                 "S": size_syn[size][s]}
        if _USES[template, 2]:
            words["P"] = phrase_syn[position][p]
        else:
            words["L"] = label_syn[position][p]
        if _ARTICLE_BEFORE[template]:
            words["D"] = _article(words[_ARTICLE_BEFORE[template]])
        yield TEMPLATES[template].format(**words)


def generate(num_prompts: int, skew: float, seed: int):
    """(combo int32 array, iterator of prompt strings) in a seeded shuffled order."""
    counts = prompt_counts(num_prompts, skew, seed)
    rng = np.random.default_rng([seed, _PHRASE_STREAM])
    combos, choices = _draw_phrasings(counts, rng)
    order = rng.permutation(len(combos))
    combos, choices = combos[order], choices[order]
    return combos.astype(np.int32), _phrases(combos, choices)


def combo_members(pool) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping of prompt ids by combination: ids of combo c are members[offsets[c]:offsets[c+1]]."""
    combos = np.asarray(pool.meta("combo"), dtype=np.int64)
    members = np.argsort(combos, kind="stable")
    offsets = np.zeros(shapes.NUM_COMBOS + 1, dtype=np.int64)
    np.cumsum(np.bincount(combos, minlength=shapes.NUM_COMBOS), out=offsets[1:])
    return offsets, members


# ---------------------------------------------------------------- reading prompts back

@functools.lru_cache(maxsize=1)
def _vocabulary() -> dict[tuple[str, ...], tuple[str, int]]:
    """Token tuple of every shape / colour / size synonym -> (attribute, value index)."""
    vocab = {}
    for attr, table, values in (("shape", SHAPE_WORDS, shapes.SHAPES), ("color", COLOR_WORDS, tuple(shapes.COLORS)),
                                ("size", SIZE_WORDS, shapes.SIZES)):
        for value, name in enumerate(values):
            for phrase in table[name]:
                vocab[tuple(_tokens(phrase))] = (attr, value)
    return vocab


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


_ROW_KEYS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_COL_KEYS = {"left": 0, "right": 2}
_CENTER_KEYS = {"center", "centre", "middle", "centered"}
MISSING, CONFLICT = -1, -2


def _parse_position(tokens: list[str]) -> int:
    rows = {_ROW_KEYS[t] for t in tokens if t in _ROW_KEYS}
    cols = {_COL_KEYS[t] for t in tokens if t in _COL_KEYS}
    if len(rows) > 1 or len(cols) > 1:
        return CONFLICT
    if not (rows or cols or _CENTER_KEYS.intersection(tokens)):
        return MISSING
    return 3 * (rows.pop() if rows else 1) + (cols.pop() if cols else 1)


def parse_prompt(text: str) -> dict[str, int]:
    """Attribute indices a prompt names: MISSING (-1) where none, CONFLICT (-2) where several."""
    vocab = _vocabulary()
    longest = max(len(k) for k in vocab)
    tokens, found, i = _tokens(text), {a: set() for a in shapes.ATTRIBUTES[:3]}, 0
    while i < len(tokens):  # greedy longest match of synonym phrases
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
