"""Regions of a prompt pool: k-means on pooled embeddings, or metadata (e.g. shape x colour).

k-means: k-means++ seeding on a sample, then chunked Lloyd iterations over the whole (possibly
memory-mapped) array with float32 matmuls, accumulating sums in float64; an empty cluster is
re-seeded with the sample point farthest from its centroid. Everything is deterministic from the
seed. A CUDA device runs the same algorithm in torch. Regions are stored as labels plus CSR
members (``offsets``, ``members``) and cached by pool hash, encoder identity, K and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from aria.errors import UserError

CHUNK = 65536


@dataclass
class Regions:
    """A partition of N prompts into K regions (some may be empty)."""

    labels: np.ndarray  # int32 (N,)
    num_regions: int
    method: str = "kmeans"
    centroids: Optional[np.ndarray] = None  # float32 (K, D) for k-means
    names: Optional[list[str]] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32)
        sizes = np.bincount(self.labels, minlength=self.num_regions)
        if sizes.size != self.num_regions:
            raise ValueError("a label is >= num_regions")
        self.sizes = sizes.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.members = np.argsort(self.labels, kind="stable").astype(np.int64)

    def members_of(self, k: int) -> np.ndarray:
        return self.members[self.offsets[k] : self.offsets[k + 1]]

    def paired_counts(self, paired_prompt_ids) -> np.ndarray:
        """Paired images per region (the region of each paired image's caption)."""
        return np.bincount(self.labels[np.asarray(paired_prompt_ids, np.int64)], minlength=self.num_regions)

    def info(self, paired_prompt_ids=None):
        """What a strategy is told about the regions: sizes, and paired images per region when given."""
        from aria.strategies.base import RegionInfo

        return RegionInfo(self.sizes, None if paired_prompt_ids is None else self.paired_counts(paired_prompt_ids))

    def assign(self, embeddings: np.ndarray, device: str | None = None) -> np.ndarray:
        """Nearest centroid of new (pooled) embeddings."""
        if self.centroids is None:
            raise ValueError(f"{self.method} regions have no centroids; assign by metadata instead")
        return assign(embeddings, self.centroids, device=device)

    def save(self, folder: Path) -> Path:
        """Write ``labels.npy``, ``centroids.npy`` (k-means) and ``regions.json`` atomically."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        tmp.mkdir(parents=True)
        try:
            np.save(tmp / "labels.npy", self.labels)
            if self.centroids is not None:
                np.save(tmp / "centroids.npy", self.centroids.astype(np.float32))
            info = {"num_regions": self.num_regions, "method": self.method, "names": self.names, "meta": self.meta}
            (tmp / "regions.json").write_text(json.dumps(info, indent=1))
            try:
                os.replace(tmp, folder)
            except OSError:  # another writer got there first: its content is identical
                if not (folder / "regions.json").is_file():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: Path) -> "Regions":
        folder = Path(folder)
        info = json.loads((folder / "regions.json").read_text())
        cpath = folder / "centroids.npy"
        return cls(np.load(folder / "labels.npy"), info["num_regions"], info["method"],
                   np.load(cpath) if cpath.is_file() else None, info.get("names"), info.get("meta", {}))


def _check_k(k: int, n: int):
    if k < 1 or k > n:
        raise UserError(f"regions.k={k} must be between 1 and the number of prompts ({n})")


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _nearest(x: np.ndarray, c: np.ndarray, c_sq: np.ndarray):
    """(labels, squared distances) of rows of x (float32) to centroids c."""
    d = c_sq[None, :] - 2.0 * (x @ c.T)
    lab = np.argmin(d, axis=1)
    dist = d[np.arange(len(x)), lab] + _sq_norms(x)
    return lab.astype(np.int32), np.maximum(dist, 0)


def _kmeanspp(sample: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (2 + log k local trials per centre, as scikit-learn)."""
    n = len(sample)
    trials = 2 + int(np.log(k))
    x_sq = _sq_norms(sample)
    centers = np.empty((k, sample.shape[1]), np.float32)
    centers[0] = sample[rng.integers(n)]
    closest = np.maximum(x_sq - 2 * sample @ centers[0] + centers[0] @ centers[0], 0)
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: duplicates become (later empty) centres
            centers[i] = sample[rng.integers(n)]
            continue
        cand = np.searchsorted(np.cumsum(closest, dtype=np.float64), rng.random(trials) * total)
        cand = np.minimum(cand, n - 1)
        c = sample[cand]
        d = np.maximum(x_sq[None, :] - 2 * (c @ sample.T) + _sq_norms(c)[:, None], 0)
        d = np.minimum(d, closest[None, :])
        best = int(np.argmin(d.sum(1)))
        centers[i], closest = c[best], d[best]
    return centers


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def _sum_by_label(lab: np.ndarray, xb: np.ndarray, k: int) -> np.ndarray:
    import scipy.sparse as sp

    onehot = sp.csr_matrix((np.ones(len(lab), np.float32), (lab, np.arange(len(lab)))), shape=(k, len(lab)))
    return np.asarray(onehot @ xb, dtype=np.float64)


def _lloyd_numpy(x, centers, iterations, tol, sample, chunk):
    """Exact Lloyd passes over x in chunks; returns (centres, inertia, passes)."""
    n, k = len(x), len(centers)
    inertia = np.inf
    for it in range(iterations):
        c_sq = _sq_norms(centers)
        sums = np.zeros((k, x.shape[1]), np.float64)
        counts = np.zeros(k, np.int64)
        new_inertia = 0.0
        for s, e in _chunks(n, chunk):
            xb = np.ascontiguousarray(x[s:e], dtype=np.float32)
            lab, dist = _nearest(xb, centers, c_sq)
            new_inertia += float(dist.sum(dtype=np.float64))
            sums += _sum_by_label(lab, xb, k)
            counts += np.bincount(lab, minlength=k)
        new = centers.copy()
        nz = counts > 0
        new[nz] = (sums[nz] / counts[nz, None]).astype(np.float32)
        new = _reseed_empty(new, ~nz, sample)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        done = abs(inertia - new_inertia) <= tol * max(new_inertia, 1e-12) and nz.all()
        inertia = new_inertia
        if done or shift == 0.0:
            break
    return centers, inertia, it + 1


def _reseed_empty(centers, empty, sample):
    """Move each empty centre to the sample point farthest from its nearest centre."""
    if not empty.any():
        return centers
    lab, dist = _nearest(sample, centers[~empty], _sq_norms(centers[~empty]))
    order = np.argsort(-dist, kind="stable")
    for j, idx in zip(np.flatnonzero(empty), order):
        if dist[idx] <= 0:
            break  # every sample point coincides with a centre: leave the cluster empty
        centers[j] = sample[idx]
    return centers


def _lloyd_torch(x, centers, iterations, tol, sample, chunk, device):
    import torch

    n, k = len(x), len(centers)
    on_dev = x.nbytes < 0.4 * torch.cuda.mem_get_info(device)[0] if str(device).startswith("cuda") else False
    xd = torch.as_tensor(np.ascontiguousarray(x), device=device).float() if on_dev else None
    c = torch.as_tensor(centers, device=device)
    inertia = float("inf")
    for it in range(iterations):
        c_sq = (c * c).sum(1)
        sums = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=device)
        counts = torch.zeros(k, dtype=torch.int64, device=device)
        new_inertia = 0.0
        for s, e in _chunks(n, chunk):
            xb = xd[s:e] if on_dev else torch.as_tensor(np.ascontiguousarray(x[s:e], np.float32), device=device)
            d = c_sq[None] - 2.0 * (xb @ c.T)
            val, lab = d.min(1)
            new_inertia += float((val + (xb * xb).sum(1)).clamp_min(0).sum(dtype=torch.float64))
            sums.index_add_(0, lab, xb.double())
            counts += torch.bincount(lab, minlength=k)
        nz = (counts > 0).cpu().numpy()
        new = c.cpu().numpy().copy()
        new[nz] = (sums[torch.as_tensor(nz, device=device)]
                   / counts[torch.as_tensor(nz, device=device), None]).float().cpu().numpy()
        new = _reseed_empty(new, ~nz, sample)
        done = abs(inertia - new_inertia) <= tol * max(new_inertia, 1e-12) and nz.all()
        shift = float(((new - c.cpu().numpy()) ** 2).sum())
        c, inertia = torch.as_tensor(new, device=device), new_inertia
        if done or shift == 0.0:
            break
    return c.cpu().numpy(), inertia, it + 1


