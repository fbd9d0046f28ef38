"""World v2: named concepts drawn as procedural glyphs, with colour, size and position.

Why concepts: in world v1 an unseen combination is only a new composition of known words, so it
cannot show where Random Conditioning's switched conditions should go. Here 64 *concepts*, real
English nouns in 8 families (fruit, tools, animals, vehicles, sky, buildings, insects, musical
instruments), let a regime split hold out whole families and concepts, as the RC paper held out
animal classes; a sentence encoder places their captions as it places real captions.

Each concept is a glyph: a short program of primitives (discs, ellipses, boxes, polygons,
polylines, rings, arcs; added or cut) in a unit frame, drawn in a family style. Difficulty is a
property of the family, crossed with the regimes (``splits``), never tied to one: five families
are easy (big filled primitives, thick bars), three are hard: buildings (fine pixel-scale
textures: siding stripes, brick checks, window grids), insects (1-px legs, antennae and wing
outlines, many small parts) and instruments (1-px strings and tubes, fine key stripes).
Textures and hairlines keep their pixel width at every size, so small hard glyphs stay hard.

An *item* is (concept, colour, size, position); ``item_index`` packs it into one int.
``render(items, seed)`` draws 32x32 RGB images on v1's dark, lightly textured background. Each
glyph's signed distance (in pixels, per concept and nominal size) is tabulated once on a 1/4-px
grid; an image samples it bilinearly under its own jitter (position, size, rotation), so
rendering is a few gathers per pixel, vectorised over all images at once. Image ``k`` depends
only on ``(seed, indices[k], items[k])`` (counter-based hash), so any slice renders alone to the
same bytes.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace

import numpy as np

from .canvas import GRID_CENTERS, ROTATION_JITTER, SIZE_JITTER  # noqa: F401 (part of this module's interface)
from .canvas import (
    COLORS, IMAGE_SIZE, POSITIONS, SIZES, composite, flat_items, in_chunks, jittered_pose, pack, paste, unpack,
    window_offsets,
)

# ---------------------------------------------------------------- glyph programs


@dataclass(frozen=True)
class _Part:
    """One primitive: ``width`` None fills it, else strokes its centre line (unit half-width, 0 =
    hairline; never under 0.5 px); ``outline`` keeps only its 1-px contour; ``cut`` subtracts it
    from what came before."""

    kind: str
    params: tuple
    width: float | None = None
    cut: bool = False
    outline: bool = False


# primitives in the glyph's unit frame ([-1, 1]^2, y up; angles in degrees counter-clockwise from +x)

def _rot(deg):
    return float(np.cos(np.deg2rad(deg))), float(np.sin(np.deg2rad(deg)))


def disc(cx, cy, r):
    return _Part("disc", (cx, cy, r))


def ell(cx, cy, a, b, deg=0.0):
    return _Part("ell", (cx, cy, a, b, *_rot(deg)))


def box(cx, cy, hx, hy, deg=0.0, round_=0.0):
    return _Part("box", (cx, cy, hx - round_, hy - round_, *_rot(deg), round_))


def poly(*pts):
    return _Part("poly", (np.array(pts, dtype=np.float64),))


def line(*pts, w=0.0):
    return _Part("line", (np.array(pts, dtype=np.float64),), width=w)


def ring(cx, cy, r, w=0.0):
    return _Part("ring", (cx, cy, r), width=w)


def arc(cx, cy, r, a0, a1, w=0.0):
    """Arc from angle a0 to a1 (degrees, counter-clockwise from +x)."""
    mid, half = (a0 + a1) / 2, np.deg2rad(abs(a1 - a0) / 2)
    return _Part("arc", (cx, cy, r, *_rot(90 - mid), float(np.sin(half)), float(np.cos(half))), width=w)


def cut(part):
    return replace(part, cut=True)


def outline(part):
    return replace(part, outline=True)


def _star(cx, cy, r_out, r_in, points=5, deg=90.0):
    ang = np.deg2rad(deg + np.arange(2 * points) * 180.0 / points)
    rad = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    return poly(*zip(cx + rad * np.cos(ang), cy + rad * np.sin(ang)))


def _spokes(cx, cy, r0, r1, n, w, deg=0.0):
    ang = np.deg2rad(deg + np.arange(n) * 360.0 / n)
    return tuple(line((cx + r0 * c, cy + r0 * s), (cx + r1 * c, cy + r1 * s), w=w)
                 for c, s in zip(np.cos(ang), np.sin(ang)))


def _mirror(part):
    """The part reflected in the vertical axis (x -> -x)."""
    if part.kind == "poly" or part.kind == "line":
        pts = part.params[0] * np.array([-1.0, 1.0])
        return replace(part, params=(pts[::-1].copy(),))
    if part.kind == "ell":
        cx, cy, a, b, c, s = part.params
        return replace(part, params=(-cx, cy, a, b, c, -s))
    if part.kind == "box":
        cx, cy, hx, hy, c, s, r = part.params
        return replace(part, params=(-cx, cy, hx, hy, c, -s, r))
    if part.kind == "arc":
        cx, cy, r, c, s, sa, ca = part.params
        return replace(part, params=(-cx, cy, r, c, -s, sa, ca))
    cx, *rest = part.params
    return replace(part, params=(-cx, *rest))


def _both(*parts):
    """Parts and their mirror images."""
    return parts + tuple(_mirror(p) for p in parts)


def _saw():
    teeth = 7
    xs = np.linspace(-0.95, 0.45, 2 * teeth + 1)
    ys = np.linspace(-0.08, -0.32, 2 * teeth + 1) - np.where(np.arange(2 * teeth + 1) % 2, 0.12, 0.0)
    return poly((0.45, 0.32), (-0.95, 0.22), *zip(xs, ys))


def _snake():
    t = np.linspace(-0.8, 0.62, 14)
    head = 0.42 * np.sin(2.1 * np.pi * 0.72)
    return (line(*zip(0.42 * np.sin(2.1 * np.pi * (t + 0.1)), t), w=0.13), ell(head, 0.72, 0.2, 0.15),
            cut(disc(head - 0.07, 0.76, 0.04)))


def _snowflake():
    parts = _spokes(0, 0, 0, 0.95, 6, 0.075, 90)
    for deg in range(90, 450, 60):
        c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
        for side in (-1, 1):
            tip = (0.8 * c - side * 0.25 * s, 0.8 * s + side * 0.25 * c)
            parts += (line((0.55 * c, 0.55 * s), tip, w=0.06),)
    return parts


def _spider():
    legs = ()
    for knee, foot in (((0.45, 0.55), (0.8, 0.85)), ((0.55, 0.3), (0.95, 0.35)),
                       ((0.55, -0.1), (0.95, -0.45)), ((0.4, -0.4), (0.65, -0.9))):
        legs += _both(line((0.08, 0.0), knee, foot))
    return (disc(0, -0.18, 0.27), disc(0, 0.2, 0.15)) + legs + _both(line((0.02, 0.3), (0.15, 0.45)))


def _caterpillar():
    parts = ()
    for i in range(7):
        x, y = -0.62 + 0.24 * i, -0.1 + 0.14 * np.sin(1.3 * i)
        parts += (disc(x, y, 0.13), line((x, y - 0.1), (x + 0.02, y - 0.3)))
    return parts + (disc(-0.78, 0.05, 0.19), line((-0.82, 0.2), (-0.92, 0.5)), line((-0.72, 0.22), (-0.62, 0.52)))


def _harp():
    strings = tuple(line((x, 0.62 + 0.1 * np.sin(3 * x)), (x, -0.9 + (x + 0.6) * 1.125))
                    for x in (-0.35, -0.05, 0.25, 0.5))
    frame = (line((-0.6, -0.9), (-0.6, 0.72), w=0.08), line((-0.6, -0.9), (0.62, 0.5), w=0.07),
             line((-0.6, 0.72), (-0.2, 0.52), (0.2, 0.72), (0.62, 0.5), w=0.06))
    return frame + strings


def _xylophone():
    bars = tuple(box(-0.72 + 0.29 * i, 0.12, 0.1, 0.72 - 0.1 * i) for i in range(6))
    return bars + (line((-0.95, -0.45), (0.95, -0.1)), line((-0.95, 0.6), (0.95, 0.55)),
                   line((0.25, -0.95), (0.7, -0.45)), disc(0.72, -0.43, 0.07))


def _accordion():
    zig = [(x, 0.42 + (0.08 if i % 2 else 0.0)) for i, x in enumerate(np.linspace(-0.5, 0.5, 9))]
    bellows = poly(*zig[::-1], *[(x, -y) for x, y in zig])
    folds = tuple(cut(line((x, -0.5), (x, 0.5))) for x in np.linspace(-0.375, 0.375, 7))
    ends = (box(-0.72, 0, 0.2, 0.62, round_=0.05), box(0.72, 0, 0.2, 0.62, round_=0.05))
    return (bellows,) + folds + ends + tuple(cut(disc(-0.72, y, 0.07)) for y in (0.3, 0.0, -0.3))


def _windmill():
    blades = ()
    for deg in (45, 135, 225, 315):
        c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
        blades += (box(0.58 * c, 0.3 + 0.58 * s, 0.45, 0.12, deg),)
    tower = poly((-0.38, -0.95), (0.38, -0.95), (0.2, 0.3), (-0.2, 0.3))
    return (tower, cut(box(0, -0.82, 0.1, 0.14))) + blades + (disc(0, 0.3, 0.13),)


def _glyph(*parts, texture=None):
    """A glyph: its parts, drawn in order, and an optional texture (kind in ``_TEXTURES``, period in px)."""
    flat = ()
    for part in parts:
        flat += part if isinstance(part, tuple) else (part,)
    return flat, texture


_GLYPHS = {
    # fruit: round filled bodies with small stems and leaves
    "apple": _glyph(disc(-0.27, -0.12, 0.6), disc(0.27, -0.12, 0.6), disc(0, -0.35, 0.55),
                    line((0, 0.35), (0.1, 0.85), w=0.07), ell(0.4, 0.72, 0.26, 0.11, 25)),
    "pear": _glyph(disc(0, -0.42, 0.52), disc(0, 0.2, 0.32),
                   poly((-0.3, 0.22), (0.3, 0.22), (0.5, -0.32), (-0.5, -0.32)),
                   line((0, 0.48), (0.08, 0.88), w=0.07), ell(0.3, 0.72, 0.22, 0.09, 30)),
    "cherry": _glyph(disc(-0.42, -0.52, 0.34), disc(0.42, -0.6, 0.34),
                     line((-0.42, -0.25), (-0.1, 0.3), (0.15, 0.75), w=0.06),
                     line((0.42, -0.3), (0.3, 0.3), (0.15, 0.75), w=0.06), ell(0.45, 0.78, 0.3, 0.12, -15)),
    "banana": _glyph(arc(0, 0.85, 1.18, 212, 328, w=0.22), line((0.96, 0.2), (0.98, 0.36), w=0.07),
                     disc(-0.99, 0.23, 0.08)),
    "grapes": _glyph(tuple(disc(x, y, 0.22) for x, y in ((-0.46, 0.3), (0, 0.3), (0.46, 0.3), (-0.23, -0.08),
                                                         (0.23, -0.08), (0, -0.46))),
                     line((0, 0.5), (0.05, 0.92), w=0.06), ell(-0.32, 0.72, 0.26, 0.1, 20)),
    "lemon": _glyph(ell(0, 0, 0.72, 0.5, 15), ell(0.78, 0.21, 0.16, 0.1, 15), ell(-0.78, -0.21, 0.16, 0.1, 15)),
    "strawberry": _glyph(poly((-0.72, 0.32), (0.72, 0.32), (0.12, -0.86), (-0.12, -0.86)),
                         disc(-0.38, 0.22, 0.38), disc(0.38, 0.22, 0.38),
                         tuple(cut(ell(x, y, 0.05, 0.08)) for x, y in ((-0.25, -0.05), (0.25, -0.05), (0, -0.4))),
                         cut(line((-0.8, 0.53), (0.8, 0.53))),
                         poly((-0.6, 0.56), (-0.38, 0.9), (-0.16, 0.62), (0, 0.98), (0.16, 0.62), (0.38, 0.9),
                              (0.6, 0.56))),
    "watermelon": _glyph(disc(0, 0.42, 0.98), cut(box(0, 1.0, 1.2, 0.58)), cut(arc(0, 0.42, 0.76, 185, 355)),
                         cut(ell(-0.38, 0.05, 0.06, 0.1, -20)), cut(ell(0, -0.12, 0.06, 0.1)),
                         cut(ell(0.38, 0.05, 0.06, 0.1, 20))),
    # tools: thick bars and plates
    "hammer": _glyph(line((0, -0.95), (0, 0.45), w=0.12), box(-0.25, 0.62, 0.45, 0.22),
                     poly((0.2, 0.84), (0.88, 0.72), (0.88, 0.58), (0.2, 0.4))),
    "key": _glyph(ring(-0.55, 0, 0.3, w=0.13), line((-0.25, 0), (0.95, 0), w=0.1), box(0.58, -0.2, 0.07, 0.17),
                  box(0.86, -0.22, 0.09, 0.2)),
    "scissors": _glyph(ring(-0.38, -0.62, 0.24, w=0.09), ring(0.38, -0.62, 0.24, w=0.09),
                       line((-0.25, -0.4), (0.48, 0.95), w=0.1), line((0.25, -0.4), (-0.48, 0.95), w=0.1)),
    "wrench": _glyph(line((-0.55, -0.55), (0.35, 0.35), w=0.13), disc(0.5, 0.5, 0.38),
                     cut(box(0.72, 0.72, 0.34, 0.13, 45)), ring(-0.66, -0.66, 0.2, w=0.1)),
    "saw": _glyph(_saw(), box(0.7, 0.05, 0.25, 0.4, round_=0.1), cut(box(0.7, 0.05, 0.1, 0.2))),
    "screwdriver": _glyph(box(-0.55, 0, 0.4, 0.22, round_=0.12), line((-0.15, 0), (0.82, 0), w=0.06),
                          box(0.87, 0, 0.07, 0.1)),
    "axe": _glyph(line((0.32, -0.95), (0.02, 0.92), w=0.09), poly((0.06, 0.78), (0.06, 0.5), (-0.5, 0.3), (-0.5, 0.98)),
                  ell(-0.55, 0.64, 0.2, 0.38), box(0.15, 0.64, 0.12, 0.14)),
    "shovel": _glyph(line((0, 0.75), (0, -0.15), w=0.08),
                     line((0, 0.72), (-0.25, 0.86), (0.25, 0.86), (0, 0.72), w=0.07),
                     poly((-0.38, -0.1), (0.38, -0.1), (0.38, -0.6), (0, -0.98), (-0.38, -0.6))),
    # animals: filled silhouettes, eyes cut out
    "cat": _glyph(disc(0, -0.1, 0.62), _both(poly((-0.6, 0.15), (-0.55, 0.88), (-0.12, 0.45)),
                                             cut(ell(-0.25, -0.02, 0.09, 0.13))),
                  cut(poly((-0.08, -0.28), (0.08, -0.28), (0, -0.38)))),
    "fish": _glyph(ell(-0.15, 0, 0.62, 0.4), poly((0.35, 0), (0.95, 0.45), (0.95, -0.45)),
                   poly((-0.35, 0.3), (0.05, 0.62), (0.12, 0.3)), cut(disc(-0.5, 0.1, 0.08)),
                   cut(arc(-0.32, 0, 0.36, -60, 60))),
    "bird": _glyph(ell(0.05, -0.1, 0.5, 0.34, -12), disc(-0.45, 0.3, 0.26),
                   poly((-0.66, 0.4), (-0.98, 0.3), (-0.66, 0.2)),
                   poly((0.42, -0.02), (0.98, 0.22), (0.95, -0.08), (0.48, -0.3)),
                   line((0, -0.42), (-0.05, -0.82), w=0.04), line((0.2, -0.42), (0.17, -0.82), w=0.04),
                   cut(disc(-0.5, 0.35, 0.06)),
                   cut(arc(0.08, 0.05, 0.3, 200, 320))),
    "snake": _glyph(_snake()),
    "turtle": _glyph(disc(0, -0.25, 0.72), cut(box(0, -0.95, 1.2, 0.55)), line((0.55, -0.32), (0.82, -0.12), w=0.1),
                     disc(0.86, -0.1, 0.16), box(-0.42, -0.48, 0.12, 0.12), box(0.4, -0.48, 0.12, 0.12),
                     poly((-0.7, -0.35), (-0.92, -0.45), (-0.7, -0.45)), cut(arc(0, -0.25, 0.42, 20, 160))),
    "rabbit": _glyph(disc(0.2, -0.5, 0.42), disc(-0.22, 0.0, 0.3), ell(-0.36, 0.6, 0.1, 0.35, 12),
                     ell(-0.08, 0.58, 0.1, 0.35, -14), disc(0.66, -0.36, 0.14), cut(disc(-0.3, 0.05, 0.06))),
    "elephant": _glyph(ell(0.22, -0.05, 0.62, 0.42), disc(-0.45, 0.2, 0.33),
                       line((-0.72, 0.12), (-0.86, -0.25), (-0.74, -0.62), w=0.1),
                       box(-0.12, -0.6, 0.12, 0.2), box(0.55, -0.6, 0.12, 0.2),
                       line((0.82, 0.05), (0.93, -0.3), w=0.03),
                       cut(outline(ell(-0.25, 0.2, 0.2, 0.3))), cut(disc(-0.55, 0.3, 0.05))),
    "mouse": _glyph(ell(0.12, -0.35, 0.58, 0.36), poly((-0.3, -0.05), (-0.92, -0.48), (-0.3, -0.7)),
                    cut(disc(-0.2, 0.18, 0.36)), disc(-0.2, 0.18, 0.28),
                    line((0.68, -0.45), (0.95, -0.2), (0.8, 0.15), (0.95, 0.45), w=0.045),
                    cut(disc(-0.55, -0.32, 0.05))),
    # vehicles: boxes and wheels, windows cut out
    "car": _glyph(box(0, -0.15, 0.92, 0.25, round_=0.1), poly((-0.5, 0.08), (-0.28, 0.5), (0.35, 0.5), (0.58, 0.08)),
                  cut(poly((-0.38, 0.15), (-0.22, 0.42), (-0.02, 0.42), (-0.02, 0.15))),
                  cut(poly((0.06, 0.15), (0.06, 0.42), (0.3, 0.42), (0.45, 0.15))),
                  _both(cut(disc(-0.52, -0.42, 0.3))), _both(disc(-0.52, -0.42, 0.22))),
    "truck": _glyph(box(-0.3, 0.08, 0.62, 0.5), box(0.66, -0.1, 0.28, 0.32, round_=0.05),
                    cut(box(0.74, 0.04, 0.12, 0.1)),
                    cut(line((0.33, -0.5), (0.33, 0.6))), tuple(cut(disc(x, -0.52, 0.26)) for x in (-0.6, -0.1, 0.66)),
                    tuple(disc(x, -0.52, 0.19) for x in (-0.6, -0.1, 0.66))),
    "bus": _glyph(box(0, 0.02, 0.96, 0.42, round_=0.1),
                  tuple(cut(box(x, 0.16, 0.14, 0.12)) for x in (-0.66, -0.28, 0.1, 0.48)),
                  cut(box(0.8, -0.05, 0.08, 0.25)), cut(disc(-0.55, -0.44, 0.25)), cut(disc(0.52, -0.44, 0.25)),
                  disc(-0.55, -0.44, 0.18), disc(0.52, -0.44, 0.18)),
    "bicycle": _glyph(ring(-0.55, -0.3, 0.36, w=0.07), ring(0.55, -0.3, 0.36, w=0.07),
                      line((-0.55, -0.3), (-0.1, -0.3), (0.32, 0.22), (-0.25, 0.22), (-0.55, -0.3), w=0.06),
                      line((-0.1, -0.3), (-0.28, 0.4), w=0.06), line((0.55, -0.3), (0.3, 0.3), (0.32, 0.46), w=0.06),
                      line((0.2, 0.48), (0.45, 0.48), w=0.06), line((-0.42, 0.42), (-0.14, 0.42), w=0.07)),
    "boat": _glyph(poly((-0.95, -0.25), (0.95, -0.25), (0.6, -0.65), (-0.6, -0.65)),
                   line((0, -0.25), (0, 0.95), w=0.05),
                   poly((0.1, -0.12), (0.1, 0.92), (0.75, -0.12)), poly((-0.1, -0.12), (-0.1, 0.72), (-0.55, -0.12))),
    "airplane": _glyph(ell(0, 0, 0.16, 0.95),
                       poly((-0.95, -0.05), (0, 0.42), (0.95, -0.05), (0.95, -0.24), (0, 0.12), (-0.95, -0.24)),
                       poly((-0.38, -0.82), (0, -0.58), (0.38, -0.82), (0.38, -0.95), (0, -0.8), (-0.38, -0.95))),
    "rocket": _glyph(ell(0, 0.08, 0.3, 0.78), _both(poly((-0.26, -0.3), (-0.62, -0.85), (-0.2, -0.62))),
                     box(0, -0.72, 0.14, 0.12), cut(ring(0, 0.22, 0.12)), cut(line((-0.3, -0.3), (0.3, -0.3)))),
    "helicopter": _glyph(ell(-0.25, -0.1, 0.48, 0.36), line((0.15, 0.0), (0.92, 0.12), w=0.07),
                         line((0.92, -0.12), (0.92, 0.36), w=0.05), line((-0.25, 0.26), (-0.25, 0.46), w=0.05),
                         line((-0.95, 0.48), (0.5, 0.48), w=0.05), line((-0.72, -0.66), (0.22, -0.66), w=0.05),
                         line((-0.5, -0.42), (-0.5, -0.66), w=0.04), line((0, -0.42), (0, -0.66), w=0.04),
                         cut(ell(-0.47, 0.0, 0.15, 0.13))),
    # sky: bold filled symbols
    "sun": _glyph(disc(0, 0, 0.45), _spokes(0, 0, 0.62, 0.95, 8, 0.08, 22.5)),
    "moon": _glyph(disc(0, 0, 0.88), cut(disc(0.42, 0.22, 0.74))),
    "star": _glyph(_star(0, -0.06, 1.0, 0.42)),
    "cloud": _glyph(disc(-0.45, -0.12, 0.35), disc(0.05, 0.15, 0.48), disc(0.5, -0.08, 0.38),
                    box(0, -0.3, 0.85, 0.2, round_=0.2)),
    "lightning": _glyph(poly((0.22, 0.97), (-0.52, -0.08), (-0.05, -0.08), (-0.32, -0.97), (0.55, 0.24), (0.08, 0.24),
                             (0.6, 0.97))),
    "raindrop": _glyph(disc(0, -0.3, 0.58), poly((-0.52, -0.05), (0, 0.95), (0.52, -0.05))),
    "snowflake": _glyph(_snowflake()),
    "rainbow": _glyph(tuple(arc(0, -0.55, r, 0, 180, w=0.1) for r in (0.95, 0.68, 0.41))),
    # buildings (hard): silhouettes under pixel-scale textures, small openings cut out
    "house": _glyph(box(0, -0.42, 0.62, 0.5), poly((-0.85, 0.08), (0, 0.82), (0.85, 0.08)), box(0.45, 0.5, 0.09, 0.22),
                    cut(box(0, -0.7, 0.14, 0.22)), _both(cut(box(-0.36, -0.3, 0.13, 0.11))), texture=("h", 3.0)),
    "skyscraper": _glyph(box(0, -0.12, 0.42, 0.85), box(0, 0.8, 0.26, 0.1), line((0, 0.9), (0, 1.04)),
                         texture=("grid", 3.0)),
    "castle": _glyph(box(0, -0.45, 0.62, 0.45), _both(box(-0.72, -0.25, 0.22, 0.65)),
                     tuple(box(x, 0.48, 0.07, 0.1) for x in (-0.86, -0.58, 0.58, 0.86)),
                     tuple(box(x, 0.06, 0.07, 0.08) for x in (-0.25, 0, 0.25)),
                     cut(box(0, -0.8, 0.2, 0.18)), cut(disc(0, -0.62, 0.2)), texture=("check", 4.0)),
    "windmill": _glyph(_windmill(), texture=("h", 3.0)),
    "tent": _glyph(poly((-0.95, -0.7), (0, 0.72), (0.95, -0.7)), cut(poly((-0.25, -0.72), (0, -0.12), (0.25, -0.72))),
                   line((0, 0.72), (0.08, 0.95)), texture=("v", 3.0)),
    "pyramid": _glyph(box(0, -0.7, 0.95, 0.2), box(0, -0.3, 0.72, 0.2), box(0, 0.1, 0.5, 0.2), box(0, 0.48, 0.26, 0.18),
                      texture=("check", 4.0)),
    "bridge": _glyph(box(0, 0.12, 0.98, 0.12), box(0, -0.4, 0.98, 0.42), cut(ell(0, -0.82, 0.58, 0.6)),
                     line((-0.98, 0.36), (0.98, 0.36)),
                     tuple(line((x, 0.24), (x, 0.36)) for x in np.linspace(-0.9, 0.9, 7)),
                     texture=("h", 3.0)),
    "igloo": _glyph(disc(0, -0.5, 0.88), cut(box(0, -1.05, 1.2, 0.55)), cut(disc(0.42, -0.5, 0.3)),
                    disc(0.42, -0.5, 0.22),
                    cut(disc(0.42, -0.5, 0.13)), texture=("check", 4.0)),
    # insects (hard): tiny bodies, 1-px legs, antennae and wing outlines
    "ant": _glyph(disc(-0.62, 0.1, 0.16), ell(-0.25, 0.02, 0.17, 0.11), ell(0.35, -0.02, 0.32, 0.22),
                  line((-0.3, 0), (-0.58, -0.35), (-0.72, -0.6)), line((-0.25, 0), (-0.3, -0.35), (-0.38, -0.62)),
                  line((-0.18, 0), (0.1, -0.35), (0.22, -0.62)), line((-0.7, 0.2), (-0.82, 0.52), (-0.96, 0.45)),
                  line((-0.64, 0.22), (-0.6, 0.55), (-0.7, 0.7))),
    "spider": _glyph(_spider()),
    "butterfly": _glyph(line((0, -0.55), (0, 0.45), w=0.06),
                        _both(outline(ell(-0.46, 0.32, 0.42, 0.3, -25)), outline(ell(-0.34, -0.34, 0.28, 0.22, 25)),
                              disc(-0.48, 0.34, 0.1), line((0, 0.45), (-0.22, 0.9)))),
    "bee": _glyph(ell(0.05, -0.15, 0.45, 0.3), tuple(cut(line((x, -0.55), (x, 0.2))) for x in (-0.12, 0.1, 0.3)),
                  disc(-0.5, -0.05, 0.17), outline(ell(0.0, 0.4, 0.2, 0.34, -15)),
                  outline(ell(0.32, 0.36, 0.16, 0.3, -35)),
                  poly((0.48, -0.1), (0.7, -0.2), (0.48, -0.28)), line((-0.56, 0.1), (-0.72, 0.42)),
                  line((-0.48, 0.1), (-0.42, 0.45))),
    "ladybug": _glyph(disc(0, -0.12, 0.62), cut(line((0, -0.8), (0, 0.5))),
                      _both(cut(disc(-0.3, 0.1, 0.11)), cut(disc(-0.32, -0.35, 0.11))), cut(disc(0, 0.6, 0.3)),
                      disc(0, 0.6, 0.2), _both(line((-0.6, 0.1), (-0.85, 0.25)), line((-0.62, -0.2), (-0.9, -0.22)),
                                               line((-0.5, -0.5), (-0.75, -0.72)), line((-0.1, 0.75), (-0.3, 0.95)))),
    "dragonfly": _glyph(line((0, 0.55), (0, -0.95), w=0.05), disc(0, 0.68, 0.12), ell(0, 0.4, 0.08, 0.14),
                        _both(outline(ell(-0.48, 0.5, 0.45, 0.1, -8)), outline(ell(-0.45, 0.22, 0.42, 0.09, 10)))),
    "caterpillar": _glyph(_caterpillar()),
    "grasshopper": _glyph(ell(0.02, -0.12, 0.6, 0.16, 6), ell(-0.66, -0.04, 0.17, 0.15),
                          line((0.1, -0.05), (0.55, 0.38), (0.95, -0.6), w=0.04),
                          line((-0.4, -0.2), (-0.5, -0.48), (-0.4, -0.68)),
                          line((-0.2, -0.22), (-0.15, -0.5), (-0.05, -0.68)),
                          line((-0.72, 0.08), (-0.35, 0.6), (0.15, 0.75)),
                          line((-0.66, 0.1), (-0.2, 0.45), (0.3, 0.55))),
    # musical instruments (hard): 1-px strings and tubes, fine key stripes
    "guitar": _glyph(disc(0, -0.5, 0.42), disc(0, -0.05, 0.31), cut(ring(0, -0.2, 0.12)),
                     cut(line((-0.2, -0.62), (0.2, -0.62))), line((0, 0.2), (0, 0.8), w=0.05), box(0, 0.88, 0.09, 0.11),
                     _both(line((-0.05, 0.85), (-0.15, 0.85)))),
    "piano": _glyph(box(0, -0.1, 0.95, 0.5),
                    tuple(cut(box(x, 0.12, 0.055, 0.28)) for x in (-0.72, -0.48, -0.05, 0.2, 0.44, 0.82)),
                    box(0, 0.52, 0.95, 0.08), texture=("v", 3.0)),
    "drum": _glyph(box(0, -0.3, 0.65, 0.42), ell(0, 0.12, 0.65, 0.18), cut(outline(ell(0, 0.12, 0.6, 0.14))),
                   cut(line(*((0.217 * k - 0.65, -0.6 * (k % 2)) for k in range(7)))),
                   _both(line((-0.1, 0.3), (-0.75, 0.95)), disc(-0.1, 0.3, 0.06))),
    "trumpet": _glyph(line((-0.95, 0.05), (0.35, 0.05)), line((-0.95, 0.05), (-0.95, 0.15), w=0.04),
                      poly((0.3, 0.11), (0.95, 0.42), (0.95, -0.32), (0.3, -0.01)),
                      line((-0.55, 0.05), (-0.55, -0.35), (0.15, -0.35), (0.15, 0.05)),
                      tuple(box(x, 0.22, 0.04, 0.14) for x in (-0.3, -0.12, 0.06))),
    "harp": _glyph(_harp()),
    "xylophone": _glyph(_xylophone()),
    "flute": _glyph(line((-0.92, -0.55), (0.92, 0.55), w=0.06),
                    tuple(cut(disc(x, 0.6 * x, 0.04)) for x in (-0.1, 0.1, 0.3, 0.5)),
                    box(-0.62, -0.37, 0.1, 0.07, 31), line((0.55, 0.33), (0.65, 0.15)),
                    line((-0.2, -0.12), (-0.1, -0.3))),
    "accordion": _glyph(_accordion()),
}

FAMILIES = {
    "fruit": ("apple", "pear", "cherry", "banana", "grapes", "lemon", "strawberry", "watermelon"),
    "tools": ("hammer", "key", "scissors", "wrench", "saw", "screwdriver", "axe", "shovel"),
    "animals": ("cat", "fish", "bird", "snake", "turtle", "rabbit", "elephant", "mouse"),
    "vehicles": ("car", "truck", "bus", "bicycle", "boat", "airplane", "rocket", "helicopter"),
    "sky": ("sun", "moon", "star", "cloud", "lightning", "raindrop", "snowflake", "rainbow"),
    "buildings": ("house", "skyscraper", "castle", "windmill", "tent", "pyramid", "bridge", "igloo"),
    "insects": ("ant", "spider", "butterfly", "bee", "ladybug", "dragonfly", "caterpillar", "grasshopper"),
    "instruments": ("guitar", "piano", "drum", "trumpet", "harp", "xylophone", "flute", "accordion"),
}
FAMILY_NAMES = tuple(FAMILIES)
HARD_FAMILIES = ("buildings", "insects", "instruments")
FAMILY_STYLE = {
    "fruit": "round filled bodies, small stems and leaves",
    "tools": "thick bars and plates",
    "animals": "filled silhouettes, eyes cut out",
    "vehicles": "filled boxes and wheels, windows cut out",
    "sky": "bold filled symbols",
    "buildings": "silhouettes under pixel-scale stripes, checks or window grids",
    "insects": "tiny bodies with 1-px legs, antennae and wing outlines",
    "instruments": "1-px strings and tubes, fine key stripes",
}
CONCEPTS = tuple(c for members in FAMILIES.values() for c in members)  # family-major
NUM_CONCEPTS = len(CONCEPTS)
FAMILY_OF = np.repeat(np.arange(len(FAMILIES)), [len(m) for m in FAMILIES.values()])
EASY, HARD = 0, 1
DIFFICULTY_NAMES = ("easy", "hard")
FAMILY_DIFFICULTY = np.array([HARD if f in HARD_FAMILIES else EASY for f in FAMILY_NAMES], dtype=np.int8)
DIFFICULTY = FAMILY_DIFFICULTY[FAMILY_OF]  # per concept
assert set(_GLYPHS) == set(CONCEPTS) and len(set(CONCEPTS)) == NUM_CONCEPTS
assert set(HARD_FAMILIES) <= set(FAMILIES) and set(FAMILY_STYLE) == set(FAMILIES)

# ---------------------------------------------------------------- attributes and items

ATTRIBUTES = ("concept", "color", "size", "position")
ATTRIBUTE_VALUES = {"concept": CONCEPTS, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS}
NUM_VALUES = tuple(len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES)
NUM_ITEMS = int(np.prod(NUM_VALUES))
ITEMS_PER_CONCEPT = NUM_ITEMS // NUM_CONCEPTS


def item_index(concept, color, size, position):
    """Pack attribute indices (ints or int arrays) into item indices."""
    return pack(NUM_VALUES, concept, color, size, position)


def item_attributes(item):
    """Inverse of ``item_index``: (concept, color, size, position) index arrays."""
    return unpack(item, NUM_VALUES)


def item_name(item: int) -> str:
    """Canonical description, e.g. 'small red apple, top-left'."""
    concept, color, size, position = (int(v) for v in item_attributes(int(item)))
    return f"{SIZES[size]} {tuple(COLORS)[color]} {CONCEPTS[concept]}, {POSITIONS[position]}"


# ---------------------------------------------------------------- distances (unit frame, y up)

def _d_disc(x, y, cx, cy, r):
    dx, dy = x - cx, y - cy
    return np.sqrt(dx * dx + dy * dy) - r


def _d_ell(x, y, cx, cy, a, b, c, s):  # first-order distance estimate |q| - 1 over |grad q|
    dx, dy = x - cx, y - cy
    lx, ly = (dx * c + dy * s) / a, (dy * c - dx * s) / b
    q = np.sqrt(lx * lx + ly * ly)
    grad = np.sqrt((lx / a) ** 2 + (ly / b) ** 2) / np.maximum(q, 1e-9)
    return (q - 1) / np.clip(grad, 1 / max(a, b), 1 / min(a, b))


def _d_box(x, y, cx, cy, hx, hy, c, s, r):
    dx, dy = x - cx, y - cy
    qx, qy = np.abs(dx * c + dy * s) - hx, np.abs(dy * c - dx * s) - hy
    out = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return out + np.minimum(np.maximum(qx, qy), 0) - r


def _d_poly(x, y, v):  # exact signed distance to a simple polygon
    d = (x - v[0, 0]) ** 2 + (y - v[0, 1]) ** 2
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(len(v)):
        (ax, ay), (bx, by) = v[i], v[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        d = np.minimum(d, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        if ay != by:  # even-odd rule: count edges crossed by a ray to the right
            inside ^= ((y >= ay) != (y >= by)) & (x < ax + (y - ay) * ex / ey)
    return np.sqrt(d) * np.where(inside, -1.0, 1.0)


def _d_line(x, y, v):  # unsigned distance to a polyline
    d = None
    for (ax, ay), (bx, by) in itertools.pairwise(v):
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        e = (wx - ex * t) ** 2 + (wy - ey * t) ** 2
        d = e if d is None else np.minimum(d, e)
    return np.sqrt(d)


def _d_ring(x, y, cx, cy, r):
    return np.abs(_d_disc(x, y, cx, cy, r))


def _d_arc(x, y, cx, cy, r, c, s, sa, ca):  # arc symmetric about the rotated +y axis, half-aperture (sa, ca)
    dx, dy = x - cx, y - cy
    px, py = np.abs(dx * c - dy * s), dx * s + dy * c
    end = np.sqrt((px - sa * r) ** 2 + (py - ca * r) ** 2)
    return np.where(ca * px > sa * py, end, np.abs(np.sqrt(px * px + py * py) - r))


_DIST = {"disc": _d_disc, "ell": _d_ell, "box": _d_box, "poly": _d_poly, "line": _d_line, "ring": _d_ring,
         "arc": _d_arc}


def _glyph_sdf(parts, x, y, scale):
    """Signed distance in pixels (negative inside) of a glyph program at ``scale`` px per unit."""
    acc = None
    for part in parts:
        sd = _DIST[part.kind](x, y, *part.params) * scale
        if part.width is not None:
            sd = sd - np.maximum(part.width * scale, 0.5)
        if part.outline:
            sd = np.abs(sd) - 0.5
        acc = sd if acc is None else (np.maximum(acc, -sd) if part.cut else np.minimum(acc, sd))
    return acc


# ---------------------------------------------------------------- rendering

SIZE_SCALES = (5.0, 6.5, 8.0)  # px per glyph unit: the glyph frame [-1, 1]^2 spans 10, 13, 16 px
TEXTURE_OFF = 0.35  # coverage of a texture's off bands
_TEXTURES = ("h", "v", "check", "grid")  # horizontal / vertical stripes, checks, window grid
_TABLE_STEP = 0.25  # px between distance-table samples
_TABLE_HALF = 12.5  # px: the table spans [-12.5, 12.5]^2 around the glyph centre
_TABLE_SIDE = round(2 * _TABLE_HALF / _TABLE_STEP) + 1
_WINDOW = 24  # side of the square window around the glyph that is drawn
_PAD = 6
_TEXTURE_KIND = np.array([_TEXTURES.index(_GLYPHS[c][1][0]) + 1 if _GLYPHS[c][1] else 0 for c in CONCEPTS])
_TEXTURE_PERIOD = np.array([_GLYPHS[c][1][1] if _GLYPHS[c][1] else 1.0 for c in CONCEPTS], dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _distance_table() -> np.ndarray:
    """float32 (concepts * sizes * side * side,): each glyph's signed distance in px at each nominal size."""
    g = (np.arange(_TABLE_SIDE) - (_TABLE_SIDE - 1) / 2) * _TABLE_STEP
    scale = np.asarray(SIZE_SCALES)[:, None, None]
    x, y = g[None, None, :] / scale, -g[None, :, None] / scale  # row 0 is the top
    shape = (len(SIZES), _TABLE_SIDE, _TABLE_SIDE)
    x, y = np.broadcast_to(x, shape), np.broadcast_to(y, shape)
    table = np.stack([_glyph_sdf(_GLYPHS[c][0], x, y, scale) for c in CONCEPTS])
    return table.astype(np.float32).reshape(-1)


