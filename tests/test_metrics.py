"""metrics.jsonl on resume: ``truncate_jsonl`` keeps the lines up to the checkpoint's step and rewrites the
file atomically (a temporary file renamed), so a kill or a full disk mid-rewrite loses no line."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aria.errors import UserError
from aria.training.metrics import truncate_jsonl

LINES = [{"step": s, "loss": 0.5 / s} for s in range(1, 7)] + [{"event": "end", "step": 6}]


def write_metrics(folder: Path, n: int = len(LINES)) -> Path:
    path = folder / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in LINES[:n]) + '{"step": 7, "lo')  # a partial last line
    return path


def test_truncate_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = write_metrics(tmp_path)
    truncate_jsonl(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    mtime = path.stat().st_mtime_ns
    truncate_jsonl(path, 4)  # nothing to drop: the file is not rewritten
    assert path.stat().st_mtime_ns == mtime
    truncate_jsonl(tmp_path / "none.jsonl", 4)  # no file: nothing to do
    assert not (tmp_path / "none.jsonl").exists()


def run_child(code: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, preexec_fn=limit if fsize else None)


def test_a_kill_mid_rewrite_loses_no_line(tmp_path):
    """SIGKILL after the kept lines are written, before the rename: the old file is whole; the next
    truncation (the next resume) removes the dead process's temporary file and succeeds."""
    path = write_metrics(tmp_path)
    before = path.read_bytes()
    proc = run_child(f"""
        import os, signal
        from aria.training import metrics
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        metrics.truncate_jsonl(metrics.Path({str(path)!r}), 4)
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert path.read_bytes() == before
    truncate_jsonl(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_full_disk_mid_rewrite_loses_no_line(tmp_path):
    """A write that fails part way (RLIMIT_FSIZE below the kept lines' size): one UserError naming the file,
    the old file unchanged, no temporary file left."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "pad": "x" * 200}) + "\n" for s in range(1, 200)))
    before = path.read_bytes()
    proc = run_child(f"""
        from aria.training import metrics
        from aria.errors import UserError
        try:
            metrics.truncate_jsonl(metrics.Path({str(path)!r}), 150)
        except UserError as err:
            print("error:", err)
    """, fsize=16 << 10)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "metrics.jsonl" in proc.stdout and "File too large" in proc.stdout and "unchanged" in proc.stdout
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_an_unwritable_folder_is_a_user_error(tmp_path, monkeypatch):
    path = write_metrics(tmp_path)
    before = path.read_bytes()
    import aria.training.metrics as m

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(m, "open", refuse, raising=False)
    with pytest.raises(UserError, match="cannot rewrite metrics.jsonl .*Permission denied"):
        truncate_jsonl(path, 4)
    assert path.read_bytes() == before
