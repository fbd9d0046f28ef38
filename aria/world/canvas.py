"""What both embedded worlds share: the colour, size and position attributes, item packing, the
counter-based randomness and the compositing of one object onto a dark, lightly textured background.

A world draws an object's anti-aliased coverage; ``composite`` paints it in its colour (brightness
and per-channel jitter, a faint linear shading) over the background (base level, slight tint, two
scales of smooth noise). Randomness comes from ``uniform``, a pure function of (seed, index, stream,
slot), so image ``k`` of a batch depends only on ``(seed, indices[k], items[k])``.
"""

from __future__ import annotations

import numpy as np

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

IMAGE_SIZE = 32
GRID_CENTERS = (8.0, 16.0, 24.0)  # pixel coordinate of grid column / row centres
POSITION_JITTER = 1.0  # max pixels
SIZE_JITTER = 0.04  # relative
ROTATION_JITTER = np.deg2rad(7.0)
CHUNK = 256  # images per chunk: keeps the float temporaries cache-sized
_COLOR_TABLE = np.array(list(COLORS.values()), dtype=np.float32)


# ---------------------------------------------------------------- items

def pack(num_values, *values):
    """Mixed-radix index of attribute values (ints or int arrays), the first attribute most significant."""
    index = np.asarray(values[0])
    for n, value in zip(num_values[1:], values[1:]):
        index = index * n + np.asarray(value)
    return index


def unpack(index, num_values, what: str = "item"):
    """Inverse of ``pack``: one index array per attribute."""
    rest, total = np.asarray(index), int(np.prod(num_values))
    if np.any((rest < 0) | (rest >= total)):
        raise ValueError(f"{what} index outside [0, {total})")
    out = []
    for n in num_values[::-1]:
        rest, value = np.divmod(rest, n)
        out.append(value)
    return tuple(out[::-1])


def flat_items(items, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """(items, indices) as flat int64 arrays; ``indices`` defaults to ``arange(N)``."""
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    if indices is None:
        indices = np.arange(len(items), dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) != len(items):
        raise ValueError("indices must have one entry per item")
    return items, indices


def in_chunks(draw, items: np.ndarray, indices: np.ndarray, seed: int, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
              dtype=np.uint8) -> np.ndarray:
    """(N, *image_shape) array of ``draw(items, u, seed, indices)`` of each chunk of ``CHUNK`` images, ``u``
    their (n, 16) jitter uniforms (stream 1)."""
    out = np.empty((len(items), *image_shape), dtype=dtype)
    for start in range(0, len(items), CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = draw(items[part], uniform(int(seed), indices[part], 16, stream=1), int(seed), indices[part])
    return out


# ---------------------------------------------------------------- counter-based randomness

def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 -> well-mixed uint64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, indices: np.ndarray, slots: int, stream: int) -> np.ndarray:
    """float32 (N, slots) uniform in [0, 1), a pure function of (seed, index, stream, slot)."""
    key = _mix64(np.array([(seed * 0x9E3779B97F4A7C15 + stream) % 2**64], dtype=np.uint64))
    counters = indices.astype(np.uint64)[:, None] * np.uint64(1 << 16) + np.arange(slots, dtype=np.uint64)
    bits = _mix64(counters ^ key) >> np.uint64(40)
    return bits.astype(np.float32) * np.float32(1.0 / (1 << 24))


# ---------------------------------------------------------------- placement

def jittered_pose(position: np.ndarray, u: np.ndarray):
    """(cx, cy, stretch, angle) of objects at grid ``position`` under the jitter of ``u[:, :4]``."""
    grid = np.asarray(GRID_CENTERS, dtype=np.float32)
    cx = grid[position % 3] + (2 * u[:, 0] - 1) * POSITION_JITTER
    cy = grid[position // 3] + (2 * u[:, 1] - 1) * POSITION_JITTER
    return cx, cy, 1 + (2 * u[:, 2] - 1) * SIZE_JITTER, (2 * u[:, 3] - 1) * ROTATION_JITTER


def window_offsets(cx: np.ndarray, cy: np.ndarray, win: int):
    """(ox, oy, dx, dy): the top-left pixel of the ``win``-pixel window around each centre and its
    pixel centres' offsets (N, win) from the object centre (y down)."""
    ox = np.rint(cx).astype(np.int64) - win // 2
    oy = np.rint(cy).astype(np.int64) - win // 2
    local = np.arange(win, dtype=np.float32) + 0.5
    dx = (ox[:, None] + local - cx[:, None]).astype(np.float32)
    dy = (oy[:, None] + local - cy[:, None]).astype(np.float32)
    return ox, oy, dx, dy


def paste(window: np.ndarray, ox: np.ndarray, oy: np.ndarray, pad: int) -> np.ndarray:
    """(N, 32, 32) image of each (win, win) window placed at (ox, oy) (at most ``pad`` px outside)."""
    n, win, side = len(window), window.shape[-1], IMAGE_SIZE + 2 * pad
    canvas = np.zeros((n, side, side), dtype=np.float32)
    start = np.arange(n) * side * side + (oy + pad) * side + (ox + pad)
    offsets = (np.arange(win)[:, None] * side + np.arange(win)[None, :]).ravel()
    canvas.ravel()[start[:, None] + offsets] = window.reshape(n, -1)
    return canvas[:, pad:pad + IMAGE_SIZE, pad:pad + IMAGE_SIZE]


# ---------------------------------------------------------------- compositing

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


def composite(cover, color, radius, cx, cy, u, seed: int, indices: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3): coverage ``cover`` (N, 32, 32) in colour index ``color``, shaded across
    ``radius`` px around (cx, cy), over the background; ``u`` holds the 10 uniforms of the jitter."""
    n = len(cover)
    # object colour: brightness and per-channel jitter, plus a faint linear shading
    rgb = _COLOR_TABLE[color] * (0.9 + 0.15 * u[:, 0:1]) + (u[:, 1:4] - 0.5) * 24
    theta = 2 * np.pi * u[:, 4]
    gx, gy = (0.1 * np.cos(theta) / radius).astype(np.float32), (0.1 * np.sin(theta) / radius).astype(np.float32)
    pix = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    shade = (pix[None, :] - cx[:, None]) * gx[:, None]
    shade = 1 + shade[:, None, :] + ((pix[None, :] - cy[:, None]) * gy[:, None])[:, :, None]

    # dark background: base level, slight tint, two scales of smooth noise
    base = 12 + 26 * u[:, 5:6] + (u[:, 6:9] - 0.5) * 10
    coarse = _upsample(uniform(seed, indices, 16, stream=2).reshape(n, 4, 4) - 0.5, _UP4)
    fine = _upsample(uniform(seed, indices, 256, stream=3).reshape(n, 16, 16) - 0.5, _UP16)
    texture = coarse * (8 + 12 * u[:, 9, None, None]) + fine * 9

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