def _bands(t: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Anti-aliased stripes along t (px): on for half of each period."""
    f = t / period + phase
    return np.clip(0.5 - (np.abs(f - np.floor(f) - 0.5) - 0.25) * period, 0, 1)


def _coverage(items, u):
    """Anti-aliased glyph coverage (N, 32, 32) in [0, 1] and the glyph centres."""
    concept, _, size, position = item_attributes(items)
    m = _TABLE_SIDE
    cx, cy, stretch, angle = jittered_pose(position, u)
    ox, oy, dx, dy = window_offsets(cx, cy, _WINDOW)
    inv = (1 / stretch)[:, None]
    cos, sin = np.cos(angle)[:, None] * inv, np.sin(angle)[:, None] * inv
    gx = (dx * cos)[:, None, :] + (dy * sin)[:, :, None]  # glyph frame (nominal px), x right, y down
    gy = (dy * cos)[:, :, None] - (dx * sin)[:, None, :]
    fx = np.clip(gx / _TABLE_STEP + (m - 1) / 2, 0, m - 1.001)
    fy = np.clip(gy / _TABLE_STEP + (m - 1) / 2, 0, m - 1.001)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    fx -= ix
    fy -= iy
    flat = iy * m + ix + ((concept * len(SIZES) + size) * m * m)[:, None, None]
    table = _distance_table()
    top = table[flat] * (1 - fx) + table[flat + 1] * fx
    bottom = table[flat + m] * (1 - fx) + table[flat + m + 1] * fx
    sd = (top * (1 - fy) + bottom * fy) * stretch[:, None, None]
    window = np.clip(0.5 - sd, 0, 1)

    kind = _TEXTURE_KIND[concept]
    for k in range(1, len(_TEXTURES) + 1):  # textures live in the glyph frame, with a random phase
        sel = np.flatnonzero(kind == k)
        if not len(sel):
            continue
        period = _TEXTURE_PERIOD[concept[sel], None, None]
        across = _bands(gy[sel], period, u[sel, 4, None, None]) if k != 2 else None  # horizontal stripes
        along = _bands(gx[sel], period, u[sel, 5, None, None]) if k != 1 else None  # vertical stripes
        if k == 3:  # checks
            pattern = across * along + (1 - across) * (1 - along)
        elif k == 4:  # walls of a window grid
            pattern = 1 - (1 - across) * (1 - along)
        else:
            pattern = across if k == 1 else along
        window[sel] *= TEXTURE_OFF + (1 - TEXTURE_OFF) * pattern

    return paste(window, ox, oy, _PAD), cx, cy


def _checked(items, indices):
    """``flat_items`` of valid items (a ValueError names one outside the grid)."""
    items, indices = flat_items(items, indices)
    item_attributes(items)
    return items, indices


def glyph_masks(items, seed: int, indices=None) -> np.ndarray:
    """float32 (N, 32, 32) glyph coverage in [0, 1] of the images ``render`` draws (same jitter)."""
    return in_chunks(lambda part, u, *_: _coverage(part, u)[0], *_checked(items, indices), seed,
                     image_shape=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


def render(items, seed: int, indices=None) -> np.ndarray:
    """Render items to uint8 (N, 32, 32, 3); image k is a function of (seed, indices[k], items[k]).

    ``indices`` defaults to ``arange(N)``; pass the global indices to render a slice of a batch.
    """
    return in_chunks(_render_chunk, *_checked(items, indices), seed)


def _render_chunk(items: np.ndarray, u: np.ndarray, seed: int, indices: np.ndarray) -> np.ndarray:
    cover, cx, cy = _coverage(items, u)
    _, color, size, _ = item_attributes(items)
    return composite(cover, color, np.asarray(SIZE_SCALES, dtype=np.float32)[size], cx, cy, u[:, 6:16], seed, indices)
