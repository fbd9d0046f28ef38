"""What both worlds' prompt generators share: colour, size and position words, frames, backgrounds,
templates, Zipf frequencies, and ``Phrasebook``, which phrases items and reads the text back.

A *phrasing* of an item is one choice per template slot (template, frame, background, noun, colour,
size, position; mixed radix ``Phrasebook.radix``); its words name exactly the item's attribute
values, so ``Phrasebook.parse`` recovers them.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from .canvas import POSITIONS

COLOR_WORDS = {  # world v1's (v2 drops the fruit words)
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


POSITION_PHRASES = {p: _position_phrases(p)[0] for p in POSITIONS}
POSITION_LABELS = {p: _position_phrases(p)[1] for p in POSITIONS}

FRAMES = ("", "an image of ", "a picture of ", "a photo of ", "a render of ", "a drawing of ",
          "a simple graphic of ", "a pixel-art image of ", "an icon of ")
BACKGROUNDS = ("", " on a dark background", " on black", " against a dark backdrop", " on a dark textured background")
# world v1's templates (v2 adds one); slots: F frame, B background, D article, S size, C colour, H noun,
# P position phrase, L position label
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

MISSING, CONFLICT = -1, -2
_ROW_KEYS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_COL_KEYS = {"left": 0, "right": 2}
_CENTER_KEYS = {"center", "centre", "middle", "centered"}


def zipf_frequencies(n: int, skew: float, seed: int, stream: int) -> np.ndarray:
    """Zipf probabilities (rank ** -skew) over a seeded permutation of ``n`` values."""
    order = np.random.default_rng([seed, stream]).permutation(n)
    rank = np.empty(n, dtype=np.float64)
    rank[order] = np.arange(1, n + 1)
    weights = rank ** -float(skew)
    return weights / weights.sum()


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _parse_position(tokens: list[str]) -> int:
    rows = {_ROW_KEYS[t] for t in tokens if t in _ROW_KEYS}
    cols = {_COL_KEYS[t] for t in tokens if t in _COL_KEYS}
    if len(rows) > 1 or len(cols) > 1:
        return CONFLICT
    if not (rows or cols or _CENTER_KEYS.intersection(tokens)):
        return MISSING
    return 3 * (rows.pop() if rows else 1) + (cols.pop() if cols else 1)


class Phrasebook:
    """One world's templates and synonyms: distinct phrasings of items, their texts, and parsing.

    ``templates`` use the slots of ``TEMPLATES``; ``words`` maps each of the first three attribute names to
    {value name: synonyms} in value order; ``attributes_of(items)`` gives the four attribute index
    arrays; a drawing round asks ``deficit + deficit // oversample[0] + oversample[1]`` phrasings.
    """

    def __init__(self, templates, words: dict, attributes_of, num_items: int, oversample: tuple[int, int]):
        self.templates, self.words, self.attributes_of = templates, words, attributes_of
        self.num_items, self.oversample = num_items, oversample
        self.uses = np.array([[f"{{{s}}}" in t for s in "FBPL"] for t in templates])  # (T, 4): F, B, P, L
        self.article_before = [t[t.index("{D}") + 5] if "{D}" in t else None for t in templates]  # slot after D
        self.synonyms = tuple(list(table.values()) for table in words.values()) + (
            [POSITION_PHRASES[p] for p in POSITIONS], [POSITION_LABELS[p] for p in POSITIONS])
        self.counts = [np.array([len(w) for w in words]) for words in self.synonyms]
        self.radix = (len(templates), len(FRAMES), len(BACKGROUNDS), 4, 4, 4, 16)  # one per slot choice
        assert all(c.max() <= r for c, r in zip(self.counts[:3] + [np.maximum(*self.counts[3:])], self.radix[3:]))

    def slot_sizes(self, items: np.ndarray, templates: np.ndarray) -> np.ndarray:
        """(n, 7) number of choices of each slot (1 where the template does not use it)."""
        noun, color, size, position = self.attributes_of(items)
        uses = self.uses[templates]
        pos = np.where(uses[:, 2], self.counts[3][position], self.counts[4][position])
        frame, bg = np.where(uses[:, 0], len(FRAMES), 1), np.where(uses[:, 1], len(BACKGROUNDS), 1)
        syn = [counts[values] for counts, values in zip(self.counts, (noun, color, size))]
        return np.stack([np.ones(len(items), dtype=np.int64), frame, bg, *syn, pos], axis=1)

    def capacity(self, items=None) -> np.ndarray:
        """Number of distinct texts each item can be phrased as."""
        items = np.arange(self.num_items) if items is None else np.asarray(items)
        return sum(self.slot_sizes(items, np.full(len(items), t)).prod(axis=1) for t in range(len(self.templates)))

    def draw(self, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Distinct (item, slot choices) draws, ``counts[i]`` of item i; repeats are drawn again."""
        n, (div, extra) = self.num_items, self.oversample
        items = np.empty(0, dtype=np.int64)
        choices = np.empty((0, len(self.radix)), dtype=np.int64)
        weights = np.cumprod((1,) + self.radix[::-1])[::-1]  # mixed radix of a phrasing key
        while (deficit := counts - np.bincount(items, minlength=n)).any():
            want = np.repeat(np.arange(n), np.where(deficit > 0, deficit + deficit // div + extra, 0))
            templates = rng.integers(0, len(self.templates), len(want))
            sizes = self.slot_sizes(want, templates)
            draw = np.floor(rng.random(sizes.shape) * sizes).astype(np.int64)
            draw[:, 0] = templates
            items, choices = np.concatenate([items, want]), np.concatenate([choices, draw])
            _, first = np.unique(items * weights[0] + choices @ weights[1:], return_index=True)
            keep = np.sort(first)  # first copy of every phrasing, in draw order
            items, choices = items[keep], choices[keep]
            order = np.argsort(items, kind="stable")
            rank = np.empty(len(items), dtype=np.int64)
            rank[order] = np.arange(len(items)) - np.repeat(np.searchsorted(items[order], np.arange(n)),
                                                            np.bincount(items, minlength=n))
            keep = rank < counts[items]  # drop surplus draws
            items, choices = items[keep], choices[keep]
        return items, choices

    def shuffled(self, counts: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``draw``'s phrasings in an order shuffled by the same ``rng``."""
        items, choices = self.draw(counts, rng)
        order = rng.permutation(len(items))
        return items[order], choices[order]

    def texts(self, items: np.ndarray, choices: np.ndarray):
        """The text of each (item, slot choices) row, one at a time."""
        noun_syn, color_syn, size_syn, phrase_syn, label_syn = self.synonyms
        attrs = np.stack(self.attributes_of(items), axis=1).tolist()
        for (noun, color, size, position), (template, frame, bg, h, c, s, p) in zip(attrs, choices.tolist()):
            words = {"F": FRAMES[frame], "B": BACKGROUNDS[bg], "H": noun_syn[noun][h], "C": color_syn[color][c],
                     "S": size_syn[size][s]}
            if self.uses[template, 2]:
                words["P"] = phrase_syn[position][p]
            else:
                words["L"] = label_syn[position][p]
            if self.article_before[template]:
                words["D"] = _article(words[self.article_before[template]])
            yield self.templates[template].format(**words)

    @functools.cached_property
    def vocabulary(self) -> dict[tuple[str, ...], tuple[str, int]]:
        """Token tuple of every noun / colour / size synonym -> (attribute, value index)."""
        vocab = {}
        for attr, table in self.words.items():
            for value, phrases in enumerate(table.values()):
                for phrase in phrases:
                    key = tuple(_tokens(phrase))
                    assert key not in vocab and not set(key) & (set(_ROW_KEYS) | set(_COL_KEYS) | _CENTER_KEYS), phrase
                    vocab[key] = (attr, value)
        return vocab

    def parse(self, text: str) -> dict[str, int]:
        """Attribute indices a text names: MISSING (-1) where none, CONFLICT (-2) where several."""
        vocab = self.vocabulary
        longest = max(len(k) for k in vocab)
        tokens, found, i = _tokens(text), {a: set() for a in self.words}, 0
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
