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


def call_folder(folder: Path, runs: list[str], unevaluated: str | None = None) -> Path:
    """A fetched call's $OUT: runs.tgz with runs/runs/<strategy>/seed<s> as world2_call.sh packs it, and
    optionally a run whose evaluation the call's limit cut (its log only)."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "runs.tgz", "w:gz") as tar:
        for run in runs:
            tar.add(SPLIT0 / "runs" / run, arcname=f"runs/runs/{run}")
        if unevaluated:
            tar.add(SPLIT0 / "runs" / unevaluated / "metrics.jsonl", arcname=f"runs/runs/{unevaluated}/metrics.jsonl")
    return folder


def gather(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*TOOL, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_gathered_runs_summarise_as_the_committed_results(tmp_path):
    out = tmp_path / "split0"
    shutil.copytree(SPLIT0, out)
    for made in ("runs/aria", "runs/exp3/seed1", "results.json", "checks.json"):
        (shutil.rmtree if (out / made).is_dir() else Path.unlink)(out / made)
    first = call_folder(tmp_path / "call1", ["aria/seed0", "aria/seed1", "aria/seed2", "none/seed0"])
    second = call_folder(tmp_path / "call2", ["aria/seed2"], unevaluated="exp3/seed1")
    third = call_folder(tmp_path / "call3", ["exp3/seed1"])
    done = gather("--out", out, first, second, third)
    assert done.returncode == 0, done.stderr
    assert "aria/seed2: copied from" in done.stdout and f"aria/seed2: already in {first}, kept" in done.stdout
    assert f"none/seed0: already in {out}, kept" in done.stdout
    assert f"exp3/seed1: not evaluated in {second}, not copied" in done.stdout
    assert f"exp3/seed1: copied from {third}" in done.stdout and "10 of 11 checks pass" in done.stdout
    mine, committed = (json.loads((d / "results.json").read_text()) for d in (out, SPLIT0))
    assert mine["command"] == committed["command"].replace("docs/results/concepts-v2-split0", str(out))
    assert mine["card"].startswith("NVIDIA H100 80GB HBM3 x1")
    # the date: the calls' runs are stamped with their archived eval.json's mtime, made here; the card: of
    # runs without a record of theirs, the machine that summarises
    for key in ("command", "plots", "date", "card"):
        mine.pop(key), committed.pop(key)
    assert mine == committed
    assert json.loads((out / "checks.json").read_text())["checks"]


def test_runs_of_another_split_or_a_broken_archive_are_refused_before_anything_is_copied(tmp_path):
    out = tmp_path / "out"
    call = call_folder(tmp_path / "call", ["aria/seed0"])
    done = gather("--out", out, "--split", 1, call)
    assert done.returncode == 2 and "aria/seed0 was trained with another config" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (out / "runs").exists()
    done = gather("--out", out, "--set", "backend.fp8=both", call)  # the call's own values count too
    assert done.returncode == 2 and "aria/seed0 was trained with another config" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (out / "runs").exists()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "runs.tgz").write_bytes(b"not an archive")
    done = gather("--out", out, tmp_path / "broken")
    assert done.returncode == 2 and done.stderr.strip().startswith(f"{tmp_path / 'broken'}/runs.tgz: not a readable")
    done = gather("--out", out, tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"no runs.tgz in {tmp_path}"
    assert not out.exists()


def test_evaluations_made_elsewhere_replace_the_calls_own(tmp_path):
    """--evals: DIR/<strategy>-seed<s>/ (an `aria eval --out` folder) stands in for a run's evaluation, cut or
    not; a folder that names no run, or holds no eval.json, is refused before anything is copied."""
    evals = tmp_path / "evals"
    for name, run in (("swucb-seed0", "swucb/seed0"), ("dts-seed0", "dts/seed0")):
        shutil.copytree(SPLIT0 / "runs" / run / "eval", evals / name)
    (evals / "dts-seed0" / "eval.log").write_text("evaluated on a CPU\n")
    cpu_eval = evals / "dts-seed0" / "eval.json"  # other bytes than the call's own evaluation, the same numbers
    cpu_eval.write_text(json.dumps(json.loads(cpu_eval.read_text()), indent=2))
    out, call = tmp_path / "out", tmp_path / "call"
    call.mkdir()
    with tarfile.open(call / "runs.tgz", "w:gz") as tar:  # dts evaluated in the call, swucb's evaluation cut
        tar.add(SPLIT0 / "runs" / "dts" / "seed0", arcname="runs/runs/dts/seed0")
        for part in ("compare.json", "metrics.jsonl"):
            tar.add(SPLIT0 / "runs" / "swucb" / "seed0" / part, arcname=f"runs/runs/swucb/seed0/{part}")
    again = call_folder(tmp_path / "again", ["dts/seed0"])  # the same run in a second call: replaced there too
    done = gather("--out", out, "--evals", evals, call, again)
    assert done.returncode == 0, done.stderr
    assert f"swucb/seed0: evaluation from {evals / 'swucb-seed0'}" in done.stdout
    assert "dts/seed0: copied from" in done.stdout and "swucb/seed0: copied from" in done.stdout
    assert f"dts/seed0: already in {call}, kept" in done.stdout
    for name, run in (("swucb-seed0", "swucb/seed0"), ("dts-seed0", "dts/seed0")):
        assert (out / "runs" / run / "eval" / "eval.json").read_bytes() == (evals / name / "eval.json").read_bytes()
    assert (out / "runs" / "dts" / "seed0" / "eval.log").read_text() == "evaluated on a CPU\n"
    assert not (out / "runs" / "dts" / "seed0" / "eval" / "eval.log").exists()
    assert set(json.loads((out / "results.json").read_text())["strategies"]) == {"swucb", "dts"}

    (evals / "exp3-seed0").mkdir()
    (evals / "exp3-seed0" / "eval.json").write_text("{}")
    again = gather("--out", tmp_path / "out2", "--evals", evals, call)
    assert again.returncode == 2 and again.stderr.strip() == f"--evals {evals}: exp3-seed0 is not a run in the calls"
    shutil.rmtree(evals / "exp3-seed0")
    (evals / "dts-seed0" / "eval.json").unlink()
    again = gather("--out", tmp_path / "out2", "--evals", evals, call)
    assert again.returncode == 2 and again.stderr.strip() == f"--evals {evals}: dts-seed0 has no eval.json"
    assert not (tmp_path / "out2").exists()


def test_seeds_are_read_as_aria_compare_reads_them(tmp_path, monkeypatch, capsys):
    """--seeds 2 is a count (seeds 0 and 1), as `aria compare --seeds` and world2_call.sh read it: the copy
    lines flag seed 2 alone as left out of the summary, which gets --seeds 2 unchanged."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("world2_gather", ROOT / "tools" / "world2_gather.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    commands = []
    monkeypatch.setattr(tool.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0))
    monkeypatch.chdir(ROOT)
    call = call_folder(tmp_path / "call", ["aria/seed0", "aria/seed1", "aria/seed2"])
    assert tool.main([str(call), "--out", str(tmp_path / "out"), "--seeds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"aria/seed0: copied from {call}" in lines and f"aria/seed1: copied from {call}" in lines
    assert f"aria/seed2: copied from {call} (seed 2 is not in --seeds)" in lines
    summary = commands[0]
    assert summary[summary.index("--seeds") + 1] == "2"
    assert tool.main([str(call), "--out", str(tmp_path / "out2"), "--seeds", "0,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("--seeds '0,x': expected") and len(err.splitlines()) == 1
    assert not (tmp_path / "out2").exists()
