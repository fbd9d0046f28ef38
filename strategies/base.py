"""The allocation-strategy interface (in the style of optax: pure functions over explicit state).

A strategy decides, at every distillation step, from which *regions* of the prompt pool the
switched conditions are drawn. It never touches models or tensors:

    state = strategy.init(regions, seed)
    alloc = strategy.allocate(state, step, n)      # region per draw (+ optional weights)
    state = strategy.update(state, feedback)       # per-region (sum, count) of discrepancies

- ``state`` is a flat ``dict`` of numpy arrays and Python scalars: it round-trips through JSON
  or safetensors (``state_to_json`` / ``state_to_arrays``), never pickle.
- all randomness comes from ``step_rng(seed, step, stream)``, a generator that is a pure function
  of those three integers (SFC64 seeded with their BLAKE2b digest, built in a few µs), so two
  processes (ranks, or a run and its resume) draw the same allocation for the same step without
  any RNG state. Stream 0 gives a step's 2n uniforms: the first n choose the regions
  (``draw_regions``), the next n the prompts inside them (``draw_members``); stream 1 is a
  strategy's own sample (``dts``).
- feedback arrives as per-region sums and counts, so that it can be all-reduced over ranks before
  the update; ``update`` drops non-finite, negative or absurdly large entries (and counts them in
  ``state["dropped"]``) before any strategy sees them. Feedback may arrive one step late: the
  allocation at step s depends only on the state and s.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import sys
import threading
from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Union

import numpy as np
from numpy.random.bit_generator import ISeedSequence
from pydantic import BaseModel, ConfigDict

State = dict[str, Union[np.ndarray, int, float]]


class StrategyConfig(BaseModel):
    """Base of every strategy's hyperparameters: typed, validated, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RegionInfo:
    """The regions of a prompt pool: how many prompts each holds (``sizes[k]``; may be 0)."""

    sizes: np.ndarray

    def __post_init__(self):
        sizes = np.asarray(self.sizes, dtype=np.int64).reshape(-1)
        if sizes.size == 0:
            raise ValueError("RegionInfo needs at least one region")
        if (sizes < 0).any():
            raise ValueError("region sizes must be non-negative")
        if sizes.sum() == 0:
            raise ValueError("every region is empty")
        object.__setattr__(self, "sizes", sizes)

    @property
    def num_regions(self) -> int:
        return int(self.sizes.size)

    @property
    def active(self) -> np.ndarray:
        """Regions that hold at least one prompt (only these can be drawn)."""
        return self.sizes > 0

    @property
    def shares(self) -> np.ndarray:
        """Each region's share of the pool."""
        return self.sizes / self.sizes.sum()


@dataclass(frozen=True)
class Feedback:
    """Discrepancy observed in one step, reduced per region (and optionally per timestep bin).

    ``sums[k, b]`` is the sum of per-sample discrepancies of region k in timestep bin b and
    ``counts[k, b]`` the number of samples; 1-D arrays mean a single bin. Both are additive over
    ranks, so the engine all-reduces them before calling ``update``.
    """

    sums: np.ndarray
    counts: np.ndarray
    step: int = 0
    # flat indices (increasing) of the only entries that can be non-zero: set by ``from_samples``,
    # which also makes the arrays read-only so that it cannot go stale; None: scan the dense arrays
    support: np.ndarray | None = field(default=None, repr=False, compare=False)
    # (sums, counts) at the support, read-only: set by ``from_samples`` only (not an argument), which
    # computes them first and scatters them into the dense arrays; the counts are sample counts
    # (integers >= 1), so that ``update`` checks only the sums there
    entries: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        sums = np.asarray(self.sums, dtype=np.float64)
        counts = np.asarray(self.counts, dtype=np.float64)
        if sums.ndim == 1:
            sums, counts = sums[:, None], counts.reshape(-1, 1)
        if sums.shape != counts.shape or sums.ndim != 2:
            raise ValueError(f"feedback sums {sums.shape} and counts {counts.shape} differ")
        if self.support is not None:  # the arrays may not change behind the support's back
            sums, counts = sums.view(), counts.view()
            sums.flags.writeable = counts.flags.writeable = False
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "counts", counts)

    @staticmethod
    def from_samples(regions, values, num_regions: int, bins=None, num_bins: int = 1, step: int = 0):
        """Per-region feedback from per-sample region indices, values and (optional) timestep bins."""
        regions = np.asarray(regions, dtype=np.int64)
        bins = np.zeros_like(regions) if bins is None else np.asarray(bins, dtype=np.int64)
        flat = regions * num_bins + bins
        size = num_regions * num_bins
        if flat.size and (flat.min() < 0 or flat.max() >= size):
            raise ValueError(f"feedback samples outside {num_regions} regions x {num_bins} bins")
        # the touched cells first (the same sums as a dense bincount: each cell adds its samples in
        # order, from 0), then scattered into the dense arrays, which are written only there
        support, cell = np.unique(flat, return_inverse=True)
        sums_at = np.bincount(cell, weights=np.asarray(values, dtype=np.float64), minlength=support.size)
        counts_at = np.bincount(cell, minlength=support.size).astype(np.float64)
        sums, counts = np.zeros(size), np.zeros(size)
        sums[support] = sums_at
        counts[support] = counts_at
        feedback = Feedback(sums.reshape(num_regions, num_bins), counts.reshape(num_regions, num_bins), step,
                            support=support)
        object.__setattr__(feedback, "entries", (readonly(sums_at), readonly(counts_at)))
        return feedback


