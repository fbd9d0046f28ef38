"""aria checks: pre-registered checks read from synthetic compare folders (results.json, eval.json, metrics.jsonl)."""

import json

import pytest

from aria.cli.main import main
from aria.config import ChecksConfig
from aria.experiment import checks, report
from aria.files import write_json

SEEDS = (0, 1, 2)
STEPS = 100
REGIONS = [0.1, 0.2, 0.3, 0.5, 0.8, 1.3, 2.1, None]  # rc's per-region probe discrepancy; the last unprobed
GROUPS = ("seen", "under", "unseen", "compositional", "family:fruit", "family:tool", "all")
METRICS = {  # strategy -> regime -> (discrepancy, cond_discrepancy, judge_accuracy); other groups copy seen
    "none": {"seen": (1.0, 1.0, 0.8), "unseen": (3.0, 4.0, 0.1)},
    "rc": {"seen": (1.0, 1.0, 0.8), "unseen": (2.5, 2.0, 0.3)},  # unseen cond rc/none 0.5
    "oracle": {"seen": (1.0, 1.0, 0.8), "unseen": (2.0, 1.5, 0.5)},  # unseen cond oracle/rc 0.75
}
NAMES = ("discrepancy", "cond_discrepancy", "judge_accuracy")


def run_metrics(strategy, seed, spec):
    """One run's eval metrics {group: {metric: value}}, slightly different per seed."""
    out = {}
    for g in GROUPS:
        values = spec["metrics"][strategy].get(g, spec["metrics"][strategy]["seen"])
        m = {n: v * (1 + 0.01 * seed) if n != "judge_accuracy" else v for n, v in zip(NAMES, values)}
        m["teacher_accuracy"] = spec["teacher"].get((strategy, seed, g), 0.95)
        out[g] = m
    return out


def rc_regions(seed, spec):
    """rc's per-region probe discrepancy of one seed (None: unprobed)."""
    values = [None if v is None else v * (1 + 0.01 * seed) for v in spec["regions"]]
    order = spec["order"](seed)
    return [values[i] for i in order]


def metrics_log(measured, spec):
    """metrics.jsonl lines: step lines, and every 10 steps region_discrepancy (reversed in the first half of
    training, which the check ignores; the first region never observed)."""
    lines = []
    for step in range(10, STEPS + 1, 10):
        lines.append({"step": step, "loss": 1.0})
        tracked = spec["tracked"](measured)
        if step <= STEPS / 2:
            tracked = [None if v is None else -v for v in tracked]
        lines.append({"step": step, "loss": 1.0, "region_discrepancy": [None] + tracked[1:]})
    return "\n".join(json.dumps(x) for x in lines) + "\n"


def build(root, strategies=("none", "rc", "oracle"), command=None, metrics=(), teacher=None, regions=None,
          order=None, tracked=None, evals=True):
    """A compare folder: results.json, and per run eval/eval.json and metrics.jsonl."""
    spec = {"metrics": {s: dict(v) for s, v in METRICS.items()}, "teacher": teacher or {},
            "regions": regions or REGIONS, "order": order or (lambda seed: range(len(spec["regions"]))),
            "tracked": tracked or (lambda measured: [None if v is None else 10 * v for v in measured])}
    for strategy, group, name, value in metrics:
        values = list(spec["metrics"][strategy].get(group, spec["metrics"][strategy]["seen"]))
        values[NAMES.index(name)] = value
        spec["metrics"][strategy][group] = tuple(values)
    runs = {s: {str(seed): run_metrics(s, seed, spec) for seed in SEEDS} for s in strategies}
    for s in strategies:
        for seed in SEEDS:
            run = root / "runs" / s / f"seed{seed}"
            measured = rc_regions(seed, spec) if s == "rc" else [1.0] * len(spec["regions"])
            if evals:
                write_json(run / "eval" / "eval.json", {"metrics": runs[s][str(seed)], "regions": {
                    "discrepancy": measured, "probes": [0 if v is None else 4 for v in measured]}})
            run.mkdir(parents=True, exist_ok=True)
            (run / "metrics.jsonl").write_text(metrics_log(measured, spec))
    write_json(root / "results.json", {
        "format": "aria-compare/1", "steps": STEPS, "strategies": list(strategies), "seeds": list(SEEDS),
        "command": command or f"aria compare --strategies {','.join(strategies)} --seeds 3", "runs": runs})
    return root


def statuses(result):
    return {f"{r['check']} {r['name']}": r["status"] for r in result["checks"]}


def failing(result):
    return {name for name, status in statuses(result).items() if status != "pass"}


