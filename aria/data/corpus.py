"""PromptPool: an indexed, memory-mapped prompt pool of any size.

On disk a pool is a folder::

    texts.bin         UTF-8 bytes of every prompt, concatenated
    offsets.npy       int64 (N + 1,): prompt i is texts.bin[offsets[i]:offsets[i + 1]]
    meta_<name>.npy   optional per-prompt arrays (N, ...), e.g. meta_combo.npy (int32)
    pool.json         format, version, count, sha256 content hash, meta names, params

Pools are written streaming into a temporary sibling folder and renamed into place, with
``pool.json`` written last, so a crashed write never leaves a folder that opens as a pool.
The content hash covers the texts and their boundaries (not the meta arrays).

A user's prompts file (``PromptPool.from_text_file``) is one prompt per line, or, by its suffix,
JSONL (``.jsonl``: one object per line) or CSV (``.csv``: a header row) with the columns
``prompt`` and, optionally, ``group`` (any label) and ``regime`` (seen, under or unseen); they
become the meta arrays ``group`` (int32, -1 for none; names in ``params["groups"]``) and
``regime`` (int8, the index in ``PROMPT_REGIMES``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import uuid
from array import array
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from aria.errors import UserError, short_repr
from aria.files import file_sha256
from aria.world.worlds import REGIME_NAMES

FORMAT, VERSION = "aria-prompt-pool", 1
MAX_PROMPT_CHARS = 1000
PROMPT_COLUMNS = ("prompt", "group", "regime")  # the fields of a JSONL or CSV prompts file
PROMPT_REGIMES = REGIME_NAMES[:3]  # regimes a prompts file may mark (seen, under, unseen): meta "regime" = index
NO_GROUP = -1  # meta "group" of a prompt without one
MAX_GROUP_CHARS, MAX_GROUPS = 100, 10_000
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

        ``meta`` and ``params`` are read after ``texts`` is exhausted, so a generator may fill them.
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
        """Validate a prompts file and write it as a pool (reused if unchanged): one UTF-8 prompt per
        line, or JSONL / CSV by suffix (``prompts_file_format``) with optional ``group`` and ``regime``.

        Surrounding whitespace is stripped; duplicates are dropped (first kept, count logged and
        recorded in params; a duplicate with another group or regime is an error); blank lines are
        an error unless ``allow_blank``; ``regime`` is given for every prompt or for none. Problems
        raise a one-line UserError naming the file (and line).
        """
        path, out_dir = Path(path), Path(out_dir)
        if not path.is_file():
            raise UserError(f"prompts file {path} {'is not a file' if path.exists() else 'does not exist'}")
        kind = prompts_file_format(path)
        source = {"file": str(path.resolve()), "sha256": file_sha256(path), "allow_blank": allow_blank,
                  "format": kind}
        if (out_dir / "pool.json").is_file():
            try:
                existing = cls.open(out_dir)
                if {k: existing.params.get("source", {}).get(k) for k in source} == source:
                    return existing
            except UserError:
                pass
        params: dict = {"source": source}
        meta: dict = {}
        rows = _ROW_READERS[kind](path)
        pool = cls.write(out_dir, _validated_prompts(path, rows, allow_blank, min_distinct, source, meta, params),
                         meta=meta, params=params)
        stats = pool.params["source"]
        if stats["duplicates"] or stats["blank_lines"]:
            log.warning("prompts file %s: dropped %d duplicate and %d blank lines; %d prompts",
                        path, stats["duplicates"], stats["blank_lines"], len(pool))
        return pool

    @property
    def group_names(self) -> list[str]:
        """Names of the prompts file's groups (meta ``group`` indexes them); empty without groups."""
        return list(self.params.get("groups", []))


def prompts_file_format(path: Path) -> str:
    """``jsonl`` (suffix .jsonl), ``csv`` (.csv) or ``text`` (any other: one prompt per line)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        raise UserError(f"prompts file {path}: a .json file is not a prompts file (use .jsonl, one JSON object "
                        f"per line, .csv, or one prompt per line)")
    return {".jsonl": "jsonl", ".csv": "csv"}.get(suffix, "text")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of a UTF-8 file, the BOM of line 1 dropped."""
    byte_offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                where = f"line {number}: invalid UTF-8 at byte {byte_offset + err.start}"
                raise UserError(f"prompts file {path} {where}") from None
            byte_offset += len(raw)
            yield number, text.lstrip("\ufeff") if number == 1 else text


# A row of a prompts file: (line, prompt or None for a blank line, group or None, regime or None)
def _text_rows(path: Path) -> Iterator[tuple]:
    for number, text in _decoded_lines(path):
        yield number, text.strip() or None, None, None


def _jsonl_rows(path: Path) -> Iterator[tuple]:
    for number, text in _decoded_lines(path):
        where = f"prompts file {path} line {number}"
        if not text.strip():
            yield number, None, None, None
            continue
        try:
            row = json.loads(text.rstrip("\r\n"))
        except (ValueError, RecursionError) as err:
            reason = f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else type(err).__name__
            raise UserError(f"{where}: invalid JSON ({reason})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object such as {{\"prompt\": \"a red cat\", \"group\": \"cats\"}}, "
                            f"got {type(row).__name__}")
        unknown = [k for k in row if k not in PROMPT_COLUMNS]
        if unknown:
            raise UserError(f"{where}: unknown key {short_repr(unknown[0])} (keys: {', '.join(PROMPT_COLUMNS)})")
        if "prompt" not in row:
            raise UserError(f"{where}: no \"prompt\" key")
        yield (number, _field(where, "prompt", row["prompt"]) or "", _field(where, "group", row.get("group")),
               _field(where, "regime", row.get("regime")))