@dataclass(frozen=True)
class Allocation:
    """One step's decision: a region per draw, optional importance weights, the probabilities used."""

    regions: np.ndarray
    probabilities: np.ndarray
    weights: np.ndarray | None = None


# reductions without the Python wrappers of numpy's functions and methods (the same numbers, faster)
_sum, _min, _max = np.add.reduce, np.minimum.reduce, np.maximum.reduce
try:
    from numpy._core.multiarray import count_nonzero as _count_nonzero  # np.count_nonzero without axis
except ImportError:  # pragma: no cover - other numpy layouts
    _count_nonzero = np.count_nonzero

# Feedback above this (sqrt of the largest float, ~1.3e154) is not a measurement: dropping it lets
# strategies add, scale and multiply a few feedback values without ever overflowing.
FEEDBACK_LIMIT = float(np.sqrt(np.finfo(np.float64).max))


def readonly(array: np.ndarray) -> np.ndarray:
    """``array`` made read-only in place (it must be a new array of the caller's); returns it."""
    array.setflags(write=False)
    return array


def sanitize(feedback: Feedback, num_regions: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sums and counts with every bad entry removed; returns (sums, counts, dropped).

    An entry is bad if it is non-finite or negative, has a sum without a count, or exceeds
    ``FEEDBACK_LIMIT`` (as a sum or as a mean). Valid feedback is returned without a copy.
    """
    sums, counts, dropped, _ = _sanitize(feedback, num_regions)
    return sums, counts, dropped


class _Entries(NamedTuple):
    """The non-zero entries of sanitised (K, bins) feedback: flat indices (increasing), sums, counts."""

    sums: np.ndarray
    counts: np.ndarray
    index: np.ndarray
    sums_at: np.ndarray
    counts_at: np.ndarray


def _sanitize(feedback: Feedback, num_regions: int):
    """``sanitize`` plus the non-zero entries of the result (``_Entries``)."""
    sums, counts = feedback.sums, feedback.counts
    if sums.shape[0] != num_regions:
        raise ValueError(f"feedback has {sums.shape[0]} regions, the strategy {num_regions}")
    # fast path: only entries with a non-zero count can hold data (a few per step), so check those
    # and verify that no sum hides elsewhere; NaN counts as non-zero and lands in the checked set.
    support, entries = feedback.support, feedback.entries
    if entries is not None:  # from_samples: counts >= 1 (sample counts) at the support, 0 elsewhere
        s, c = entries
        if support.size == 0 or (_min(s) >= 0 and _max(s) <= FEEDBACK_LIMIT):
            return sums, counts, 0, _Entries(sums, counts, support, s, c)
    flat_sums, flat_counts = sums.reshape(-1), counts.reshape(-1)
    idx = _nonzero(flat_counts) if support is None else support  # support: every entry has a count >= 1
    s, c = flat_sums[idx], flat_counts[idx]
    if idx.size == 0:
        clean = not flat_sums.any()
    else:
        s_min = _min(s)
        clean = bool(s_min >= 0 and _max(s) <= FEEDBACK_LIMIT and _max(c) <= FEEDBACK_LIMIT
                     and (_min(c) >= 1.0 or _valid(s, c).all()))  # counts >= 1: the mean bound is the sum bound
        if clean and support is None:  # no sum without a count: as many non-zero sums in all as among the entries
            nonzero_sums = _count_nonzero(flat_sums if flat_sums.size <= 2048 else flat_sums != 0)  # faster each
            clean = nonzero_sums == (idx.size if s_min > 0 else _count_nonzero(s))
    if clean:
        return sums, counts, 0, _Entries(sums, counts, idx, s, c)
    bad = ~_valid(sums, counts)
    sums, counts = np.where(bad, 0.0, sums), np.where(bad, 0.0, counts)
    idx = _nonzero(counts)
    entries = _Entries(sums, counts, idx, sums.reshape(-1)[idx], counts.reshape(-1)[idx])
    return sums, counts, int(_count_nonzero(bad)), entries


def _valid(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Finite, non-negative, within the limit, and a count wherever there is a sum (NaN fails all)."""
    # sums <= limit * min(counts, 1) bounds both the sum and the mean; a NaN or negative count fails it
    return (counts <= FEEDBACK_LIMIT) & (sums >= 0) & (sums <= FEEDBACK_LIMIT * np.minimum(counts, 1.0))


def _nonzero(counts: np.ndarray) -> np.ndarray:
    flat = counts.reshape(-1)
    return (flat if flat.size <= 512 else flat != 0).nonzero()[0]  # a bool mask first: faster on large arrays


# The non-zero entries of the feedback being applied, set by ``update`` for the duration of
# ``apply_feedback`` only, so that strategies do not scan the dense (K, bins) arrays again.
_CURRENT_ENTRIES: ContextVar[_Entries | None] = ContextVar("aria_feedback_entries", default=None)


def nonzero_entries(counts: np.ndarray) -> np.ndarray:
    """Flat indices of the non-zero entries of (K, bins) ``counts``, in increasing order."""
    current = _CURRENT_ENTRIES.get()
    if current is not None and current.counts is counts:
        return current.index
    return _nonzero(counts)


def feedback_entries(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat indices, sums, counts) of the non-zero entries of sanitised (K, bins) feedback."""
    current = _CURRENT_ENTRIES.get()
    if current is not None and current.counts is counts and current.sums is sums:
        return current.index, current.sums_at, current.counts_at
    idx = _nonzero(counts)
    return idx, sums.reshape(-1)[idx], counts.reshape(-1)[idx]


def region_totals(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region (sum, count) over the timestep bins of sanitised (K, bins) feedback.

    Works on the few non-zero entries (a step touches at most n of K * bins), so its cost does
    not grow with the number of bins.
    """
    k, bins = counts.shape
    if bins == 1:
        return sums[:, 0], counts[:, 0]
    idx, sums_at, counts_at = feedback_entries(sums, counts)
    rows = idx // bins
    return np.bincount(rows, sums_at, minlength=k), np.bincount(rows, counts_at, minlength=k)


def size_shares(state: State) -> np.ndarray:
    """Each region's share of the pool, sizes / sum(sizes) (the allocation of ``rc`` and ``none``)."""
    sizes = np.asarray(state["sizes"])
    total = sizes.sum()
    if not total > 0:
        return mix_floor(sizes.astype(np.float64), 0.0, sizes > 0)
    return sizes * (1.0 / total)


def mix_floor(q: np.ndarray, floor: float, active: np.ndarray) -> np.ndarray:
    """(1 - floor) * q + floor * uniform over the active regions; inactive regions get 0."""
    return _mix_floor(q, floor, active, int(_count_nonzero(active)), owned=False)


def _mix_floor(q: np.ndarray, floor: float, active: np.ndarray, n_active: int, owned: bool) -> np.ndarray:
    """``mix_floor`` with the active count known; ``owned``: q is a float64 temporary of the
    caller's whose inactive entries are already 0 (or NaN, which the fallback catches), so it is
    scaled in place."""
    everywhere = n_active == active.size
    if not everywhere and not owned:
        q = np.where(active, q, 0.0)
        owned = True
    total = _sum(q)
    if not 0 < total < np.inf:  # NaN fails too
        q, total, owned = active.astype(np.float64), n_active, True
    if owned:
        p = np.multiply(q, (1.0 - floor) / total, out=q)
    else:
        p = q * ((1.0 - floor) / total)
    if everywhere:
        p += floor / n_active
    else:
        np.add(p, floor / n_active, out=p, where=active)
    return p  # sums to 1 up to rounding (K ulps); draw_regions scales by its own total


def softmax_floor(scores: np.ndarray, temperature: float, floor: float, active: np.ndarray) -> np.ndarray:
    """softmax(scores / temperature) over the active regions (finite scores), mixed with ``floor``.

    A temperature so small that (score gap) / temperature overflows gives exp(-inf) = 0, the
    right limit (numpy warns).
    """
    return _softmax_floor(scores, temperature, floor, active, int(_count_nonzero(active)), owned=False)


def _softmax_floor(scores, temperature, floor, active, n_active: int, owned: bool) -> np.ndarray:
    """``softmax_floor`` with the active count known; ``owned``: scores is a float64 temporary
    of the caller's, reused for the result."""
    if n_active == active.size:
        z = scores if owned else np.array(scores, dtype=np.float64)
        z -= _max(z)
    else:
        z = np.where(active, scores, -np.inf)
        z -= _max(z)
    z /= temperature
    return _mix_floor(np.exp(z, out=z), floor, active, n_active, owned=True)  # inactive: exp(-inf) = 0


# -- per-step randomness -----------------------------------------------------------------------
# The generator of (seed, step, stream) is SFC64 whose 192-bit seed is a BLAKE2b digest of the
# three words (any non-negative integers), handed over directly (no SeedSequence, no OS entropy):
# ~5 µs to build and draw a step's uniforms, against ~15 µs for default_rng([seed, step, stream])
# and ~12 µs for a Philox keyed by the words. Stream 0 holds the step's uniforms for n draws: the
# first n choose the regions (``draw_regions``), the next n the prompts inside them
# (``draw_members``); stream 1 is a strategy's own sample (e.g. ``dts``).
STREAM_DRAWS, STREAM_STRATEGY = 0, 1
_LITTLE_ENDIAN = sys.byteorder == "little"


def step_key(seed: int, step: int, stream: int = 0) -> bytes:
    """The 32-byte BLAKE2b digest of (seed, step, stream); raises ValueError on negative words."""
    words = (operator.index(seed), operator.index(step), operator.index(stream))
    if min(words) < 0:
        raise ValueError(f"step_rng words must be non-negative, got {words}")
    return hashlib.blake2b(b"%d,%d,%d" % words, digest_size=32, person=b"aria-step-rng").digest()


class _Digest(ISeedSequence):
    """Seeds a bit generator with the little-endian words of a digest instead of SeedSequence's."""

    __slots__ = ("digest",)

    def __init__(self, digest: bytes):
        self.digest = digest

    def generate_state(self, n_words, dtype=np.uint32):
        if dtype is np.uint64 and n_words <= 4 and _LITTLE_ENDIAN:  # what SFC64 asks for (3 words)
            return np.frombuffer(self.digest, dtype=np.uint64, count=n_words)
        dtype = np.dtype(dtype)
        size = n_words * dtype.itemsize
        data = self.digest if size <= len(self.digest) else hashlib.shake_256(self.digest).digest(size)
        return np.frombuffer(data, dtype=dtype.newbyteorder("<"), count=n_words).astype(dtype)


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """The generator of (seed, step, stream): SFC64 seeded with ``step_key(seed, step, stream)``.

    A pure function of its words (no state to save for a resume, the same on every platform),
    fresh at every call (generators handed out earlier are not disturbed).
    """
    return np.random.Generator(np.random.SFC64(_Digest(step_key(seed, step, stream))))


# ((seed, step, n), member uniforms) of the last regions drawn in this thread: only a shortcut,
# which ``draw_members`` takes once if its (seed, step, n) match (else it draws them itself).
_PENDING = threading.local()
_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)


