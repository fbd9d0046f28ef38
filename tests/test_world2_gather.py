"""tools/world2_gather.py: runs from calls' runs.tgz join a results folder, which is summarised as by hand."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT0 = ROOT / "docs" / "results" / "concepts-v2-split0"
TOOL = [sys.executable, str(ROOT / "tools" / "world2_gather.py")]


def call_folder(folder: Path, runs: list[str]) -> Path:
    """A fetched call's $OUT: runs.tgz with runs/runs/<strategy>/seed<s> as world2_call.sh packs it."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "runs.tgz", "w:gz") as tar:
        for run in runs:
            tar.add(SPLIT0 / "runs" / run, arcname=f"runs/runs/{run}")
    return folder


def test_gathered_runs_summarise_as_the_committed_results(tmp_path):
    out = tmp_path / "split0"
    shutil.copytree(SPLIT0, out)
    for run in ("aria", "exp3/seed1"):
        shutil.rmtree(out / "runs" / run)
    first = call_folder(tmp_path / "call1", ["aria/seed0", "aria/seed1", "aria/seed2", "none/seed0"])
    second = call_folder(tmp_path / "call2", ["exp3/seed1"])
    done = subprocess.run([*TOOL, "--out", str(out), str(first), str(second)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "aria/seed2: copied from" in done.stdout and "none/seed0: already in" in done.stdout
    assert "exp3/seed1: copied from" in done.stdout and "10 of 11 checks pass" in done.stdout
    mine, committed = (json.loads((d / "results.json").read_text()) for d in (out, SPLIT0))
    assert mine["command"] == committed["command"].replace("docs/results/concepts-v2-split0", str(out))
    for key in ("command", "plots", "date"):  # the date is the last eval.json's mtime, which a clone resets
        mine.pop(key), committed.pop(key)
    assert mine == committed


def test_a_folder_without_runs_tgz_is_refused_in_one_line(tmp_path):
    done = subprocess.run([*TOOL, "--out", str(tmp_path / "out"), str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == f"no runs.tgz in {tmp_path}"
    assert not (tmp_path / "out").exists()
