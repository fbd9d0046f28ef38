"""The embedded world's renderer: one anti-aliased object on a dark, lightly textured background.

A *combination* (combo) is (shape, colour, size, position); ``combo_index`` packs it into one int.
``render(combos, seed)`` draws 32x32 RGB images, vectorised in numpy. Image ``k`` depends only on
``(seed, indices[k], combos[k])`` (randomness from a counter-based hash, no sequential RNG), so any
slice of a batch renders to the same bytes on its own. Jitter (position, size, rotation, colour,
shading, texture) is small enough that every attribute stays unambiguous.
"""

from __future__ import annotations

import numpy as np

from .canvas import GRID_CENTERS, IMAGE_SIZE  # noqa: F401 (part of this module's interface)
from .canvas import (
    COLORS, POSITIONS, SIZES, composite, flat_items, in_chunks, jittered_pose, pack, paste, unpack, window_offsets,
)

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
ATTRIBUTES = ("shape", "color", "size", "position")
ATTRIBUTE_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS}
NUM_VALUES = tuple(len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES)
NUM_COMBOS = int(np.prod(NUM_VALUES))

SIZE_RADII = (4.0, 5.25, 6.5)  # nominal object radius in pixels
_WINDOW = 16  # side of the square window around the object where its SDF is evaluated
_PAD = 2


def combo_index(shape, color, size, position):
    """Pack attribute indices (ints or int arrays) into combination indices."""
    return pack(NUM_VALUES, shape, color, size, position)


def combo_attributes(combo):
    """Inverse of ``combo_index``: (shape, color, size, position) index arrays."""
    return unpack(combo, NUM_VALUES, "combination")


def combo_name(combo: int) -> str:
    """Canonical description, e.g. 'small red circle, top-left'."""
    shape, color, size, position = (int(v) for v in combo_attributes(int(combo)))
    return f"{SIZES[size]} {tuple(COLORS)[color]} {SHAPES[shape]}, {POSITIONS[position]}"


def to_tensor_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> float32 (N, 3, 32, 32) in [-1, 1]."""
    x = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x / 127.5 - 1.0)


def from_tensor_range(x: np.ndarray) -> np.ndarray:
    """float (N, 3, 32, 32) in [-1, 1] -> uint8 (N, 32, 32, 3) (clipped)."""
    x = (np.asarray(x, dtype=np.float32) + 1.0) * 127.5
    return np.clip(x + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


# ---------------------------------------------------------------- signed distances (unit radius)

def _length(x, y):
    return np.sqrt(x * x + y * y)


def _box(x, y, hx, hy):
    qx, qy = np.abs(x) - hx, np.abs(y) - hy
    return _length(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _sd_circle(x, y):
    return _length(x, y) - 0.95


def _sd_square(x, y):
    return _box(x, y, 0.76, 0.76)


def _sd_triangle(x, y):  # equilateral, apex up, bounding box centred
    half_side, k = 1.04, np.sqrt(3.0)
    px = np.abs(x) - half_side
    py = y + 0.3 + half_side / k
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * half_side, 0)
    return -_length(px, py) * np.sign(py)


def _sd_diamond(x, y):  # rhombus, half diagonals 0.8 (x) and 1.0 (y)
    bx, by = 0.8, 1.0
    px, py = np.abs(x), np.abs(y)
    h = np.clip(((bx - 2 * px) * bx - (by - 2 * py) * by) / (bx * bx + by * by), -1, 1)
    d = _length(px - 0.5 * bx * (1 - h), py - 0.5 * by * (1 + h))
    return d * np.sign(px * by + py * bx - bx * by)


def _sd_star(x, y):  # five points, apex up
    r, rf = 1.05, 0.45
    k1x, k1y = 0.809016994375, -0.587785252292
    px, py = np.abs(x), y
    dot = np.maximum(k1x * px + k1y * py, 0)
    px, py = px - 2 * dot * k1x, py - 2 * dot * k1y
    dot = np.maximum(-k1x * px + k1y * py, 0)
    px, py = px + 2 * dot * k1x, py - 2 * dot * k1y
    px, py = np.abs(px), py - r
    bax, bay = -rf * k1y * r, rf * k1x * r - r
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0, 1)
    return _length(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


def _sd_cross(x, y):
    return np.minimum(_box(x, y, 0.98, 0.33), _box(x, y, 0.33, 0.98))


def _sd_ring(x, y):
    return np.abs(_length(x, y) - 0.7) - 0.28


def _sd_hexagon(x, y):  # flat top and bottom, circumradius 1
    kx, ky, kz, r = -0.866025404, 0.5, 0.577350269, 0.866025404
    px, py = np.abs(x), np.abs(y)
    dot = np.minimum(kx * px + ky * py, 0)
    px, py = px - 2 * dot * kx, py - 2 * dot * ky
    px, py = px - np.clip(px, -kz * r, kz * r), py - r
    return _length(px, py) * np.sign(py)


_SDF = {
    "circle": _sd_circle, "square": _sd_square, "triangle": _sd_triangle, "diamond": _sd_diamond,
    "star": _sd_star, "cross": _sd_cross, "ring": _sd_ring, "hexagon": _sd_hexagon,
}
assert tuple(_SDF) == SHAPES


# ---------------------------------------------------------------- rendering

def _coverage(shape_ids, cx, cy, radius, angle):
    """Anti-aliased coverage (N, 32, 32) in [0, 1] from the shapes' signed distances."""
    ox, oy, dx, dy = window_offsets(cx, cy, _WINDOW)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    inv = (1.0 / radius).astype(np.float32)
    window = np.empty((len(shape_ids), _WINDOW, _WINDOW), dtype=np.float32)
    for shape_id, name in enumerate(SHAPES):
        sel = np.flatnonzero(shape_ids == shape_id)
        if not len(sel):
            continue
        c, s, k = cos[sel, None, None], sin[sel, None, None], inv[sel, None, None]
        ddx, ddy = dx[sel, None, :], dy[sel, :, None]
        ux = (ddx * c + ddy * s) * k
        uy = (ddx * s - ddy * c) * k  # y up
        sdf_px = _SDF[name](ux, uy) / k
        window[sel] = np.clip(0.5 - sdf_px, 0, 1)
    return paste(window, ox, oy, _PAD)


def render(combos, seed: int, indices=None) -> np.ndarray:
    """Render combinations to uint8 (N, 32, 32, 3); image k is a function of (seed, indices[k]).

    ``indices`` defaults to ``arange(N)``; pass the global indices to render a slice of a batch.
    """
    return in_chunks(_render_chunk, *flat_items(combos, indices), seed)


def _render_chunk(combos: np.ndarray, u: np.ndarray, seed: int, indices: np.ndarray) -> np.ndarray:
    shape, color, size, position = combo_attributes(combos)
    cx, cy, stretch, angle = jittered_pose(position, u)
    radius = np.asarray(SIZE_RADII, dtype=np.float32)[size] * stretch
    return composite(_coverage(shape, cx, cy, radius, angle), color, radius, cx, cy, u[:, 4:14], seed, indices)
