"""PromptPool (memory-mapped, streamed, atomic, validated) and the world's prompt pool."""

import json
import time

import numpy as np
import pytest

from aria.data.corpus import PromptPool
from aria.data.bundle import build_world_pool
from aria.errors import UserError
from aria.world import prompts, shapes

TEXTS = ["a red circle", "ünïcødé ✓ prompt", "", "x" * 300, "a blue square, top left", "日本語のプロンプト"]


@pytest.fixture()
def small_pool(tmp_path):
    meta = {"combo": np.arange(len(TEXTS), dtype=np.int32), "vec": np.ones((len(TEXTS), 2), np.float32)}
    return PromptPool.write(tmp_path / "pool", iter(TEXTS), meta=meta, params={"kind": "test"})


def test_pool_round_trip_memory_mapped(small_pool, tmp_path):
    pool = PromptPool.open(tmp_path / "pool")
    assert len(pool) == len(TEXTS)
    assert [pool[i] for i in range(len(pool))] == TEXTS
    assert pool[-1] == TEXTS[-1] and pool[np.int64(1)] == TEXTS[1]
    assert pool.texts([4, 0, 4]) == [TEXTS[4], TEXTS[0], TEXTS[4]]
    assert isinstance(pool._offsets, np.memmap) and isinstance(pool._texts, np.memmap)
    assert isinstance(pool.meta("combo"), np.memmap) and pool.meta("combo").dtype == np.int32
    assert pool.meta("vec").shape == (len(TEXTS), 2)
    assert pool.meta_names == ["combo", "vec"] and pool.params == {"kind": "test"}
    with pytest.raises(IndexError):
        pool[len(TEXTS)]
    with pytest.raises(UserError, match="no metadata 'shape'"):
        pool.meta("shape")


def test_pickles_as_its_path(small_pool):
    import pickle

    data = pickle.dumps(small_pool)
    assert len(data) < 500 and pickle.loads(data).texts([1, 5]) == [TEXTS[1], TEXTS[5]]


def test_chunks_cover_everything_once(small_pool):
    for size in (1, 4, 6, 100):
        chunks = list(small_pool.iter_chunks(size))
        assert [t for c in chunks for t in c] == TEXTS
        assert all(len(c) <= size for c in chunks)
    assert list(small_pool) == TEXTS


def test_content_hash_is_stable_and_boundary_sensitive(tmp_path, small_pool):
    again = PromptPool.write(tmp_path / "again", TEXTS)
    assert again.content_hash == small_pool.content_hash and len(small_pool.content_hash) == 64
    moved = PromptPool.write(tmp_path / "moved", ["a red", " circle"] + TEXTS[1:])
    joined = PromptPool.write(tmp_path / "joined", ["a red circle"] + TEXTS[1:])
    assert moved.content_hash != joined.content_hash
    assert joined.content_hash != PromptPool.write(tmp_path / "other", TEXTS[:-1]).content_hash


def test_crashed_write_leaves_no_openable_pool(tmp_path):
    def crashing():
        yield "one"
        yield "two"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        PromptPool.write(tmp_path / "pool", crashing())
    assert not (tmp_path / "pool").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too
    with pytest.raises(UserError, match="does not exist"):
        PromptPool.open(tmp_path / "pool")


def test_partial_or_corrupt_folders_do_not_open(tmp_path, small_pool):
    (tmp_path / "partial").mkdir()
    np.save(tmp_path / "partial" / "offsets.npy", np.array([0, 3], dtype=np.int64))
    (tmp_path / "partial" / "texts.bin").write_bytes(b"abc")
    with pytest.raises(UserError, match="not a complete prompt pool"):
        PromptPool.open(tmp_path / "partial")
    with open(small_pool.path / "texts.bin", "ab") as f:  # truncated / appended texts
        f.write(b"junk")
    with pytest.raises(UserError, match="corrupt"):
        PromptPool.open(small_pool.path)


def test_failed_rewrite_keeps_the_old_pool(small_pool):
    with pytest.raises(TypeError):
        PromptPool.write(small_pool.path, ["fine", 3])
    assert PromptPool.open(small_pool.path).texts(range(len(TEXTS))) == TEXTS


def test_empty_write_is_refused(tmp_path):
    with pytest.raises(UserError, match="no prompts"):
        PromptPool.write(tmp_path / "pool", [])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- user prompt files

