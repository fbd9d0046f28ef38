"""``aria theory-sim``: shipped config, user mistakes (exit 2), a tiny sweep (exit 0), a broken bound (exit 1)."""

import json
from pathlib import Path

import pytest
import yaml

from aria.cli import main
from aria.theory import bounds as Bd
from aria.theory.config import DEFAULT, QUICK, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "workers": 1,
    "every": {"alphas": [0.05], "sigmas": [0.2], "deltas": [0.002], "processes": ["linear", "sinusoid"],
              "noises": ["gaussian", "two_point"], "seeds": 6, "steps": 900, "burn_in": 300},
    "scan": {"alphas": [0.01, 0.016, 0.025, 0.04, 0.063, 0.1, 0.16, 0.25]},
    "sampled": {"alphas": [0.1], "designs": [[4, 0.5, 2]], "delays": [1], "seeds": 3, "steps": 400, "burn_in": 100},
    "outside": {"alphas": [0.05], "heavy_df": [1.5], "jump_every": 150},
    "allocation": {"regions": 4, "steps": 60, "seeds": 1},
}


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["theory-sim", *args])
    return exit_info.value.code, capsys.readouterr()


def write(tmp_path, data) -> Path:
    path = tmp_path / "theory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_is_the_default_preset():
    assert load_config(ROOT / "configs" / "theory.yaml") == load_config(None)
    assert load_config(None, quick=True).every.steps < load_config(None).every.steps
    default = load_config(None)
    in_assumption_pairs = default.every.seeds * (
        len(default.every.alphas) * len(default.every.sigmas) * len(default.every.deltas)
        * len(default.every.processes) * len(default.every.noises) * len(default.every.delays))
    assert in_assumption_pairs >= 200
    assert DEFAULT != QUICK


@pytest.mark.parametrize("data,needle", [
    ({"every": {"alpha": [0.1]}}, "every.alpha: unknown key"),
    ({"scan": {"alphas": [0.1, 0.2, 0.3, 0.4, 1.5]}}, "alphas"),
    ({"sampled": {"designs": [[16, 0.3, 1]], "burn_in": 10}}, "warm-up"),
    ({"sampled": {"designs": [[16, 1.0, 1]], "burn_in": 32, "steps": 60, "delays": [0, 1]}}, "warm-up"),
    ({"outside": {"heavy_df": [3.0]}}, "heavy_df"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, data, needle):
    code, out = run(["--config", str(write(tmp_path, data)), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and needle in out.err and len(out.err.strip().splitlines()) == 1


def test_unwritable_out_is_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = run(["--quick", "--out", str(blocker / "sub")], capsys)
    assert code == 2 and "--out" in out.err


def test_tiny_sweep_passes_and_writes_json_and_figures(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out = run(["--quick", "--config", str(write(tmp_path, TINY)), "--out", str(out_dir)], capsys)
    assert code == 0, out.out[-2000:]
    doc = json.loads((out_dir / "theory_sim.json").read_text())
    s = doc["summary"]
    assert s["all_within"] and s["within_pct"] == 100.0 and s["median_ratio"] >= 0.3
    assert s["outside_violations"] >= 1
    assert all(sc["within_factor_2"] for sc in doc["scan"])
    assert {r["kind"] for r in doc["rows"]} == {"every", "scan", "sampled", "outside"}
    assert any(r["delay"] == 1 for r in doc["rows"] if r["in_assumption"])
    sampled = [r for r in doc["rows"] if r["kind"] == "sampled"]
    assert sampled and all(r["warmup"] > 0 for r in sampled)
    alloc = {a["strategy"]: a for a in doc["allocation"]}
    assert alloc["oracle"]["measurements"] == 60 and alloc["oracle"]["eps"] == alloc["aria"]["eps"] == 0.2
    assert alloc["oracle"]["final_max"] != alloc["uniform"]["final_max"]  # no longer uniform in disguise
    for name in ("alpha.png", "trajectories.png", "allocation.png"):
        assert (out_dir / name).stat().st_size > 10_000
    assert "within the bound (100.0%)" in out.out and "median measured/bound" in out.out


def test_a_bound_too_small_gives_exit_1(tmp_path, capsys, monkeypatch):
    real = Bd.window_bound
    monkeypatch.setattr(Bd, "window_bound", lambda *a, **k: 0.5 * real(*a, **k))
    tiny = {**TINY, "every": {**TINY["every"], "processes": ["linear"], "noises": ["gaussian"]}}
    code, out = run(["--quick", "--config", str(write(tmp_path, tiny)), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and " NO" in out.out
