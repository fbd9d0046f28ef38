"""Per-step randomness: a generator that is a pure function of (seed, step, stream).

``step_rng(seed, step, stream)`` is SFC64 seeded with the BLAKE2b digest of the three words (any
non-negative integers), handed over directly (no SeedSequence, no OS entropy): two processes
(ranks, or a run and its resume) draw the same numbers for the same step without any RNG state.
Stream 0 holds the step's uniforms for n draws: the first n choose the regions (``draw_regions``),
the next n the prompts inside them (``draw_members``); stream 1 is a strategy's own sample
(e.g. ``dts``).
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np
from numpy.random.bit_generator import ISeedSequence

STREAM_DRAWS, STREAM_STRATEGY = 0, 1


def step_key(seed: int, step: int, stream: int = 0) -> bytes:
    """The 32-byte BLAKE2b digest of (seed, step, stream); raises ValueError on negative words."""
    words = (operator.index(seed), operator.index(step), operator.index(stream))
    if min(words) < 0:
        raise ValueError(f"step_rng words must be non-negative, got {words}")
    return hashlib.blake2b(b"%d,%d,%d" % words, digest_size=32, person=b"aria-step-rng").digest()


class _DigestSeed(ISeedSequence):
    """Seeds a bit generator with the little-endian words of a digest (no SeedSequence hashing)."""

    def __init__(self, digest: bytes):
        self.digest = digest

    def generate_state(self, n_words, dtype=np.uint32):
        """The first ``n_words`` words of the digest (SFC64 asks for three of 64 bits)."""
        return np.frombuffer(self.digest, dtype=np.dtype(dtype).newbyteorder("<"), count=n_words).astype(dtype)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator of (seed, step, stream): SFC64 seeded with ``step_key(seed, step, stream)``.

    A pure function of its words (no state to save for a resume, the same on every platform),
    fresh at every call (generators handed out earlier are not disturbed).
    """
    return np.random.Generator(np.random.SFC64(_DigestSeed(step_key(seed, step, stream))))


def step_uniforms(seed: int, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2n uniforms of stream 0 of (seed, step): (n for the regions, n for the members)."""
    u = step_rng(seed, step, STREAM_DRAWS).random(2 * n)
    return u[:n], u[n:]


def draw_regions(probabilities: np.ndarray, seed: int, step: int, n: int) -> np.ndarray:
    """n region indices from ``probabilities``: inverse CDF of the first n uniforms of the step.

    The CDF is scaled to end at exactly 1 > u, so a region of zero probability (its CDF value
    equals the one before it, or 1 at the end) is never drawn.
    """
    cdf = np.cumsum(probabilities, dtype=np.float64)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, step_uniforms(seed, step, n)[0], side="right").astype(np.int64)


def draw_members(offsets: np.ndarray, members: np.ndarray, regions: np.ndarray, seed: int, step: int) -> np.ndarray:
    """One prompt id per drawn region, uniform inside the region (CSR ``offsets``/``members``).

    Uses the n = len(regions) member uniforms of (seed, step) (``step_uniforms``), so every rank
    draws the same ids; position = floor(u * size) with u = m / 2**53 < 1: for size < 2**53 the
    product rounds below size, so it stays inside the region. Raises ValueError if a drawn
    region is empty.
    """
    start, size = offsets[regions], offsets[regions + 1] - offsets[regions]
    if (size <= 0).any():
        raise ValueError("draw_members: a drawn region is empty")
    u = step_uniforms(seed, step, len(regions))[1]
    return members[start + (u * size).astype(np.int64)]