def _write(tmp_path, data: bytes, name="prompts.txt"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_text_file_pool(tmp_path):
    path = _write(tmp_path, "\ufeffa cat\r\n  a dog  \na cat\na bird\n".encode())
    pool = PromptPool.from_text_file(path, tmp_path / "pool")
    assert pool.texts(range(len(pool))) == ["a cat", "a dog", "a bird"]
    assert pool.params["source"]["duplicates"] == 1 and pool.params["source"]["lines"] == 4
    assert PromptPool.from_text_file(path, tmp_path / "pool").info == pool.info  # reused
    _write(tmp_path, b"a cat\na fish\n")
    assert PromptPool.from_text_file(path, tmp_path / "pool").texts([0, 1]) == ["a cat", "a fish"]


def test_blank_lines_allowed_only_explicitly(tmp_path):
    path = _write(tmp_path, b"a cat\n\na dog\n")
    pool = PromptPool.from_text_file(path, tmp_path / "pool", allow_blank=True)
    assert len(pool) == 2 and pool.params["source"]["blank_lines"] == 1


@pytest.mark.parametrize("data, message", [
    (b"", "is empty"),
    (b"a cat\n   \na dog\n", "line 2 is blank"),
    (b"same\nsame\nsame\n", "only 1 distinct prompt in 3 lines"),
    (b"fine\nok\nbad \xff byte\n", r"line 3: invalid UTF-8 at byte 12"),
    (b"fine\n" + b"y" * 1001 + b"\n", "line 2 is too long"),
])
def test_bad_prompt_files(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(UserError, match=message) as err:
        PromptPool.from_text_file(path, tmp_path / "pool")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "pool").exists()


def test_missing_prompt_file(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        PromptPool.from_text_file(tmp_path / "nope.txt", tmp_path / "pool")
    assert "nope.txt" in str(err.value)


# ---------------------------------------------------------------- the world's pool

@pytest.fixture(scope="module")
def world_pool(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "pool"
    start = time.perf_counter()
    pool = build_world_pool(path, num_prompts=100_000, skew=1.0, seed=0)
    return pool, time.perf_counter() - start


def test_world_pool_exact_distinct_and_fast(world_pool):
    pool, seconds = world_pool
    assert len(pool) == 100_000 and seconds < 10
    texts = [t for chunk in pool.iter_chunks(25_000) for t in chunk]
    assert len(set(texts)) == 100_000
    combos = np.asarray(pool.meta("combo"))
    assert combos.dtype == np.int32
    for attr, values in zip(shapes.ATTRIBUTES, shapes.combo_attributes(combos)):
        assert np.array_equal(pool.meta(attr), values)


def test_world_pool_frequency_long_tailed_and_complete(world_pool):
    pool, _ = world_pool
    counts = np.bincount(pool.meta("combo"), minlength=shapes.NUM_COMBOS)
    assert np.array_equal(counts, prompts.prompt_counts(100_000, 1.0, 0))
    assert counts.min() >= prompts.MIN_PROMPTS_PER_COMBO
    ordered = np.sort(counts)[::-1]
    assert ordered[0] > 50 * ordered[-1]
    assert ordered[:100].sum() > 0.4 * counts.sum()  # top 6% of combinations hold over 40% of prompts
    rank_of = np.argsort(np.argsort(-prompts.combo_frequencies(1.0, 0)))
    assert np.corrcoef(np.log(counts), np.log(rank_of + 1))[0, 1] < -0.9


def test_prompts_name_exactly_their_attributes(world_pool):
    pool, _ = world_pool
    sample = np.random.default_rng(0).choice(len(pool), 3000, replace=False)
    combos = np.asarray(pool.meta("combo"))[sample]
    truth = np.stack(shapes.combo_attributes(combos), axis=1)
    parsed = np.array([[p[a] for a in shapes.ATTRIBUTES] for p in map(prompts.parse_prompt, pool.texts(sample))])
    assert np.array_equal(parsed, truth)


def test_parser_detects_missing_and_conflicting_words():
    parsed = prompts.parse_prompt("a tiny crimson disc in the upper left")
    assert parsed == {"shape": 0, "color": 0, "size": 0, "position": 0}
    assert prompts.parse_prompt("a red circle")["position"] == prompts.MISSING
    assert prompts.parse_prompt("a red or blue circle on the left")["color"] == prompts.CONFLICT
    assert prompts.parse_prompt("a circle at the top left and bottom")["position"] == prompts.CONFLICT


def test_phrasings_are_distinct_strings():
    """Every distinct slot choice gives a distinct string (exhaustive for one combination)."""
    for combo in (shapes.combo_index(6, 5, 1, 4),):
        choices = []
        for template in range(len(prompts.TEMPLATES)):
            sizes = prompts._slot_sizes(np.array([combo]), np.array([template]))[0]
            grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
            grid[:, 0] = template
            choices.append(grid)
        choices = np.concatenate(choices)
        texts = list(prompts._phrases(np.full(len(choices), combo), choices))
        assert len(texts) == prompts.phrasing_capacity([combo])[0] == len(set(texts))


def test_world_pool_is_deterministic_and_cached(tmp_path, world_pool):
    pool, _ = world_pool
    small = build_world_pool(tmp_path / "a", 5_000, 1.5, seed=3)
    assert build_world_pool(tmp_path / "b", 5_000, 1.5, seed=3).content_hash == small.content_hash
    assert build_world_pool(tmp_path / "c", 5_000, 1.5, seed=4).content_hash != small.content_hash
    stamp = (tmp_path / "a" / "texts.bin").stat().st_mtime_ns
    assert build_world_pool(tmp_path / "a", 5_000, 1.5, seed=3).content_hash == small.content_hash
    assert (tmp_path / "a" / "texts.bin").stat().st_mtime_ns == stamp  # reused, not rewritten
    rebuilt = build_world_pool(tmp_path / "a", 6_000, 1.5, seed=3)
    assert len(rebuilt) == 6_000 and json.loads((tmp_path / "a" / "pool.json").read_text())["count"] == 6_000


def test_world_pool_size_limits(tmp_path):
    with pytest.raises(UserError, match="below 1728"):
        build_world_pool(tmp_path / "p", 1_000, 1.0, 0)
    with pytest.raises(UserError, match="exceeds"):
        prompts.prompt_counts(10**9, 1.0, 0)
