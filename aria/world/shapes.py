"""The embedded world's renderer: one anti-aliased object on a dark, lightly textured background.

A *combination* (combo) is (shape, colour, size, position); ``combo_index`` packs it into one int.
``render(combos, seed)`` draws 32x32 RGB images, vectorised in numpy. Image ``k`` depends only on
``(seed, indices[k], combos[k])`` (randomness from a counter-based hash, no sequential RNG), so any
slice of a batch renders to the same bytes on its own. Jitter (position, size, rotation, colour,
shading, texture) is small enough that every attribute stays unambiguous.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
COLORS = {
    "red": (222, 44, 44),
    "orange": (245, 138, 28),
    "yellow": (238, 218, 48),
    "green": (48, 184, 68),
    "cyan": (40, 204, 214),
    "blue": (46, 86, 236),
    "purple": (146, 70, 216),
    "magenta": (234, 64, 176),
}
SIZES = ("small", "medium", "large")
POSITIONS = (
    "top-left", "top-center", "top-right",
    "middle-left", "center", "middle-right",
    "bottom-left", "bottom-center", "bottom-right",
)  # row-major 3x3 grid
ATTRIBUTES = ("shape", "color", "size", "position")
ATTRIBUTE_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS}
NUM_VALUES = tuple(len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES)
NUM_COMBOS = int(np.prod(NUM_VALUES))

IMAGE_SIZE = 32
SIZE_RADII = (4.0, 5.25, 6.5)  # nominal object radius in pixels
GRID_CENTERS = (8.0, 16.0, 24.0)  # pixel coordinate of grid column / row centres
POSITION_JITTER = 1.0  # max pixels
SIZE_JITTER = 0.04  # relative
ROTATION_JITTER = np.deg2rad(7.0)
_WINDOW = 16  # side of the square window around the object where its SDF is evaluated
_PAD = 2
_CHUNK = 256
_COLOR_TABLE = np.array(list(COLORS.values()), dtype=np.float32)


def combo_index(shape, color, size, position):
    """Pack attribute indices (ints or int arrays) into combination indices."""
    n_color, n_size, n_pos = NUM_VALUES[1:]
    combo = (np.asarray(shape) * n_color + np.asarray(color)) * n_size + np.asarray(size)
    return combo * n_pos + np.asarray(position)


def combo_attributes(combo):
    """Inverse of ``combo_index``: (shape, color, size, position) index arrays."""
    rest = np.asarray(combo)
    if np.any((rest < 0) | (rest >= NUM_COMBOS)):
        raise ValueError(f"combination index outside [0, {NUM_COMBOS})")
    out = []
    for n in NUM_VALUES[::-1]:
        rest, value = np.divmod(rest, n)
        out.append(value)
    return tuple(out[::-1])


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


# ---------------------------------------------------------------- counter-based randomness

def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 -> well-mixed uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(seed: int, indices: np.ndarray, slots: int, stream: int) -> np.ndarray:
    """float32 (N, slots) uniform in [0, 1), a pure function of (seed, index, stream, slot)."""
    key = _mix64(np.array([(seed * 0x9E3779B97F4A7C15 + stream) % 2**64], dtype=np.uint64))
    counters = indices.astype(np.uint64)[:, None] * np.uint64(1 << 16) + np.arange(slots, dtype=np.uint64)
    bits = _mix64(counters ^ key) >> np.uint64(40)
    return bits.astype(np.float32) * np.float32(1.0 / (1 << 24))


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

def _upsample_matrix(grid: int, size: int) -> np.ndarray:
    """(size, grid) bilinear interpolation weights from a grid of samples to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) * (grid - 1) / size
    i0 = np.minimum(pos.astype(np.int64), grid - 2)
    weights = np.zeros((size, grid), dtype=np.float32)
    weights[np.arange(size), i0] = 1 - (pos - i0)
    weights[np.arange(size), i0 + 1] = pos - i0
    return weights


_UP4, _UP16 = _upsample_matrix(4, IMAGE_SIZE), _upsample_matrix(16, IMAGE_SIZE)