def _csv_rows(path: Path) -> Iterator[tuple]:
    lines = _decoded_lines(path)
    reader = csv.reader((text for _, text in lines), strict=True)
    where = f"prompts file {path} line 1"
    try:
        header = [c.strip() for c in next(reader, [])]
        if not any(header):
            raise UserError(f"prompts file {path} line 1: expected a header row naming the columns "
                            f"({', '.join(PROMPT_COLUMNS)}; prompt required)")
        unknown = [c for c in header if c not in PROMPT_COLUMNS]
        if unknown:
            raise UserError(f"{where}: unknown column {short_repr(unknown[0])} (columns: {', '.join(PROMPT_COLUMNS)})")
        twice = [c for c in PROMPT_COLUMNS if header.count(c) > 1]
        if twice:
            raise UserError(f"{where}: column {twice[0]!r} appears twice")
        if "prompt" not in header:
            raise UserError(f"{where}: no 'prompt' column (header: {', '.join(header)})")
        index = {c: header.index(c) for c in header}
        for row in reader:
            where = f"prompts file {path} line {reader.line_num}"
            if not any(cell.strip() for cell in row):
                yield reader.line_num, None, None, None
                continue
            if len(row) != len(header):
                raise UserError(f"{where} has {len(row)} fields, the header {len(header)} (quote a prompt "
                                f"holding a comma)")
            cell = {c: row[i].strip() or None for c, i in index.items()}
            yield (reader.line_num, cell["prompt"] or "", _field(where, "group", cell.get("group")),
                   _field(where, "regime", cell.get("regime")))
    except csv.Error as err:
        raise UserError(f"prompts file {path} line {reader.line_num}: invalid CSV ({err})") from None


_ROW_READERS = {"text": _text_rows, "jsonl": _jsonl_rows, "csv": _csv_rows}


def _field(where: str, name: str, value) -> str | None:
    """A prompt, group or regime value, stripped (None: absent or empty); a UserError for a bad one."""
    if value is None:
        return None
    if name == "group" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: {name} must be text, got {type(value).__name__}")
    value = value.strip() or None
    if value is None:
        return None
    if name == "group" and len(value) > MAX_GROUP_CHARS:
        raise UserError(f"{where}: group is too long ({len(value)} > {MAX_GROUP_CHARS} characters)")
    if name == "regime" and value not in PROMPT_REGIMES:
        raise UserError(f"{where}: regime {short_repr(value)} is not one of {', '.join(PROMPT_REGIMES)}")
    return value


def _validated_prompts(path: Path, rows: Iterable[tuple], allow_blank: bool, min_distinct: int, stats: dict,
                       meta: dict, params: dict) -> Iterator[str]:
    """The distinct prompts of ``rows``; fills ``stats`` (lines, duplicates, blank_lines), ``meta``
    (group, regime: only when the file gives them) and ``params["groups"]`` once exhausted."""
    first: dict[bytes, int] = {}  # prompt digest -> its first row: line << 32 | (group + 1) << 8 | (regime + 1)
    groups: dict[str, int] = {}
    group_codes, regime_codes = array("i"), array("b")
    lines = duplicates = blanks = 0
    with_regime = without_regime = None  # first line giving a regime, first line without one
    for lines, (number, text, group, regime) in enumerate(rows, 1):
        where = f"prompts file {path} line {number}"
        if text is None:
            if not allow_blank:
                raise UserError(f"{where} is blank (remove blank lines)")
            blanks += 1
            continue
        if not text:
            raise UserError(f"{where}: the prompt is empty")
        if len(text) > MAX_PROMPT_CHARS:
            raise UserError(f"{where} is too long ({len(text)} > {MAX_PROMPT_CHARS} characters)")
        if regime is None:
            without_regime = without_regime or number
        else:
            with_regime = with_regime or number
        if with_regime and without_regime:
            other = without_regime if regime is not None else with_regime
            raise UserError(f"{where} {'gives a regime' if regime is not None else 'has no regime'}, line {other} "
                            f"{'has none' if regime is not None else 'gives one'} "
                            "(give every prompt a regime, or none)")
        code = NO_GROUP if group is None else groups.setdefault(group, len(groups))
        if len(groups) > MAX_GROUPS:
            raise UserError(f"{where}: more than {MAX_GROUPS:,} groups")
        mark = -1 if regime is None else PROMPT_REGIMES.index(regime)
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        labels = (code + 1) << 8 | (mark + 1)
        if key in first:
            if first[key] & 0xFFFFFFFF != labels:
                raise UserError(f"{where} repeats the prompt of line {first[key] >> 32} with another group or regime")
            duplicates += 1
            continue
        first[key] = number << 32 | labels
        group_codes.append(code)
        regime_codes.append(mark)
        yield text
    if lines == 0 or lines == blanks:
        raise UserError(f"prompts file {path} is empty (no prompts)")
    if len(first) < min_distinct:
        plural = "" if len(first) == 1 else "s"
        raise UserError(f"prompts file {path}: only {len(first)} distinct prompt{plural} in {lines} lines "
                        f"(need at least {min_distinct})")
    stats.update(lines=lines, duplicates=duplicates, blank_lines=blanks)
    if groups:
        meta["group"] = np.frombuffer(group_codes, dtype=np.int32).copy()
        params["groups"] = list(groups)
    if with_regime:
        meta["regime"] = np.frombuffer(regime_codes, dtype=np.int8).copy()


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
