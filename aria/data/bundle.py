"""``prepare_data(config) -> DataBundle``: prompt pool, encoder, regions, paired set, regimes.

``data.source == "shapes"``: the world pool (``aria.world.prompts``), the regime split and the
paired set rendered by ``aria.world``. ``"files"``: a prompts file (text, JSONL or CSV, with optional
``group`` and ``regime`` per prompt: ``aria.data.corpus``) plus ``paired_dir`` holding ``captions.txt``
(line i <-> ``{i:06d}.png``); the captions join the pool (regime seen, no group).

Everything heavy is cached under ``data.cache_dir`` (pool, pooled embeddings, regions, paired
set), keyed by content hashes. Several ranks: every artefact is written to a unique temp path
and renamed into place, so ranks never see a partial file whether or not they share the
filesystem (identical content: whichever rename lands last wins). When ``torch.distributed`` is
initialised, rank 0 builds first while the others wait at a barrier, then load (shared
filesystem) or build their own copy (node-local caches). Nothing here prints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from aria.errors import UserError, short_repr


@dataclass
class DataBundle:
    pool: Any  # PromptPool
    region_of_prompt: np.ndarray  # int32 (N,)
    region_offsets: np.ndarray  # int64 (K+1,)
    region_members: np.ndarray  # int64 (N,)
    region_info: Any  # RegionInfo
    paired_images: np.ndarray  # float32 (M, C, H, W) in [-1, 1]
    paired_prompt_ids: np.ndarray  # int64 (M,)
    regime_of_prompt: Optional[np.ndarray]  # int8 (N,) or None
    encoder: Any  # TextEncoder
    regions: Any = None  # aria.data.regions.Regions (centroids, names)
    regimes: Optional[np.ndarray] = None  # int8 per item (world)
    paired_combos: Optional[np.ndarray] = None  # int64 (M,): the item of each paired image (world)
    stats: dict = field(default_factory=dict)
    world: Any = None  # aria.world.worlds.World of an embedded world, None for user files
    group_of_prompt: Optional[np.ndarray] = None  # int32 (N,), -1 for none: a prompts file's groups
    group_names: tuple = ()  # group index -> name

    @property
    def item_of_prompt(self) -> Optional[np.ndarray]:
        """The world item (v1 combination, v2 concept with attributes) of every pool prompt."""
        return None if self.world is None else np.asarray(self.pool.meta(self.world.meta_key), dtype=np.int64)

    @property
    def family_of_prompt(self) -> Optional[np.ndarray]:
        """The concept family of every pool prompt (world v2), else None."""
        return None if self.world is None or not self.world.family_key else np.asarray(self.pool.meta("family"))


def _key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _dist():
    """(rank, world size, barrier) from torch.distributed when initialised, else (0, 1, no-op)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size(), dist.barrier
    except ImportError:
        pass
    return 0, 1, lambda: None


def _atomic_save_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- pools ---------------------------------------------------------------------------------------

def world_pool(config):
    """The world's prompt pool for ``config.data.world``, cached under ``data.cache_dir``."""
    w = config.data.world
    folder = Path(config.data.cache_dir) / "pools" / f"world-{_key(w.num_prompts, w.skew, w.seed)}"
    return build_world_pool(folder, w.num_prompts, w.skew, w.seed)


def build_world_pool(path: Path | str, num_prompts: int, skew: float, seed: int):
    """The world's pool at ``path``; an existing pool made with the same parameters is reused."""
    from aria.world.prompts import GENERATOR_VERSION, generate

    return _world_pool_at(Path(path), "shapes", GENERATOR_VERSION, num_prompts, skew, seed,
                          lambda: generate(num_prompts, skew, seed))


def embedded_world_pool(config):
    """The pool of ``config``'s embedded world (``data.source`` shapes or concepts); a UserError otherwise."""
    if config.data.source == "shapes":
        return world_pool(config)
    if config.data.source == "concepts":
        return concepts_pool(config)
    raise UserError(f"data.source {config.data.source!r} is not an embedded world (shapes or concepts)")


