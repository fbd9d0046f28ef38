"""prepare_data: a consistent bundle for the world (k-means and metadata regions) and for user files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aria.config import load_config
from aria.data.bundle import prepare_data
from aria.errors import UserError
from aria.world import regimes as R

ROOT = Path(__file__).resolve().parents[1]

WORLD = ["data.world.num_prompts=2000", "data.world.paired_size=3000", "regions.k=12"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(world_cache):
    return world_cache  # shared with test_kill_resume: the pool's embeddings are computed once


@pytest.fixture(scope="module")
def bundle(cache):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prepare_data(load_config(None, WORLD + [f"data.cache_dir={cache}"]))
    finally:
        torch.set_num_threads(n)


def check_csr(b):
    n = len(b.pool)
    assert b.region_of_prompt.shape == (n,) and b.region_of_prompt.dtype == np.int32
    assert b.region_offsets[0] == 0 and b.region_offsets[-1] == n
    assert np.array_equal(np.sort(b.region_members), np.arange(n))  # every prompt exactly once
    for k in range(len(b.region_offsets) - 1):
        members = b.region_members[b.region_offsets[k]:b.region_offsets[k + 1]]
        assert (b.region_of_prompt[members] == k).all()
    assert np.array_equal(b.region_info.sizes, np.diff(b.region_offsets))
    paired = np.zeros(len(b.region_offsets) - 1, dtype=np.int64)  # each paired image counted in its caption's region
    for prompt in b.paired_prompt_ids:
        paired[b.region_of_prompt[prompt]] += 1
    assert np.array_equal(b.region_info.paired, paired)


def test_world_bundle_is_consistent(bundle):
    b = bundle
    assert len(b.pool) == 2000 and b.region_info.num_regions == 12
    check_csr(b)
    combo = np.asarray(b.pool.meta("combo"))
    assert np.array_equal(b.regime_of_prompt, b.regimes[combo])
    m = len(b.paired_prompt_ids)
    assert m == 3000 and b.paired_images.shape == (m, 3, 32, 32) and b.paired_images.dtype == np.float32
    assert b.paired_images.min() >= -1 and b.paired_images.max() <= 1 and b.paired_images.std() > 0.1
    ids = b.paired_prompt_ids
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < len(b.pool)
    assert np.array_equal(combo[ids], b.paired_combos)  # each caption is a pool prompt of its image's combo
    assert set(np.unique(b.regime_of_prompt[ids])) == {R.SEEN, R.UNDER}  # never an unseen combination
    assert len(np.unique(b.paired_combos[b.regimes[b.paired_combos] == R.UNDER])) == (b.regimes == R.UNDER).sum()
    assert b.encoder.encode_tokens(b.pool.texts(ids[:2])).shape == (2, b.encoder.max_length, 384)
    assert b.stats["pool_size"] == 2000 and b.stats["regime_paired"][R.UNSEEN] == 0


def test_world_bundle_is_cached(bundle, cache, monkeypatch):
    import aria.data.regions

    monkeypatch.setattr(aria.data.regions, "kmeans", lambda *a, **k: pytest.fail("k-means re-ran"))
    again = prepare_data(load_config(None, WORLD + [f"data.cache_dir={cache}"]))
    assert again.stats["regions_cached"] and again.stats["paired_cached"]
    assert np.array_equal(again.region_of_prompt, bundle.region_of_prompt)
    assert np.array_equal(again.paired_images, bundle.paired_images)
    assert not list(cache.rglob("*.tmp*"))


def test_metadata_regions(bundle, cache):
    b = prepare_data(load_config(None, WORLD + [f"data.cache_dir={cache}", "regions.method=metadata"]))
    check_csr(b)
    shape, color = (np.asarray(b.pool.meta(k)).astype(np.int64) for k in ("shape", "color"))
    assert b.region_info.num_regions == 64 and np.array_equal(b.region_of_prompt, shape * 8 + color)
    assert b.regions.names[0] == "circle/red"
    with pytest.raises(UserError, match="metadata_keys"):
        prepare_data(load_config(None, WORLD + [f"data.cache_dir={cache}", "regions.method=metadata",
                                                "regions.metadata_keys=[shape, mood]"]))


def test_k_larger_than_pool(cache):
    with pytest.raises(UserError, match="regions.k"):
        prepare_data(load_config(None, ["data.world.num_prompts=2000", "data.world.paired_size=3000",
                                        "regions.k=2001", f"data.cache_dir={cache}"]))


def make_files(tmp_path, captions, sizes=None):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([f"a photo of object {i}" for i in range(20)] + ["a red cube"]) + "\n")
    paired = tmp_path / "paired"
    paired.mkdir()
    (paired / "captions.txt").write_text("\n".join(captions) + "\n")
    rng = np.random.default_rng(0)
    for i, size in enumerate(sizes or [40] * len(captions)):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(paired / f"{i:06d}.png")
    return prompts, paired


def files_config(tmp_path, prompts, paired, *extra):
    return load_config(None, ["data.source=files", f"data.prompts_file={prompts}", f"data.paired_dir={paired}",
                              f"data.cache_dir={tmp_path / 'cache'}", "regions.k=4", *extra])


def test_files_source(tmp_path):
    captions = ["a red cube", "a green cone", "a green cone", "  a blue ball  "]
    prompts, paired = make_files(tmp_path, captions, [40, 32, 17, 64])
    b = prepare_data(files_config(tmp_path, prompts, paired))
    assert len(b.pool) == 23 and b.regime_of_prompt is None
    check_csr(b)
    assert b.paired_images.shape == (4, 3, 32, 32)
    assert b.pool.texts(b.paired_prompt_ids) == ["a red cube", "a green cone", "a green cone", "a blue ball"]
    assert b.paired_prompt_ids[0] == 20  # already in the prompts file: not added twice
    again = prepare_data(files_config(tmp_path, prompts, paired))
    assert again.pool.content_hash == b.pool.content_hash and again.stats["regions_cached"]


def test_files_errors(tmp_path):
    prompts, paired = make_files(tmp_path, ["a", "b"])
    with pytest.raises(UserError, match="metadata"):
        prepare_data(files_config(tmp_path, prompts, paired, "regions.method=metadata"))
    (paired / "000001.png").unlink()
    with pytest.raises(UserError, match="000001.png"):
        prepare_data(files_config(tmp_path, prompts, paired))


def run_cli(args, capsys):
    from aria.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_regions_build_and_world_show(bundle, cache, tmp_path, capsys):
    sets = [x for item in WORLD + [f"data.cache_dir={cache}"] for x in ("--set", item)]
    code, out, err = run_cli(["regions", "build", *sets], capsys)
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["region", "name"])
    assert len(lines) - header - 1 == 12 and "pool: 2000 prompts" in out
    assert sum(int(line.split()[1]) for line in lines[header + 1:]) == 2000
    assert f"regions folder: {cache}/regions/kmeans-k12-s0-" in out  # the folder to copy to another machine
    code, out, err = run_cli(["regions", "build", *sets, "--set", "regions.k=0"], capsys)
    assert code == 2 and "regions.k" in err and err.strip().count("\n") == 0
    png = tmp_path / "grid.png"
    code, out, err = run_cli(["world", "show", "--out", str(png), "--n", "8", *sets], capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 200


def test_concepts_bundle_holds_out_whole_families(cache):
    """World v2 through prepare_data: every paired caption names its image's item, no paired image of
    an unseen family or of the compositional control, the regimes follow the items."""
    from aria.world import concepts, splits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = prepare_data(load_config(None, ["data.source=concepts", "data.concepts.num_prompts=1000",
                                            "data.concepts.paired_size=8000", "regions.k=6",
                                            f"data.cache_dir={cache}"]))
    finally:
        torch.set_num_threads(n)
    assert b.world.name == "concepts" and len(b.pool) == 1000
    check_csr(b)
    items = b.item_of_prompt
    assert np.array_equal(b.regime_of_prompt, b.regimes[items])
    assert np.array_equal(items[b.paired_prompt_ids], b.paired_combos)
    assert set(np.unique(b.regime_of_prompt[b.paired_prompt_ids])) <= {splits.SEEN, splits.UNDER}
    unseen = splits.held_out_families(0)
    assert not np.isin(b.family_of_prompt[b.paired_prompt_ids], unseen).any()
    assert np.isin(b.family_of_prompt, unseen).any()  # the pool names them: only the paired set lacks them
    assert np.array_equal(b.family_of_prompt, np.asarray(concepts.FAMILY_OF)[concepts.item_attributes(items)[0]])
    assert b.stats["regime_paired"][splits.UNSEEN] == 0 and b.stats["regime_paired"][splits.COMPOSITIONAL] == 0
    # a pool of fewer prompts than items: the paired set keeps its size on the items the pool names, and every
    # underrepresented concept its images (before, 8,000 shrank to a few hundred and some had none)
    assert len(b.paired_prompt_ids) == 8000
    under = np.flatnonzero(splits.concept_regimes(b.regimes) == splits.UNDER)
    paired_concepts = np.bincount(concepts.item_attributes(b.paired_combos)[0], minlength=concepts.NUM_CONCEPTS)
    assert (paired_concepts[under] == 4).all()
    assert (np.bincount(concepts.item_attributes(items)[0], minlength=concepts.NUM_CONCEPTS) > 0).all()


def test_regions_build_from_a_folder_made_elsewhere(bundle, cache, tmp_path, capsys):
    """--from takes a regions folder (as another machine's cache holds it) into a fresh cache instead of
    computing one: later runs find exactly those labels. Regions that do not fit the pool or k, or differ
    from those the cache already holds, are refused in one line."""
    from aria.data.regions import Regions

    assert bundle.regions.meta["pool"] == bundle.pool.content_hash  # what a copy is checked against
    made = Regions(bundle.regions.labels.copy(), 12, "kmeans", bundle.regions.centroids)
    moved = int(np.flatnonzero(made.labels == 0)[0])
    made.labels[moved] = 1  # a prompt near a boundary, placed differently on the other machine
    made.save(tmp_path / "elsewhere")
    fresh = [x for item in WORLD + [f"data.cache_dir={tmp_path / 'cache'}"] for x in ("--set", item)]
    code, out, err = run_cli(["regions", "build", *fresh, "--from", str(tmp_path / "elsewhere")], capsys)
    assert code == 0 and f"(taken from {tmp_path / 'elsewhere'})" in out, err
    assert not (tmp_path / "cache" / "embeddings").exists()  # nothing was encoded
    again = prepare_data(load_config(None, WORLD + [f"data.cache_dir={tmp_path / 'cache'}"]))
    assert np.array_equal(again.region_of_prompt, made.labels) and again.stats["regions_cached"]

    shared = [x for item in WORLD + [f"data.cache_dir={cache}"] for x in ("--set", item)]
    Regions(made.labels[:100], 12, "kmeans").save(tmp_path / "short")
    Regions(made.labels, 12, "kmeans", meta={"pool": "another-pool"}).save(tmp_path / "other-pool")
    for source, needle in ((tmp_path / "elsewhere", "the cache holds other regions of this pool"),
                           (tmp_path / "other-pool", "regions of another prompt pool (another-pool)"),
                           (tmp_path / "short", "kmeans regions of 100 prompts into 12, not k-means of this pool's"),
                           (tmp_path / "nothing", "not a regions folder")):
        code, out, err = run_cli(["regions", "build", *shared, "--from", str(source)], capsys)
        assert code == 2 and needle in err and err.strip().count("\n") == 0, err
    code, out, err = run_cli(["regions", "build", *fresh, "--set", "regions.k=11", "--from",
                              str(tmp_path / "elsewhere")], capsys)
    assert code == 2 and "into regions.k=11" in err
    code, out, err = run_cli(["regions", "build", *fresh, "--set", "regions.method=metadata", "--from",
                              str(tmp_path / "elsewhere")], capsys)
    assert code == 2 and "takes k-means regions; regions.method is metadata" in err


@pytest.mark.parametrize("split", [0, 1])
def test_the_shipped_split_regions_fit_the_concepts_experiment(tmp_path, split):
    """aria/world/assets/concepts-regions-splitN (the partition every run of split N is evaluated on) is taken
    in by prepare_data for configs/concepts-gpu.yaml's 200,000-prompt pool of that split, without encoding it;
    the other split's is refused."""
    from aria.data.regions import Regions
    from aria.world import concepts

    config = load_config(ROOT / "configs" / "concepts-gpu.yaml", [f"data.cache_dir={tmp_path}", "encoder.path=null",
                                                                  f"data.concepts.seed={split}"])
    assets = ROOT / "aria" / "world" / "assets"
    with pytest.raises(UserError, match="regions of another prompt pool"):
        prepare_data(config, regions_from=assets / f"concepts-regions-split{1 - split}")
    # taken in without their meta.pool (a digest of the generated captions): their fit to this machine's pool
    # is checked by what the labels do, not by a recorded digest
    shipped = Regions.load(assets / f"concepts-regions-split{split}")
    Regions(shipped.labels, shipped.num_regions, "kmeans", shipped.centroids).save(tmp_path / "shipped")
    b = prepare_data(config, regions_from=tmp_path / "shipped")
    assert len(b.region_of_prompt) == config.data.concepts.num_prompts and b.regions.num_regions == config.regions.k
    assert (b.regions.sizes > 0).all() and not (tmp_path / "embeddings").exists()
    family = concepts.FAMILY_OF[np.asarray(b.pool.meta("concept"))]
    purity = [np.bincount(family[b.regions.members_of(k)]).max() / b.regions.sizes[k] for k in range(64)]
    assert np.median(purity) > 0.9  # sentence embeddings cluster by family, as the world was designed for
