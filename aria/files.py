"""Files every stage writes or checks: JSON of plain data, atomic writes, leftovers, checksums."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def to_jsonable(x):
    """``x`` as plain JSON data: numpy scalars and arrays become Python ones, paths strings,
    non-finite floats ``None``."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def json_text(data, indent: int | None = 1) -> str:
    """``data`` as the JSON that ``write_json`` writes (NaN becomes null)."""
    return json.dumps(to_jsonable(data), indent=indent, allow_nan=False)


def write_json(path: Path, data) -> None:
    """Atomic JSON write: a temporary file renamed into place, removed if the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json_text(data))
        os.replace(tmp, path)
    finally:
        discard(tmp)


def read_tagged_json(path: Path, fmt: str, label: str, what: str, hint: str = "") -> dict:
    """The JSON object in ``path`` whose "format" is ``fmt``, or a one-line UserError naming ``label``."""
    from aria.errors import UserError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{label}: not valid JSON ({err}){hint}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{label}: not {what}{hint}")
    return data


def discard(*paths: Path) -> None:
    """Remove files if they are there (a failed write's leftovers); never raises."""
    for p in paths:
        try:
            Path(p).unlink()
        except OSError:
            pass


def _hash_into(digest, path: Path) -> None:
    """Feed a file's bytes to ``digest``, read in blocks."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    _hash_into(digest, path)
    return digest.hexdigest()


_WEIGHTS_DIGESTS: dict = {}


def folder_weights_digest(folder: Path) -> str | None:
    """sha256 (16 hex) of the weight files directly in ``folder`` (*.safetensors, *.bin), memoised per
    process by (path, size, mtime); None where there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()) \
        if folder.is_dir() else []
    if not files:
        return None
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if key not in _WEIGHTS_DIGESTS:
        digest = hashlib.sha256()
        for p in files:
            _hash_into(digest, p)
        _WEIGHTS_DIGESTS[key] = digest.hexdigest()[:16]
    return _WEIGHTS_DIGESTS[key]