def concepts_pool(config):
    """World v2's prompt pool for ``config.data.concepts``, cached under ``data.cache_dir``."""
    from aria.world import captions

    c = config.data.concepts
    path = Path(config.data.cache_dir) / "pools" / f"concepts-{_key(c.num_prompts, c.skew, c.seed)}"
    return _world_pool_at(path, "concepts", captions.GENERATOR_VERSION, c.num_prompts, c.skew, c.seed,
                          lambda: captions.generate_captions(c.num_prompts, c.skew, c.seed)[::-1])


def _world_pool_at(path: Path, world_name: str, version: int, num_prompts: int, skew: float, seed: int, generate):
    """World ``world_name``'s pool at ``path``: an existing one made with the same parameters, else
    ``generate()``'s (items, texts) written there, with each prompt's item, attributes and family."""
    from aria.data.corpus import PromptPool
    from aria.world.worlds import WORLDS

    world = WORLDS[world_name]
    params = {"world": world_name, "generator_version": version,
              "num_prompts": int(num_prompts), "skew": float(skew), "seed": int(seed)}
    existing = _open_matching(path, params)
    if existing is not None:
        return existing
    items, texts = generate()
    meta = {world.meta_key: np.asarray(items).astype(np.int32)}
    meta.update({a: v.astype(np.int8) for a, v in zip(world.attributes, world.attributes_of(items))})
    if world.family_key:
        meta["family"] = world.family_of(items).astype(np.int8)
    try:
        return PromptPool.write(path, texts, meta=meta, params=params)
    except OSError:  # another process renamed the same pool into place first
        existing = _open_matching(path, params)
        if existing is None:
            raise
        return existing


def _open_matching(path: Path, params: dict):
    from aria.data.corpus import PromptPool

    if not (path / "pool.json").is_file():
        return None
    try:
        pool = PromptPool.open(path)
    except UserError:
        return None
    return pool if pool.params == params else None


def concepts_paired_items(config, regimes: np.ndarray) -> np.ndarray:
    """The items of world v2's paired images (``splits.paired_items``), among the items its pool names (a pool
    of fewer prompts than items names only some: ``captions.prompt_counts``); a one-line UserError where the
    sizes do not fit."""
    from aria.world import captions, splits

    c = config.data.concepts
    try:
        named = captions.prompt_counts(c.num_prompts, c.skew, c.seed) > 0
        return splits.paired_items(regimes, c.paired_size, c.under_images,
                                   captions.concept_frequencies(c.skew, c.seed), c.seed, named=named)
    except ValueError as err:
        raise UserError(f"data.concepts: {err}") from None


def concepts_paired(config, pool, regimes: np.ndarray):
    """(uint8 images (M, 32, 32, 3), prompt ids (M,), items (M,), cached) of world v2's paired set."""
    return _paired_set(config, pool, "concepts", "concepts", config.data.concepts,
                       lambda: concepts_paired_items(config, regimes))


def concepts_regimes(config) -> np.ndarray:
    """int8 regime of every world v2 item (``aria.world.splits``), from ``data.concepts``."""
    from aria.world import splits

    c = config.data.concepts
    try:
        return np.asarray(splits.split_items(c.seed, c.unseen_families, c.under_concepts, c.compositional_fraction),
                          np.int8)
    except ValueError as err:
        raise UserError(f"data.concepts: {err}") from None


def _read_lines(path: Path, what: str) -> list[str]:
    if not Path(path).is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not valid UTF-8 (byte {err.start})") from err
    if lines:
        lines[0] = lines[0].lstrip("\ufeff")
    return [line.strip() for line in lines]


