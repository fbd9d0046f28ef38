"""k-means and metadata regions: determinism, planted clusters, empty clusters, validation, CSR, I/O."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aria.errors import UserError
from aria.data.regions import (Regions, assign, format_statistics, kmeans, kmeans_regions, metadata_regions,
                          region_statistics)


def planted(n=3000, k=6, d=24, seed=0, spread=0.15):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32) * 3
    truth = rng.integers(k, size=n)
    return (centers[truth] + spread * rng.normal(size=(n, d))).astype(np.float32), truth


def same_partition(a, b):
    """True when labels a and b define the same partition (up to renaming)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_planted_clusters_and_is_deterministic():
    x, truth = planted()
    c1, l1, info = kmeans(x, 6, seed=3)
    c2, l2, _ = kmeans(x, 6, seed=3)
    assert np.array_equal(l1, l2) and np.array_equal(c1, c2)
    assert same_partition(l1, truth)
    assert c1.shape == (6, 24) and c1.dtype == np.float32 and l1.dtype == np.int32
    # re-assigning the training points reproduces the labels; new points go to their cluster
    assert np.array_equal(assign(x, c1), l1)
    x_new, truth_new = planted(n=200, seed=0)[0][:200], truth[:200]
    assert same_partition(assign(x_new, c1), truth_new)


def test_kmeans_sample_warm_start_and_memmap(tmp_path):
    x, truth = planted(n=5000, k=8)
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    c, labels, info = kmeans(mm, 8, seed=0, sample_size=1000, chunk=700)
    assert info["sample"] == 1000 and same_partition(labels, truth)


def test_torch_path_matches_numpy():
    x, truth = planted(n=2000, k=5)
    c_np, l_np, _ = kmeans(x, 5, seed=1)
    c_t, l_t, _ = kmeans(x, 5, seed=1, backend="torch")
    assert np.array_equal(l_np, l_t)
    np.testing.assert_allclose(c_np, c_t, atol=1e-4)


def test_empty_clusters_with_fewer_distinct_points_than_k():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 8)).astype(np.float32)
    x = base[rng.integers(3, size=90)]
    regions = kmeans_regions(x, 5, seed=0)
    assert np.isfinite(regions.centroids).all()
    assert regions.sizes.sum() == 90 and (regions.sizes == 0).sum() == 2
    assert regions.info().num_regions == 5 and regions.info().active.sum() == 3


def test_reseed_moves_empty_cluster_to_far_point():
    from aria.data.regions import _reseed_empty

    sample = np.array([[0, 0], [0.1, 0], [10, 10]], np.float32)
    centers = np.array([[0.05, 0], [100, 100]], np.float32)
    out = _reseed_empty(centers.copy(), np.array([False, True]), sample)
    assert np.array_equal(out[1], [10, 10])


def test_k_one_and_validation():
    x, _ = planted(n=100, k=3)
    c, labels, _ = kmeans(x, 1)
    assert (labels == 0).all()
    np.testing.assert_allclose(c[0], x.mean(0), atol=1e-4)
    for k in (0, 101):
        with pytest.raises(UserError, match="regions.k"):
            kmeans(x, k)


def test_csr_members_cover_every_prompt_once():
    rng = np.random.default_rng(1)
    labels = rng.integers(7, size=500)
    labels[labels == 3] = 4  # region 3 empty
    r = Regions(labels, 8)
    assert r.offsets[0] == 0 and r.offsets[-1] == 500 and r.sizes[3] == 0 and r.sizes[7] == 0
    assert np.array_equal(np.sort(r.members), np.arange(500))
    for k in range(8):
        assert (labels[r.members_of(k)] == k).all() and len(r.members_of(k)) == (labels == k).sum()


def test_metadata_regions_shape_by_colour():
    shape = np.array([0, 1, 1, 7, 0])
    color = np.array([0, 2, 2, 7, 5])
    r = metadata_regions({"shape": shape, "color": color}, {"shape": 8, "color": 8},
                         {"shape": [f"s{i}" for i in range(8)], "color": [f"c{i}" for i in range(8)]})
    assert r.num_regions == 64 and r.centroids is None
    assert r.labels.tolist() == [0, 10, 10, 63, 5]
    assert r.names[10] == "s1/c2" and r.sizes[10] == 2
    with pytest.raises(ValueError):
        r.assign(np.zeros((1, 4), np.float32))


def test_statistics_and_roundtrip(tmp_path):
    x, truth = planted(n=300, k=3)
    r = kmeans_regions(x, 3, seed=0)
    regime = (np.arange(300) % 3).astype(np.int8)
    rows = region_statistics(r, paired_prompt_ids=np.array([0, 1, 2, 2]), regime_of_prompt=regime)
    assert sum(row["size"] for row in rows) == 300 and sum(row["paired"] for row in rows) == 4
    assert abs(sum(row["share_pool"] for row in rows) - 1) < 1e-9
    for row in rows:
        assert abs(row["seen"] + row["under"] + row["unseen"] - 1) < 1e-9
    assert len(format_statistics(rows).splitlines()) == 4 and "compositional" not in rows[0]
    four = region_statistics(r, regime_of_prompt=(np.arange(300) % 4).astype(np.int8))  # world v2's regimes
    assert all(abs(row["seen"] + row["under"] + row["unseen"] + row["compositional"] - 1) < 1e-9 for row in four)
    assert "compos" in format_statistics(four).splitlines()[0]
    with pytest.raises(ValueError, match="outside"):
        region_statistics(r, regime_of_prompt=np.full(300, 4, np.int8))
    r.save(tmp_path / "reg")
    back = Regions.load(tmp_path / "reg")
    assert np.array_equal(back.labels, r.labels) and np.array_equal(back.centroids, r.centroids)
    assert np.array_equal(back.members, r.members) and back.method == "kmeans"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 5), k_frac=st.floats(0, 1), distinct=st.integers(1, 60),
       huge=st.booleans(), seed=st.integers(0, 2**16))
def test_kmeans_regions_partition_adversarial_points(n, d, k_frac, distinct, huge, seed):
    """Duplicates, fewer distinct points than K, K = 1 and K = N, one region holding almost every
    point: every prompt lands in exactly one region, labels stay in range, the CSR layout covers
    each prompt once, and a rerun is identical."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(min(distinct, n), d)).astype(np.float32)
    x = base[rng.integers(len(base), size=n)]
    if huge and n > 2:
        x[: n - 2] = base[0]  # one point repeated almost everywhere
    k = max(1, round(k_frac * n))
    r = kmeans_regions(x, k, iterations=5, seed=seed)
    assert r.labels.shape == (n,) and r.labels.min() >= 0 and r.labels.max() < k
    assert r.sizes.sum() == n and r.offsets[-1] == n
    assert np.array_equal(np.sort(r.members), np.arange(n))
    assert np.array_equal(r.labels, kmeans_regions(x, k, iterations=5, seed=seed).labels)
    assert np.isfinite(r.centroids).all()
    again = r.assign(x)
    assert again.min() >= 0 and again.max() < k
    assert r.info().num_regions == k and r.info().sizes.sum() == n  # a valid RegionInfo (not all empty)