def kmeans(x: np.ndarray, k: int = 64, iterations: int = 30, seed: int = 0, sample_size: int = 100_000,
           tol: float = 1e-4, chunk: int = CHUNK, device: str | None = None, ram_bytes: float = 4e9,
           backend: str | None = None):
    """(centroids float32 (k, D), labels int32 (N,), info) of the rows of x (any float dtype, memmap ok).

    k-means++ on a sample of ``max(sample_size, 16 k)`` rows, Lloyd on that sample (mini-batch
    warm start), then at most ``iterations`` exact chunked passes over all rows until the
    relative inertia change is below ``tol``. x is copied to float32 RAM when under ``ram_bytes``.
    ``backend``: "numpy" or "torch" (on ``device``); default torch on a CUDA device, else numpy.
    """
    n = len(x)
    _check_k(int(k), n)
    rng = np.random.default_rng([seed, 0x6B6D])
    size = min(n, max(sample_size, 16 * k))
    idx = np.arange(n) if size == n else np.sort(rng.choice(n, size=size, replace=False))
    sample = np.asarray(x[idx], dtype=np.float32)
    seed_rows = sample if size <= 20_000 else sample[np.sort(rng.choice(size, 20_000, replace=False))]
    centers = _kmeanspp(seed_rows, int(k), rng)
    cuda = device is not None and str(device).startswith("cuda")
    use_torch = backend == "torch" or (backend is None and cuda)
    if size < n:  # warm start on the sample
        centers, _, _ = _lloyd_numpy(sample, centers, iterations, tol, sample, chunk)
    if not cuda and x.dtype != np.float32 and n * x.shape[1] * 4 <= ram_bytes:
        x = np.asarray(x, dtype=np.float32)
    if use_torch:
        centers, inertia, its = _lloyd_torch(x, centers, iterations, tol, sample, chunk, device or "cpu")
    else:
        centers, inertia, its = _lloyd_numpy(x, centers, iterations, tol, sample, chunk)
    labels = assign(x, centers, chunk=chunk, device=device)
    return centers, labels, {"inertia": inertia, "passes": its, "sample": int(size)}