FAILS = {  # row -> how a folder is built to fail it (and only it)
    "C1 teacher accuracy, min over regimes/families/runs": dict(teacher={("rc", 1, "family:fruit"): 0.85}),
    "C1 none seen accuracy": dict(metrics=[("none", "seen", "judge_accuracy", 0.4)]),
    "C2 none unseen/seen cond_discrepancy": dict(metrics=[("none", "unseen", "cond_discrepancy", 2.5),
                                                          ("rc", "unseen", "cond_discrepancy", 1.5),
                                                          ("oracle", "unseen", "cond_discrepancy", 1.0)]),
    "C2 none unseen/seen discrepancy": dict(metrics=[("none", "unseen", "discrepancy", 1.5)]),
    "C3 unseen cond_discrepancy rc/none": dict(metrics=[("rc", "unseen", "cond_discrepancy", 3.0)]),
    "C3 seen cond_discrepancy rc/none": dict(metrics=[("rc", "seen", "cond_discrepancy", 1.1)]),
    "C4 rc region discrepancy CV": dict(regions=[1.0, 1.0, 1.1, 1.0, 1.05, 1.0, 1.0, 2.2, None]),  # CV ~0.35
    "C4 rc region discrepancy max/median": dict(regions=[0.1, 0.1, 0.1, 1.0, 1.0, 1.2, 1.5, None]),  # 1.5x
    "C4 rc region discrepancy Spearman between seeds": dict(order=lambda seed: [[0, 1, 2, 3, 4, 5, 6, 7],
                                                                                 [6, 3, 0, 5, 2, 4, 1, 7],
                                                                                 [2, 5, 6, 0, 4, 1, 3, 7]][seed]),
    "C5 rc tracker input vs eval, Spearman per region": dict(
        tracked=lambda measured: [None if v is None else 1 / v for v in measured]),
    "C5 unseen cond_discrepancy oracle/rc": dict(metrics=[("oracle", "unseen", "cond_discrepancy", 1.9)]),
}


def test_a_comparison_meeting_every_threshold_passes(tmp_path):
    result = checks.compute_checks(build(tmp_path), ChecksConfig())
    assert result["format"] == "aria-checks/1" and result["all_pass"], report.world_checks_table(result)
    assert set(statuses(result)) == set(FAILS) and len(result["checks"]) == 11
    by_name = {f"{r['check']} {r['name']}": r for r in result["checks"]}
    assert by_name["C3 unseen cond_discrepancy rc/none"]["value"] == pytest.approx(0.5)
    assert by_name["C5 unseen cond_discrepancy oracle/rc"]["value"] == pytest.approx(0.75)
    assert by_name["C5 rc tracker input vs eval, Spearman per region"]["value"] == pytest.approx(1.0)
    assert by_name["C4 rc region discrepancy Spearman between seeds"]["n"] == 3  # seed pairs


@pytest.mark.parametrize("name", list(FAILS))
def test_each_check_fails_alone(tmp_path, name):
    result = checks.compute_checks(build(tmp_path, **FAILS[name]), ChecksConfig())
    assert failing(result) == {name}, report.world_checks_table(result)
    assert statuses(result)[name] == "fail" and not result["all_pass"]


def test_missing_strategies_and_files_are_missing_rows(tmp_path):
    result = checks.compute_checks(build(tmp_path / "a", strategies=("none", "rc")), ChecksConfig())
    assert failing(result) == {"C5 unseen cond_discrepancy oracle/rc"}
    assert statuses(result)["C5 unseen cond_discrepancy oracle/rc"] == "missing"
    result = checks.compute_checks(build(tmp_path / "b", strategies=("rc", "oracle")), ChecksConfig())
    assert {n for n, s in statuses(result).items() if s == "missing"} == {
        "C1 none seen accuracy", "C2 none unseen/seen cond_discrepancy", "C2 none unseen/seen discrepancy",
        "C3 unseen cond_discrepancy rc/none", "C3 seen cond_discrepancy rc/none"}
    result = checks.compute_checks(build(tmp_path / "c", evals=False), ChecksConfig())  # no eval.json
    assert failing(result) == {n for n in FAILS if n.startswith("C4") or "tracker" in n}
    assert {r["status"] for r in result["checks"] if r["check"] == "C4"} == {"missing"}
    assert "missing" in report.world_checks_table(result)


def test_the_thresholds_decide(tmp_path):
    folder = build(tmp_path, **FAILS["C3 seen cond_discrepancy rc/none"])  # rc/none 1.1 on seen
    assert not checks.compute_checks(folder, ChecksConfig())["all_pass"]
    result = checks.compute_checks(folder, ChecksConfig(rc_seen_cond_ratio_max=1.2))
    assert result["all_pass"] and result["thresholds"]["rc_seen_cond_ratio_max"] == 1.2
    assert not checks.compute_checks(folder, ChecksConfig(rc_seen_cond_ratio_max=1.2, region_cv_min=2))["all_pass"]


def write_config(path, **thresholds):
    path.write_text(json.dumps({"experiment": {"checks": thresholds}}))  # JSON is YAML
    return path


def cli(*args):
    with pytest.raises(SystemExit) as exit_:
        main(["checks", *args])
    return exit_.value.code


