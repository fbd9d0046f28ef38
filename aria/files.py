"""Files every stage writes or checks: JSON of plain data, atomic writes, leftovers, checksums, and the
output paths a command is given (``check_output_folder``, ``check_output_file``: checked before long work)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
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


def write_text_atomic(path: Path, text: str) -> None:
    """Atomic text write: a temporary file beside ``path`` renamed into place, removed if the write fails
    (a killed or failed write leaves the previous file, or none, never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        discard(tmp)


def write_json(path: Path, data) -> None:
    """Atomic JSON write (``write_text_atomic``)."""
    write_text_atomic(path, json_text(data))


def read_json(path: Path, label: str | None = None, hint: str = "") -> dict:
    """The JSON object in ``path``, or a one-line UserError naming ``label`` (default: the path) when the
    file is unreadable, not JSON (e.g. truncated by an interrupted copy) or not an object."""
    from aria.errors import UserError

    label = str(path) if label is None else label
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise UserError(f"{label}: not valid JSON ({' '.join(str(err).split())[:160]}){hint}") from None
    except OSError as err:
        raise UserError(f"{label}: cannot be read ({err.strerror or err}){hint}") from None
    if not isinstance(data, dict):
        raise UserError(f"{label}: holds a JSON {type(data).__name__}, not an object{hint}")
    return data


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


def check_output_folder(path: Path, what: str) -> Path:
    """``path`` is, or can be created as, a writable folder (``aria.errors.folder_problem``), else a one-line
    UserError ``<what> <path>: <problem>``; nothing is created. Called before long work, so that a bad output
    path fails at once instead of after it."""
    from aria.errors import UserError, folder_problem

    problem = folder_problem(path)
    if problem:
        raise UserError(f"{what} {path}: {problem}")
    return Path(path)


def check_output_file(path: Path, what: str, suffixes=None, kind: str = "file", example: str = "out.png",
                      advice: str | None = None, written: bool = True) -> Path:
    """``path`` can be written as a file: not a folder; with ``suffixes`` (lower case, with the dot), its
    suffix is one of them (else "unknown <kind> type", with ``advice`` or the list); its folder is, or can
    be made, a writable folder (``aria.errors.folder_problem``), unless ``written`` is False (an output file
    that this call only reads, as ``aria results --check`` does). Else a one-line UserError naming ``what``
    and ``path``. Nothing is created."""
    from aria.errors import UserError, folder_problem

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a folder (give a {kind} file name, e.g. {example})")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        advice = advice or "use " + ", ".join(sorted(suffixes))
        raise UserError(f"{what} {path}: unknown {kind} type {path.suffix or '(no extension)'!r} ({advice})")
    if not written:
        return path
    parent = path.parent  # as the caller writes it (a quoted '~' is not expanded there either)
    problem = folder_problem(parent)
    if problem:
        raise UserError(f"{what} {path}: its folder {parent} {problem}")
    return path


@contextlib.contextmanager
def folder_written_whole(out_dir: Path):
    """A new folder beside ``out_dir`` to write into (normal modes); when the block ends without an error it
    replaces ``out_dir`` (a previous folder there is moved aside first, and put back if the rename fails), else
    it is removed: ``out_dir`` is never half-written, and a previous one goes only once the new one is whole."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = out_dir.parent / f".{out_dir.name}.tmp-{tag}", out_dir.parent / f".{out_dir.name}.old-{tag}"
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would make the folder unreadable to other users
    try:
        yield tmp
        if out_dir.exists():
            out_dir.replace(old)
        try:
            tmp.replace(out_dir)
        except OSError:
            if old.exists() and not out_dir.exists():
                old.replace(out_dir)  # put the previous folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