def files_pool(config, captions: list[str]):
    """(pool, caption ids): ``data.prompts_file`` as a pool, plus the paired captions it lacks (regime
    seen, no group). A prompt the file marks unseen must have no paired image."""
    from aria.data.corpus import NO_GROUP, PROMPT_REGIMES, PromptPool

    cache = Path(config.data.cache_dir) / "pools"
    prompts_file = Path(config.data.prompts_file)
    if not prompts_file.is_file():
        raise UserError(f"data.prompts_file {prompts_file} "
                        f"{'is not a file' if prompts_file.exists() else 'does not exist'}")
    base = PromptPool.from_text_file(prompts_file, cache / f"prompts-{_key(prompts_file.resolve())}")
    first: dict[str, int] = {}
    wanted = set(captions)
    for i, text in enumerate(base):
        if text in wanted and text not in first:
            first[text] = i
    extra = list(dict.fromkeys(c for c in captions if c not in first))
    pool = base
    if extra:
        params = {"base": base.content_hash, "source": base.params.get("source", {}).get("sha256"),
                  "captions": _key(*extra), **({"groups": base.group_names} if base.group_names else {})}
        folder = cache / f"files-{_key(base.content_hash, params['source'], params['captions'])}"
        try:
            pool = PromptPool.open(folder)
            if pool.params != params:
                raise UserError("stale")
        except UserError:
            meta = {name: np.concatenate([np.asarray(base.meta(name)),
                                          np.full(len(extra), NO_GROUP if name == "group" else 0,
                                                  base.meta(name).dtype)])
                    for name in base.meta_names}
            pool = PromptPool.write(folder, _chain(base, extra), meta=meta, params=params)
        first.update({c: len(base) + j for j, c in enumerate(extra)})
    ids = np.array([first[c] for c in captions], np.int64)
    if "regime" in pool.meta_names:
        unseen = np.flatnonzero(np.asarray(pool.meta("regime"))[ids] == PROMPT_REGIMES.index("unseen"))
        if len(unseen):
            line = int(unseen[0]) + 1
            raise UserError(f"prompts file {prompts_file} marks {short_repr(captions[line - 1])} unseen, but "
                            f"{_captions_file(config)} line {line} pairs an image with it (unseen prompts have none)")
    return pool, ids


def _chain(base, extra):
    for chunk in base.iter_chunks(8192):
        yield from chunk
    yield from extra


def _captions_file(config) -> Path:
    """``data.paired_dir/captions.txt``, or a UserError naming what is missing."""
    paired_dir = Path(config.data.paired_dir)
    if not paired_dir.is_dir():
        raise UserError(f"data.paired_dir {paired_dir} "
                        f"{'is not a folder' if paired_dir.exists() else 'does not exist'}")
    captions_file = paired_dir / "captions.txt"
    if not captions_file.is_file():
        raise UserError(f"data.paired_dir {paired_dir} has no captions.txt")
    return captions_file


def paired_captions(config) -> list[str]:
    """The captions of ``data.paired_dir`` (``captions.txt``), validated; images are not read."""
    captions_file = _captions_file(config)
    captions = _read_lines(captions_file, "paired captions file")
    if not captions or not all(captions):
        raise UserError(f"{captions_file}: empty or blank caption lines")
    return captions


def check_inputs(config) -> None:
    """Fail fast, before any model is loaded, on data inputs that can be checked cheaply (no torch, no
    images decoded): ``files``: the paired captions and the prompts file (its pool is built into the
    cache, where ``prepare_data`` reuses it) and ``regions.k`` against the pool size; ``shapes``: the
    world's sizes (``num_prompts``, ``paired_size``) and ``regions.k`` against ``num_prompts``;
    ``concepts``: the same of world v2."""
    rc = config.regions
    if config.data.source == "shapes":
        from aria.world import regimes as R

        R.paired_combos(config.data.world, R.split_regimes(config.data.world))  # world sizes (milliseconds)
        if rc.method == "kmeans" and rc.k > config.data.world.num_prompts:
            raise UserError(f"regions.k={rc.k} exceeds the number of prompts "
                            f"(data.world.num_prompts={config.data.world.num_prompts})")
        return
    if config.data.source == "concepts":
        c = config.data.concepts
        concepts_paired_items(config, concepts_regimes(config))  # split and paired-set sizes (milliseconds)
        if rc.method == "kmeans" and rc.k > c.num_prompts:
            raise UserError(f"regions.k={rc.k} exceeds the number of prompts "
                            f"(data.concepts.num_prompts={c.num_prompts})")
        return
    with cache_write_errors(config):
        pool, _ = files_pool(config, paired_captions(config))
    if rc.method == "kmeans" and rc.k > len(pool):
        raise UserError(f"regions.k={rc.k} exceeds the number of prompts ({len(pool)})")


_WRITE_ERRORS = {"ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EEXIST", "EISDIR"}


