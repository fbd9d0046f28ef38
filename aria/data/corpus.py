"""PromptPool: an indexed, memory-mapped prompt pool of any size.

On disk a pool is a folder::

    texts.bin         UTF-8 bytes of every prompt, concatenated
    offsets.npy       int64 (N + 1,): prompt i is texts.bin[offsets[i]:offsets[i + 1]]
    meta_<name>.npy   optional per-prompt arrays (N, ...), e.g. meta_combo.npy (int32)
    pool.json         format, version, count, sha256 content hash, meta names, params

Pools are written streaming into a temporary sibling folder and renamed into place, with
``pool.json`` written last, so a crashed write never leaves a folder that opens as a pool.
The content hash covers the texts and their boundaries (not the meta arrays).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from aria.errors import UserError
from aria.files import file_sha256

FORMAT, VERSION = "aria-prompt-pool", 1
MAX_PROMPT_CHARS = 1000
log = logging.getLogger(__name__)


class PromptPool:
    """Read-only view of a pool folder; texts are decoded on access, never all held in memory."""

    def __init__(self, path: Path, info: dict, texts: np.ndarray, offsets: np.ndarray):
        self.path, self.info, self._texts, self._offsets = path, info, texts, offsets

    # ------------------------------------------------------------ reading

    @classmethod
    def open(cls, path: Path | str) -> "PromptPool":
        """Open a complete pool folder memory-mapped; UserError if missing, partial or corrupt."""
        path = Path(path)
        info_file = path / "pool.json"
        if not info_file.is_file():
            what = "is not a complete prompt pool (no pool.json)" if path.exists() else "does not exist"
            raise UserError(f"prompt pool {path} {what}")
        try:
            info = json.loads(info_file.read_text(encoding="utf-8"))
            offsets = np.load(path / "offsets.npy", mmap_mode="r")
            texts = np.memmap(path / "texts.bin", dtype=np.uint8, mode="r")
        except (OSError, ValueError) as err:
            raise UserError(f"prompt pool {path} is unreadable ({err})") from err
        if info.get("format") != FORMAT or info.get("version") != VERSION:
            raise UserError(f"prompt pool {path}: unsupported format {info.get('format')!r} v{info.get('version')}")
        count = info.get("count")
        consistent = isinstance(count, int) and offsets.dtype == np.int64 and offsets.shape == (count + 1,)
        if not consistent or int(offsets[-1]) != len(texts):
            raise UserError(f"prompt pool {path} is corrupt (offsets do not match count / texts.bin)")
        pool = cls(path, info, texts, offsets)
        for name in info.get("meta", []):
            if pool.meta(name).shape[:1] != (count,):
                raise UserError(f"prompt pool {path} is corrupt (meta {name!r} has the wrong length)")
        return pool

    def __len__(self) -> int:
        return int(self.info["count"])

    def __getitem__(self, i) -> str:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"prompt {i} out of range for a pool of {n}")
        i %= n
        return bytes(self._texts[self._offsets[i]:self._offsets[i + 1]]).decode("utf-8")

    def texts(self, indices) -> list[str]:
        """The prompts at ``indices`` (any int array-like), in that order."""
        return [self[i] for i in np.asarray(indices, dtype=np.int64).reshape(-1)]

    def iter_chunks(self, size: int) -> Iterator[list[str]]:
        """Consecutive chunks of at most ``size`` prompts covering the pool once, in order."""
        if size < 1:
            raise ValueError("chunk size must be positive")
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            offsets = self._offsets[start:stop + 1] - self._offsets[start]
            block = bytes(self._texts[self._offsets[start]:self._offsets[stop]])
            yield [block[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]

    def __iter__(self) -> Iterator[str]:
        for chunk in self.iter_chunks(4096):
            yield from chunk

    @property
    def meta_names(self) -> list[str]:
        return list(self.info.get("meta", []))

    def meta(self, name: str) -> np.ndarray:
        """Memory-mapped per-prompt array ``meta_<name>.npy``."""
        if name not in self.info.get("meta", []):
            have = ", ".join(self.meta_names) or "none"
            raise UserError(f"prompt pool {self.path} has no metadata {name!r} (has: {have})")
        return np.load(self.path / f"meta_{name}.npy", mmap_mode="r")

    @property
    def content_hash(self) -> str:
        return self.info["sha256"]

    @property
    def params(self) -> dict:
        """Free-form parameters recorded by the writer (e.g. how a generated pool was made)."""
        return dict(self.info.get("params", {}))

    def __reduce__(self):  # pickles as its path (e.g. to worker processes), never as the mapped data
        return PromptPool.open, (str(self.path),)

    def __repr__(self) -> str:
        return f"PromptPool({str(self.path)!r}, count={len(self)}, sha256={self.content_hash[:12]})"

    # ------------------------------------------------------------ writing

    @classmethod
    def write(cls, path: Path | str, texts: Iterable[str], meta: Mapping[str, np.ndarray] | None = None,
              params: Mapping | None = None) -> "PromptPool":
        """Stream ``texts`` into a new pool at ``path`` (replacing one there) and open it.

        ``params`` is stored in pool.json after ``texts`` is exhausted, so a generator may fill it.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            count, digest = _write_texts(tmp, texts)
            if count == 0:
                raise UserError(f"prompt pool {path}: no prompts to write")
            names = _write_meta(tmp, meta or {}, count)
            info = {"format": FORMAT, "version": VERSION, "count": count, "sha256": digest,
                    "meta": names, "params": dict(params or {})}
            _write_json(tmp / "pool.json", info)
            _replace_dir(tmp, path)
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if err.filename is None:  # a failed write() (disk full, file size limit): name the pool
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(path)

    @classmethod
    def from_text_file(cls, path: Path | str, out_dir: Path | str, allow_blank: bool = False,
                       min_distinct: int = 2) -> "PromptPool":
        """Validate a one-prompt-per-line UTF-8 file and write it as a pool (reused if unchanged).

        Surrounding whitespace is stripped; duplicates are dropped (first kept, count logged and
        recorded in params); blank lines are an error unless ``allow_blank``. Problems raise a
        one-line UserError naming the file (and line).
        """
        path, out_dir = Path(path), Path(out_dir)
        if not path.is_file():
            raise UserError(f"prompts file {path} {'is not a file' if path.exists() else 'does not exist'}")
        source = {"file": str(path.resolve()), "sha256": file_sha256(path), "allow_blank": allow_blank}
        if (out_dir / "pool.json").is_file():
            try:
                existing = cls.open(out_dir)
                if {k: existing.params.get("source", {}).get(k) for k in source} == source:
                    return existing
            except UserError:
                pass
        params: dict = {"source": source}
        lines = _read_prompt_lines(path, allow_blank, min_distinct, params["source"])
        pool = cls.write(out_dir, lines, params=params)
        stats = pool.params["source"]
        if stats["duplicates"] or stats["blank_lines"]:
            log.warning("prompts file %s: dropped %d duplicate and %d blank lines; %d prompts",
                        path, stats["duplicates"], stats["blank_lines"], len(pool))
        return pool