def _upsample(grid: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of (N, g, g) smooth noise to (N, size, size)."""
    return np.matmul(np.matmul(weights, grid), weights.T)


def _coverage(shape_ids, cx, cy, radius, angle):
    """Anti-aliased coverage (N, 32, 32) in [0, 1] from the shapes' signed distances."""
    n, side, win = len(shape_ids), IMAGE_SIZE + 2 * _PAD, _WINDOW
    ox = np.rint(cx).astype(np.int64) - win // 2
    oy = np.rint(cy).astype(np.int64) - win // 2
    local = np.arange(win, dtype=np.float32) + 0.5
    dx = (ox[:, None] + local - cx[:, None]).astype(np.float32)  # (N, win) pixel offsets from centre
    dy = (oy[:, None] + local - cy[:, None]).astype(np.float32)
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    inv = (1.0 / radius).astype(np.float32)
    window = np.empty((n, win, win), dtype=np.float32)
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
    canvas = np.zeros((n, side, side), dtype=np.float32)
    start = np.arange(n) * side * side + (oy + _PAD) * side + (ox + _PAD)
    offsets = (np.arange(win)[:, None] * side + np.arange(win)[None, :]).ravel()
    canvas.ravel()[start[:, None] + offsets] = window.reshape(n, -1)
    return canvas[:, _PAD:_PAD + IMAGE_SIZE, _PAD:_PAD + IMAGE_SIZE]


def render(combos, seed: int, indices=None) -> np.ndarray:
    """Render combinations to uint8 (N, 32, 32, 3); image k is a function of (seed, indices[k]).

    ``indices`` defaults to ``arange(N)``; pass the global indices to render a slice of a batch.
    """
    combos = np.asarray(combos, dtype=np.int64).reshape(-1)
    n = len(combos)
    indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) != n:
        raise ValueError("indices must have one entry per combination")
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):  # chunks keep the float temporaries cache-sized
        part = slice(start, start + _CHUNK)
        out[part] = _render_chunk(combos[part], int(seed), indices[part])
    return out


def _render_chunk(combos: np.ndarray, seed: int, indices: np.ndarray) -> np.ndarray:
    n = len(combos)
    shape, color, size, position = combo_attributes(combos)
    u = _uniform(seed, indices, 16, stream=1)
    grid = np.asarray(GRID_CENTERS, dtype=np.float32)
    cx = grid[position % 3] + (2 * u[:, 0] - 1) * POSITION_JITTER
    cy = grid[position // 3] + (2 * u[:, 1] - 1) * POSITION_JITTER
    radius = np.asarray(SIZE_RADII, dtype=np.float32)[size] * (1 + (2 * u[:, 2] - 1) * SIZE_JITTER)
    angle = (2 * u[:, 3] - 1) * ROTATION_JITTER
    cover = _coverage(shape, cx, cy, radius, angle)

    # object colour: brightness and per-channel jitter, plus a faint linear shading
    rgb = _COLOR_TABLE[color] * (0.9 + 0.15 * u[:, 4:5]) + (u[:, 5:8] - 0.5) * 24
    theta = 2 * np.pi * u[:, 8]
    gx, gy = (0.1 * np.cos(theta) / radius).astype(np.float32), (0.1 * np.sin(theta) / radius).astype(np.float32)
    pix = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    shade = (pix[None, :] - cx[:, None]) * gx[:, None]
    shade = 1 + shade[:, None, :] + ((pix[None, :] - cy[:, None]) * gy[:, None])[:, :, None]

    # dark background: base level, slight tint, two scales of smooth noise
    base = 12 + 26 * u[:, 9:10] + (u[:, 10:13] - 0.5) * 10
    coarse = _upsample(_uniform(seed, indices, 16, stream=2).reshape(n, 4, 4) - 0.5, _UP4)
    fine = _upsample(_uniform(seed, indices, 256, stream=3).reshape(n, 16, 16) - 0.5, _UP16)
    texture = coarse * (8 + 12 * u[:, 13, None, None]) + fine * 9

    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    background, plane = np.empty_like(texture), np.empty_like(texture)
    for c in range(3):  # channel planes, in place: long inner loops, few allocations
        np.add(texture, base[:, c, None, None], out=background)
        np.multiply(shade, rgb[:, c, None, None], out=plane)
        plane -= background
        plane *= cover
        plane += background
        plane += 0.5
        out[..., c] = np.clip(plane, 0, 255, out=plane)
    return out