def assign(x: np.ndarray, centroids: np.ndarray, chunk: int = CHUNK, device: str | None = None) -> np.ndarray:
    """Nearest-centroid labels (int32) of rows of x, chunked."""
    centroids = np.asarray(centroids, np.float32)
    out = np.empty(len(x), np.int32)
    if device is not None and str(device).startswith("cuda"):
        import torch

        c = torch.as_tensor(centroids, device=device)
        c_sq = (c * c).sum(1)
        for s, e in _chunks(len(x), chunk):
            xb = torch.as_tensor(np.ascontiguousarray(x[s:e], np.float32), device=device)
            out[s:e] = (c_sq[None] - 2.0 * (xb @ c.T)).argmin(1).cpu().numpy()
        return out
    c_sq = _sq_norms(centroids)
    for s, e in _chunks(len(x), chunk):
        out[s:e] = _nearest(np.ascontiguousarray(x[s:e], np.float32), centroids, c_sq)[0]
    return out


def kmeans_regions(embeddings: np.ndarray, k: int, iterations: int = 30, seed: int = 0,
                   device: str | None = None) -> Regions:
    """k-means regions of pooled embeddings (see ``kmeans``)."""
    centers, labels, info = kmeans(embeddings, k, iterations, seed, device=device)
    return Regions(labels, int(k), "kmeans", centers, None, {"seed": seed, **info})