@contextlib.contextmanager
def cache_write_errors(config):
    """Turn a failed write under ``data.cache_dir`` (disk full, file size limit, read-only, a path
    under a file) into one line naming the file."""
    try:
        yield
    except OSError as err:
        code = errno.errorcode.get(err.errno)
        if code not in _WRITE_ERRORS:
            raise
        cache, where = Path(config.data.cache_dir), Path(err.filename or config.data.cache_dir)
        reason = err.strerror or code
        if where.resolve() == cache.resolve() or cache.resolve() in where.resolve().parents:
            raise UserError(f"data.cache_dir {cache}: cannot write {where} ({reason})") from err
        raise UserError(f"{where}: {reason}") from err


# -- paired sets ---------------------------------------------------------------------------------

def world_paired(config, pool, regimes: np.ndarray):
    """(uint8 images (M, 32, 32, 3), prompt ids (M,), combos (M,), cached) of the world's paired set."""
    from aria.world import regimes as R

    w = config.data.world
    return _paired_set(config, pool, "shapes", "world", w, lambda: R.paired_combos(w, regimes))


def _paired_set(config, pool, world_name: str, prefix: str, settings, paired_items):
    """(uint8 images (M, 32, 32, 3), prompt ids (M,), items (M,), cached) of an embedded world's paired
    set, cached under ``data.cache_dir`` as ``paired/<prefix>-<key>.npz``: the items ``paired_items()``
    names, each rendered with one pool prompt of its item (an item the pool never names is dropped)."""
    from aria.world.teacher import ComboPrompts
    from aria.world.worlds import WORLDS

    world = WORLDS[world_name]
    name = world.meta_key + "s"  # the items' array in the cache file: combos (v1), items (v2)
    key = _key(pool.content_hash, settings.model_dump_json())
    path = Path(config.data.cache_dir) / "paired" / f"{prefix}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["images"], z["prompt_ids"], z[name], True
    items = np.asarray(paired_items(), np.int64)
    prompts = ComboPrompts(np.asarray(pool.meta(world.meta_key)), num_combos=world.num_items)
    items = items[np.isin(items, prompts.covered)]  # an item the pool never names has no caption
    ids = prompts.draw(items, np.random.default_rng([settings.seed, 0xDA7A])).astype(np.int64)
    images = world.render(items, seed=settings.seed * 7919 + 0xDA7A)
    _atomic_save_npz(path, images=images, prompt_ids=ids, **{name: items})
    return images, ids, items, False


def teacher_image_size(teacher_config) -> int:
    """Pixel side of the teacher's samples (latent teachers: UNet sample_size x VAE factor)."""
    if teacher_config.path is None:
        return 32
    root = Path(teacher_config.path)
    unet_dir = root / teacher_config.subfolder if teacher_config.subfolder else root
    cfg = unet_dir / "config.json"
    if not cfg.is_file():
        raise UserError(f"teacher {unet_dir} has no config.json")
    size = json.loads(cfg.read_text())["sample_size"]
    size = int(size if isinstance(size, int) else size[0])
    vae = root / "vae" / "config.json"
    if teacher_config.subfolder and vae.is_file():
        size *= 2 ** (len(json.loads(vae.read_text()).get("block_out_channels", [0] * 4)) - 1)
    return size


def read_paired_dir(paired_dir: Path, size: int) -> tuple[list[str], np.ndarray]:
    """Captions and uint8 images (M, size, size, 3) of a ``paired_dir``."""
    from PIL import Image

    paired_dir = Path(paired_dir)
    if not paired_dir.is_dir():
        raise UserError(f"data.paired_dir {paired_dir} does not exist")
    captions = _read_lines(paired_dir / "captions.txt", "paired captions file")
    if not captions or not all(captions):
        raise UserError(f"{paired_dir / 'captions.txt'}: empty or blank caption lines")
    images = np.empty((len(captions), size, size, 3), np.uint8)
    for i in range(len(captions)):
        file = paired_dir / f"{i:06d}.png"
        if not file.is_file():
            raise UserError(f"{file} is missing (captions.txt has {len(captions)} lines)")
        try:
            with Image.open(file) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                images[i] = np.asarray(im)
        except OSError as err:
            raise UserError(f"{file} is not a readable image ({err})") from err
    return captions, images