def _read_prompt_lines(path: Path, allow_blank: bool, min_distinct: int, stats: dict) -> Iterator[str]:
    seen: set[bytes] = set()
    lines = duplicates = blanks = 0
    byte_offset = 0
    with open(path, "rb") as f:
        for lines, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                where = f"line {lines}: invalid UTF-8 at byte {byte_offset + err.start}"
                raise UserError(f"prompts file {path} {where}") from None
            byte_offset += len(raw)
            text = text.lstrip("\ufeff") if lines == 1 else text
            text = text.strip()
            if not text:
                if not allow_blank:
                    raise UserError(f"prompts file {path} line {lines} is blank (remove blank lines)")
                blanks += 1
                continue
            if len(text) > MAX_PROMPT_CHARS:
                raise UserError(f"prompts file {path} line {lines} is too long "
                                f"({len(text)} > {MAX_PROMPT_CHARS} characters)")
            key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            yield text
    if lines == 0 or lines == blanks:
        raise UserError(f"prompts file {path} is empty (no prompts)")
    if len(seen) < min_distinct:
        plural = "" if len(seen) == 1 else "s"
        raise UserError(f"prompts file {path}: only {len(seen)} distinct prompt{plural} in {lines} lines "
                        f"(need at least {min_distinct})")
    stats.update(lines=lines, duplicates=duplicates, blank_lines=blanks)


def _write_texts(folder: Path, texts: Iterable[str]) -> tuple[int, str]:
    text_hash = hashlib.sha256()
    offsets, position, buffer = [0], 0, []
    with open(folder / "texts.bin", "wb") as out:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"prompts must be str, got {type(text).__name__}")
            data = text.encode("utf-8")
            buffer.append(data)
            position += len(data)
            offsets.append(position)
            if len(buffer) >= 8192:
                block = b"".join(buffer)
                out.write(block)
                text_hash.update(block)
                buffer.clear()
        block = b"".join(buffer)
        out.write(block)
        text_hash.update(block)
        out.flush()
        os.fsync(out.fileno())
    offsets = np.asarray(offsets, dtype=np.int64)
    _save_npy(folder / "offsets.npy", offsets)
    digest = hashlib.sha256(text_hash.digest() + hashlib.sha256(offsets.tobytes()).digest()).hexdigest()
    return len(offsets) - 1, digest


def _write_meta(folder: Path, meta: Mapping[str, np.ndarray], count: int) -> list[str]:
    for name, values in meta.items():
        values = np.asarray(values)
        if not name.isidentifier():
            raise ValueError(f"meta name {name!r} must be an identifier")
        if values.shape[:1] != (count,):
            raise ValueError(f"meta {name!r} has {values.shape[:1]} rows for {count} prompts")
        _save_npy(folder / f"meta_{name}.npy", values)
    return sorted(meta)


def _save_npy(file: Path, array: np.ndarray) -> None:
    with open(file, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _write_json(file: Path, data: dict) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path``; an existing ``path`` is moved aside first, then removed."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