def metadata_regions(columns: dict[str, np.ndarray], cardinalities: dict[str, int] | None = None,
                     value_names: dict[str, Sequence[str]] | None = None) -> Regions:
    """One region per combination of the given integer columns (mixed radix over their ranges).

    With ``cardinalities`` every combination is a region (possibly empty); without, a column's
    range is 0..max. ``value_names`` (column -> names) labels regions like ``circle/red``.
    """
    if not columns:
        raise UserError("regions.metadata_keys is empty")
    keys = list(columns)
    cols = [np.asarray(columns[key], np.int64) for key in keys]
    cards = [int((cardinalities or {}).get(key, int(c.max()) + 1 if c.size else 1)) for key, c in zip(keys, cols)]
    labels = np.zeros(len(cols[0]), np.int64)
    for c, card in zip(cols, cards):
        if c.size and (c.min() < 0 or c.max() >= card):
            raise ValueError("metadata value out of range")
        labels = labels * card + c
    num = int(np.prod(cards))
    names = None
    if value_names:
        grids = np.unravel_index(np.arange(num), cards)
        names = ["/".join(str(value_names[key][g[i]]) if key in value_names else str(g[i])
                          for key, g in zip(keys, grids)) for i in range(num)]
    return Regions(labels.astype(np.int32), num, "metadata", None, names, {"keys": keys, "cardinalities": cards})


def region_statistics(regions: Regions, paired_prompt_ids: np.ndarray | None = None,
                      regime_of_prompt: np.ndarray | None = None,
                      regime_names: Sequence[str] = ("seen", "under", "unseen", "compositional")) -> list[dict]:
    """Per region: size, share of the pool, paired images and share of them, and the share of its
    prompts in each regime of ``regime_names`` that occurs (regime index i is ``regime_names[i]``)."""
    n = len(regions.labels)
    paired = np.zeros(regions.num_regions, np.int64)
    if paired_prompt_ids is not None and len(paired_prompt_ids):
        paired = regions.paired_counts(paired_prompt_ids)
    mix, names = None, []
    if regime_of_prompt is not None:
        regime = np.asarray(regime_of_prompt, np.int64)
        if regime.size and (regime.min() < 0 or regime.max() >= len(regime_names)):
            raise ValueError(f"regime indices {regime.min()}..{regime.max()} outside {list(regime_names)}")
        mix = np.zeros((regions.num_regions, len(regime_names)), np.int64)
        np.add.at(mix, (regions.labels, regime), 1)
        names = [name for i, name in enumerate(regime_names) if i < 3 or mix[:, i].any()]
    rows = []
    for k in range(regions.num_regions):
        size = int(regions.sizes[k])
        row = {"region": k, "name": regions.names[k] if regions.names else "", "size": size,
               "share_pool": size / n, "paired": int(paired[k]),
               "share_paired": float(paired[k] / max(paired.sum(), 1))}
        row.update({name: float(mix[k, regime_names.index(name)] / max(size, 1)) for name in names})
        rows.append(row)
    return rows


def format_statistics(rows: list[dict]) -> str:
    """A fixed-width table of ``region_statistics`` rows."""
    fixed = ("region", "name", "size", "share_pool", "paired", "share_paired")
    regimes = [key for key in (rows[0] if rows else {}) if key not in fixed]
    head = f"{'region':>6} {'name':<18} {'size':>8} {'pool%':>6} {'paired':>6} {'pair%':>6}"
    head += "".join(f" {name[:6]:>6}" for name in regimes)
    lines = [head]
    for r in rows:
        line = (f"{r['region']:>6} {r['name'][:18]:<18} {r['size']:>8} {100 * r['share_pool']:>6.2f}"
                f" {r['paired']:>6} {100 * r['share_paired']:>6.2f}")
        line += "".join(f" {r[name]:>6.2f}" for name in regimes)
        lines.append(line)
    return "\n".join(lines)


def regions_cache_dir(cache_dir: Path, pool_hash: str, encoder_identity: str, method: str, k: int,
                      seed: int, iterations: int, extra: str = "") -> Path:
    key = hashlib.sha256(f"{pool_hash}|{encoder_identity}|{method}|{k}|{seed}|{iterations}|{extra}".encode())
    return Path(cache_dir) / "regions" / f"{method}-k{k}-s{seed}-{key.hexdigest()[:16]}"