def files_paired(config, size: int):
    """(captions, uint8 images) of ``data.paired_dir`` resized to ``size``, cached by content."""
    captions_file = _captions_file(config)
    paired_dir = captions_file.parent
    files = sorted(paired_dir.glob("*.png"))
    sig = _key(hashlib.sha256(captions_file.read_bytes()).hexdigest(),
               [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files], size)
    path = Path(config.data.cache_dir) / "paired" / f"files-{sig}.npz"
    if path.is_file():
        with np.load(path) as z:
            return [str(c) for c in z["captions"]], z["images"], True
    captions, images = read_paired_dir(paired_dir, size)
    _atomic_save_npz(path, captions=np.array(captions), images=images)
    return captions, images, False


def _to_tensor_range(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x / 127.5 - 1.0)


# -- regions -------------------------------------------------------------------------------------

def build_regions(config, pool, encoder, device: str, stats: dict, source: Path | None = None):
    """Regions of the pool (k-means on cached pooled embeddings, or metadata), cached. ``source``: a
    k-means regions folder made elsewhere, taken into the cache instead (``import_regions``)."""
    from aria.data.encoders import cached_pooled_embeddings
    from aria.data.regions import Regions, kmeans_regions, regions_cache_dir

    rc = config.regions
    if rc.method == "metadata":
        if source is not None:  # never ignored silently
            raise UserError(f"--from {source}: takes k-means regions; regions.method is metadata")
        return _metadata_regions(config, pool), False
    if rc.k > len(pool):
        raise UserError(f"regions.k={rc.k} exceeds the number of prompts ({len(pool)})")
    folder = regions_cache_dir(config.data.cache_dir, pool.content_hash, encoder.identity, "kmeans",
                               rc.k, rc.seed, rc.iterations)
    stats["regions_dir"] = str(folder)
    if source is not None:
        return import_regions(Path(source), folder, pool, rc.k)
    if (folder / "regions.json").is_file():
        return Regions.load(folder), True
    t = time.time()
    emb = cached_pooled_embeddings(pool, encoder, config.data.cache_dir)
    stats["embed_s"] = time.time() - t
    regions = kmeans_regions(emb, rc.k, rc.iterations, rc.seed, device=device)
    regions.meta["pool"] = pool.content_hash  # what import_regions checks a copy against
    regions.save(folder)
    return regions, False


def import_regions(source: Path, folder: Path, pool, k: int):
    """(regions, cached) of the k-means regions folder ``source`` (as ``Regions.save`` writes it), copied into
    the cache folder ``folder``. This is how runs on several machines share one partition: k-means on another
    machine's embeddings can move prompts that lie near a boundary, and with them the stratified probe set.
    Refused, in one line, if ``source`` does not fit the pool (its recorded pool, size) and ``regions.k``, or
    the cache holds others."""
    from aria.data.regions import Regions

    try:
        regions = Regions.load(source)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"--from {source}: not a regions folder (labels.npy, regions.json): "
                        f"{str(err).splitlines()[0]}") from None
    if regions.method != "kmeans" or len(regions.labels) != len(pool) or regions.num_regions != k:
        raise UserError(f"--from {source}: {regions.method} regions of {len(regions.labels)} prompts into "
                        f"{regions.num_regions}, not k-means of this pool's {len(pool)} into regions.k={k}")
    if regions.meta.get("pool", pool.content_hash) != pool.content_hash:
        raise UserError(f"--from {source}: regions of another prompt pool ({regions.meta['pool']}), not this "
                        f"config's ({pool.content_hash}): another data seed?")
    if (folder / "regions.json").is_file():
        if not np.array_equal(Regions.load(folder).labels, regions.labels):
            raise UserError(f"--from {source}: the cache holds other regions of this pool ({folder}); delete that "
                            f"folder to replace them")
        return regions, True
    regions.save(folder)
    return regions, False


def _metadata_regions(config, pool):
    """One region per combination of the pool's metadata columns ``regions.metadata_keys``."""
    from aria.data.regions import metadata_regions
    from aria.world import shapes

    keys = list(config.regions.metadata_keys)
    missing = [k for k in keys if k not in pool.meta_names]
    if missing:
        raise UserError(f"regions.metadata_keys: the pool has no metadata {missing[0]!r} "
                        f"(has: {', '.join(pool.meta_names) or 'none'})")
    values = {k: shapes.ATTRIBUTE_VALUES[k] for k in keys if k in shapes.ATTRIBUTE_VALUES}
    return metadata_regions({k: np.asarray(pool.meta(k)) for k in keys}, {k: len(v) for k, v in values.items()},
                            values or None)