def step_uniforms(seed: int, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2n uniforms of stream 0 of (seed, step): (n for the regions, n for the members)."""
    u = step_rng(seed, step, STREAM_DRAWS).random(2 * n)
    return u[:n], u[n:]


def draw_regions(probabilities: np.ndarray, seed: int, step: int, n: int) -> np.ndarray:
    """n region indices from ``probabilities`` (inverse CDF of the first n uniforms of the step).

    Only regions of positive probability can be drawn (a zero-probability region has the CDF
    value of the region before it), since every key stays below the CDF's last value: the CDF
    is scaled to end at exactly 1 > u, or (many regions) the keys are u * total, which rounds
    below a normal total since u <= 1 - 2**-53 (any other total: clamped below it).
    """
    cdf = np.add.accumulate(probabilities)
    u, _PENDING.draw = step_uniforms(seed, step, n)
    _PENDING.key = (seed, step, n)
    if cdf.size <= 1024:
        cdf /= cdf[-1]
    else:
        total = cdf.item(-1)
        u *= total
        # u <= 1 - 2**-53, so for a normal total u * total rounds to at most the float below the total
        # (the exact product is within total * 2**-53 of it); otherwise clamp it there
        if not _SMALLEST_NORMAL <= total < math.inf:
            np.minimum(u, math.nextafter(total, 0.0), out=u)
        # the same regions, searched in increasing order of the keys: each search then starts where
        # the one before it ended, in the cache lines it touched (the search of 256 keys in 4096
        # regions takes half the time; with the sort, a few µs less per step)
        order = u.argsort()
        regions = np.empty(n, dtype=np.int64)
        regions[order] = cdf.searchsorted(u[order], "right")
        return regions
    regions = cdf.searchsorted(u, "right")
    return regions if regions.dtype == np.int64 else regions.astype(np.int64)


def draw_members(offsets: np.ndarray, members: np.ndarray, regions: np.ndarray, seed: int, step: int) -> np.ndarray:
    """One prompt id per drawn region, uniform inside the region (CSR ``offsets``/``members``).

    Uses the n = len(regions) member uniforms of (seed, step) (``step_uniforms``), so every rank
    draws the same ids; position = floor(u * size) with u = m / 2**53 < 1: for size < 2**53 the
    product rounds below size, so it stays inside the region; its bias (size / 2**53) is nil.
    Raises ValueError if a drawn region is empty.
    """
    start = offsets[regions]
    size = offsets[1:][regions]
    size -= start
    if size.size and _min(size) <= 0:
        raise ValueError("draw_members: a drawn region is empty")
    u = getattr(_PENDING, "draw", None)
    if u is None or _PENDING.key != (seed, step, size.size):
        u = step_uniforms(seed, step, size.size)[1]
    _PENDING.draw = None  # taken (it is scaled in place below)
    u *= size
    return members[start + u.astype(np.int64)]


class AllocationStrategy(ABC):
    """Decides the regions of switched conditions. Subclasses set ``Config`` and implement
    ``init_state``, ``probabilities`` and ``apply_feedback``; the base class handles seeding,
    sanitising feedback and drawing."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    origin: ClassVar[str] = "built-in"
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    switches: ClassVar[bool] = True  # False: never switch conditions (the ``none`` strategy)

    def __init__(self, config: StrategyConfig | dict | None = None, **params: Any):
        if config is None or isinstance(config, dict):
            config = self.Config(**{**(config or {}), **params})
        elif params:
            raise TypeError("pass either a config object or keyword parameters")
        self.config = config

    # -- the interface ---------------------------------------------------------------------
    def init(self, regions: RegionInfo, seed: int) -> State:
        state: State = {
            "seed": int(seed),
            "sizes": regions.sizes.astype(np.int64).copy(),
            "updates": 0,
            "dropped": 0,
        }
        state.update(self.init_state(regions))
        return state

    def allocate(self, state: State, step: int, n: int) -> Allocation:
        """Regions for the n switched draws of ``step`` (identical on every rank and resume)."""
        p = np.asarray(self.probabilities(state), dtype=np.float64)
        regions = draw_regions(p, int(state["seed"]), int(step), int(n))
        return Allocation(regions=regions, probabilities=p, weights=self.weights(state, p, regions))

    def update(self, state: State, feedback: Feedback) -> State:
        """A new state from one step's (all-reduced) feedback; bad entries are dropped and counted."""
        sums, counts, dropped, entries = _sanitize(feedback, int(np.asarray(state["sizes"]).size))
        new = dict(state)
        new["dropped"] = int(state["dropped"]) + dropped
        new["updates"] = int(state["updates"]) + 1
        token = _CURRENT_ENTRIES.set(entries)
        try:
            new.update(self.apply_feedback(state, sums, counts, int(feedback.step)))
        finally:
            _CURRENT_ENTRIES.reset(token)
        return new

    # -- what subclasses provide ---------------------------------------------------------
    def init_state(self, regions: RegionInfo) -> State:
        """Strategy-specific state entries (plain arrays and scalars)."""
        return {}

    @abstractmethod
    def probabilities(self, state: State) -> np.ndarray:
        """The distribution over regions used by the next allocation (sums to 1)."""

    def apply_feedback(self, state: State, sums: np.ndarray, counts: np.ndarray, step: int) -> State:
        """Entries of the state to replace, from sanitised (K, bins) sums and counts."""
        return {}

    def weights(self, state: State, p: np.ndarray, regions: np.ndarray) -> np.ndarray | None:
        """Optional per-draw importance weights (None: all 1)."""
        return None

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def active(state: State) -> np.ndarray:
        return np.asarray(state["sizes"]) > 0

    @classmethod
    def summary(cls) -> str:
        return cls.description or (cls.__doc__ or "").strip().splitlines()[0]


# -- state serialisation (never pickle) ---------------------------------------------------------

def state_to_json(state: State) -> str:
    """JSON text of a state; arrays keep dtype and shape, floats round-trip exactly."""
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            out[key] = {"dtype": str(value.dtype), "shape": list(value.shape), "data": value.reshape(-1).tolist()}
        elif isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            out[key] = float(value)
        else:
            raise TypeError(f"state entry {key!r} is {type(value).__name__}, not an array or scalar")
    return json.dumps(out, sort_keys=True, allow_nan=False)


def state_from_json(text: str) -> State:
    state: State = {}
    for key, value in json.loads(text).items():
        if isinstance(value, dict):
            state[key] = np.asarray(value["data"], dtype=value["dtype"]).reshape(value["shape"])
        else:
            state[key] = value
    return state


def state_to_arrays(state: State) -> dict[str, np.ndarray]:
    """A dict of arrays for safetensors; scalar kinds are kept in the key (``i:``/``f:``/``a:``)."""
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            out[f"a:{key}"] = np.ascontiguousarray(value)
        elif isinstance(value, (int, np.integer, bool, np.bool_)):
            out[f"i:{key}"] = np.asarray([int(value)], dtype=np.int64)
        else:
            out[f"f:{key}"] = np.asarray([float(value)], dtype=np.float64)
    return out


def state_from_arrays(arrays: dict[str, np.ndarray]) -> State:
    state: State = {}
    for tagged, value in arrays.items():
        kind, key = tagged.split(":", 1)
        state[key] = np.array(value) if kind == "a" else (int(value[0]) if kind == "i" else float(value[0]))
    return state


def state_hash(state: State) -> str:
    """A short digest of a state: equal on every rank that holds the same state."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        h.update(key.encode())
        if isinstance(value, np.ndarray):
            h.update(str(value.dtype).encode() + str(value.shape).encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, (bool, np.bool_, int, np.integer)):  # numpy and Python scalars alike,
            h.update(repr(int(value)).encode())  # so that a JSON round trip keeps the hash
        else:
            h.update(repr(float(value)).encode())
    return h.hexdigest()[:16]