def test_cli_exit_codes_and_checks_json(tmp_path, capsys):
    config = write_config(tmp_path / "cfg.yaml")
    good = build(tmp_path / "good", command=f"aria compare --seeds 3 --config {config}")
    assert cli("--compare", str(good)) == 0  # the config the compare command named
    saved = json.loads((good / "checks.json").read_text())
    assert saved["all_pass"] and saved["config"]["path"] == str(config)
    assert "| C1 teacher accuracy" in capsys.readouterr().out
    bad = build(tmp_path / "bad", **FAILS["C3 seen cond_discrepancy rc/none"])
    assert cli("--compare", str(bad), "--config", str(config)) == 1
    assert json.loads((bad / "checks.json").read_text())["all_pass"] is False
    # the config's thresholds decide: a lowered one passes, also through a --set recorded by compare
    assert cli("--compare", str(bad), "--config",
               str(write_config(tmp_path / "low.yaml", rc_seen_cond_ratio_max=1.2))) == 0
    recorded = build(tmp_path / "set", **FAILS["C3 seen cond_discrepancy rc/none"],
                     command=f"aria compare --config {config} --set experiment.checks.rc_seen_cond_ratio_max=1.2")
    assert cli("--compare", str(recorded)) == 0
    capsys.readouterr()
    for args in (["--compare", str(tmp_path / "nowhere"), "--config", str(config)],  # no folder
                 ["--compare", str(tmp_path), "--config", str(config)],  # no results.json
                 ["--compare", str(bad)],  # its command names no config
                 ["--compare", str(build(tmp_path / "gone", command="aria compare --config gone.yaml"))]):
        assert cli(*args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


def test_the_tracker_check_reads_the_timestep_normalised_record_when_the_log_has_it(tmp_path):
    """Raw observed discrepancy ranked against the probe (passes), the normalised record reversed: the
    check follows the normalised one and says so; without it, the raw one and says that."""
    folder = build(tmp_path)
    for seed in SEEDS:
        log = folder / "runs" / "rc" / f"seed{seed}" / "metrics.jsonl"
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        for line in lines:
            if "region_discrepancy" in line:
                line["region_discrepancy_tnorm"] = [None if v is None else -v for v in line["region_discrepancy"]]
        log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    row = {r["name"]: r for r in checks.compute_checks(folder, ChecksConfig())["checks"]}[
        "rc tracker input vs eval, Spearman per region"]
    assert row["value"] == pytest.approx(-1.0) and row["status"] == "fail"
    assert row["detail"] == "tracker input: timestep-normalised"
    raw = {r["name"]: r for r in checks.compute_checks(build(tmp_path / "raw"), ChecksConfig())["checks"]}[
        "rc tracker input vs eval, Spearman per region"]
    assert raw["status"] == "pass" and raw["detail"].startswith("tracker input: raw")


def test_a_run_lacking_what_a_check_reads_makes_it_missing_not_computed_on_the_others(tmp_path):
    """A check never passes on fewer runs than the folder holds: a regime or family without the teacher's
    judged accuracy, one rc run without its eval.json or its log, or a none run without seen accuracy."""
    folder = build(tmp_path / "teacher")
    results = json.loads((folder / "results.json").read_text())
    del results["runs"]["rc"]["1"]["family:fruit"]["teacher_accuracy"]
    write_json(folder / "results.json", results)
    assert statuses(checks.compute_checks(folder, ChecksConfig()))[
        "C1 teacher accuracy, min over regimes/families/runs"] == "missing"

    folder = build(tmp_path / "eval")
    (folder / "runs" / "rc" / "seed2" / "eval" / "eval.json").unlink()
    result = checks.compute_checks(folder, ChecksConfig())
    assert {n: s for n, s in statuses(result).items() if s != "pass"} == {
        n: "missing" for n in FAILS if n.startswith("C4") or "tracker" in n}
    assert any("seed2/eval/eval.json" in r["detail"] for r in result["checks"])

    folder = build(tmp_path / "log")
    (folder / "runs" / "rc" / "seed1" / "metrics.jsonl").write_text('{"step": 100, "loss": 1.0}\n')
    tracker = "C5 rc tracker input vs eval, Spearman per region"
    assert failing(checks.compute_checks(folder, ChecksConfig())) == {tracker}

    folder = build(tmp_path / "none")
    results = json.loads((folder / "results.json").read_text())
    del results["runs"]["none"]["0"]["seen"]["judge_accuracy"]
    write_json(folder / "results.json", results)
    assert statuses(checks.compute_checks(folder, ChecksConfig()))["C1 none seen accuracy"] == "missing"


def test_an_undefined_seed_fails_the_check_instead_of_leaving_the_mean(tmp_path):
    """A flat seed (every region equal) has no rank correlation: the seed agreement and the tracker check fail
    on it, though the other seeds agree perfectly."""
    folder = build(tmp_path)
    eval_json = folder / "runs" / "rc" / "seed1" / "eval" / "eval.json"
    ev = json.loads(eval_json.read_text())
    ev["regions"]["discrepancy"] = [None if v is None else 1.0 for v in ev["regions"]["discrepancy"]]
    write_json(eval_json, ev)
    by_name = {f"{r['check']} {r['name']}": r for r in checks.compute_checks(folder, ChecksConfig())["checks"]}
    for name in ("C4 rc region discrepancy Spearman between seeds", "C5 rc tracker input vs eval, Spearman per region"):
        assert by_name[name]["status"] == "fail" and by_name[name]["value"] is None
        assert "undefined for" in by_name[name]["detail"]