# -- entry point ---------------------------------------------------------------------------------

def prepare_data(config, device: str | None = "cpu", regions_from: Path | None = None) -> DataBundle:
    """Build (or load from ``data.cache_dir``) everything the engine needs; see the module doc.
    ``regions_from``: a k-means regions folder made elsewhere, taken into the cache (``import_regions``)."""
    rank, world, barrier = _dist()
    if world > 1 and rank != 0:
        barrier()  # rank 0 builds first; we then load its files (shared FS) or build ours
    try:
        with cache_write_errors(config):
            bundle = _prepare(config, device, regions_from)
    finally:
        if world > 1 and rank == 0:
            barrier()
    return bundle


def _prepare(config, device, regions_from=None):
    from aria.data.corpus import PROMPT_REGIMES
    from aria.data.encoders import build_encoder
    from aria.devices import resolve_device

    device = resolve_device(device if device is not None else config.encoder.device)
    t0 = time.time()
    stats: dict = {"source": config.data.source, "cache_dir": str(config.data.cache_dir)}
    encoder = build_encoder(config.encoder, device)
    stats["encoder"] = encoder.identity
    regimes = combos = regime_of_prompt = world = None
    if config.data.source == "shapes":
        from aria.world import regimes as R
        from aria.world.worlds import WORLDS

        world = WORLDS["shapes"]
        pool = world_pool(config)
        regimes = np.asarray(R.split_regimes(config.data.world), np.int8)
        t = time.time()
        images, ids, combos, stats["paired_cached"] = world_paired(config, pool, regimes)
        stats["paired_s"] = time.time() - t
        regime_of_prompt = regimes[np.asarray(pool.meta("combo"))].astype(np.int8)
    elif config.data.source == "concepts":
        from aria.world.worlds import WORLDS

        world = WORLDS["concepts"]
        pool = concepts_pool(config)
        regimes = concepts_regimes(config)
        t = time.time()
        images, ids, combos, stats["paired_cached"] = concepts_paired(config, pool, regimes)
        stats["paired_s"] = time.time() - t
        regime_of_prompt = regimes[np.asarray(pool.meta("item"))].astype(np.int8)
    else:
        t = time.time()
        captions, images, stats["paired_cached"] = files_paired(config, teacher_image_size(config.teacher))
        pool, ids = files_pool(config, captions)
        stats["paired_s"] = time.time() - t
        if "regime" in pool.meta_names:
            regime_of_prompt = np.asarray(pool.meta("regime"), np.int8)
    t = time.time()
    regions, stats["regions_cached"] = build_regions(config, pool, encoder, device, stats, regions_from)
    stats["regions_s"] = time.time() - t
    if len(regions.labels) != len(pool):
        raise UserError(f"cached regions in {config.data.cache_dir} do not match the pool; delete the cache")
    stats.update(pool_size=len(pool), num_regions=regions.num_regions, regions_method=regions.method,
                 empty_regions=int((regions.sizes == 0).sum()), paired_size=int(len(ids)),
                 total_s=time.time() - t0)
    if regime_of_prompt is not None:
        names = len(world.regime_names) if world is not None else len(PROMPT_REGIMES)
        stats["regime_prompts"] = np.bincount(regime_of_prompt, minlength=names).tolist()
        stats["regime_paired"] = np.bincount(regime_of_prompt[ids], minlength=names).tolist()
    groups = None
    if world is None and "group" in pool.meta_names:
        groups = np.asarray(pool.meta("group"), np.int32)
        stats["group_prompts"] = dict(zip(pool.group_names, np.bincount(groups[groups >= 0],
                                                                        minlength=len(pool.group_names)).tolist()))
    return DataBundle(pool=pool, region_of_prompt=regions.labels, region_offsets=regions.offsets,
                      region_members=regions.members, region_info=regions.info(ids),
                      paired_images=_to_tensor_range(images), paired_prompt_ids=np.asarray(ids, np.int64),
                      regime_of_prompt=regime_of_prompt, encoder=encoder, regions=regions, regimes=regimes,
                      paired_combos=combos, stats=stats, world=world, group_of_prompt=groups,
                      group_names=tuple(pool.group_names) if groups is not None else ())
