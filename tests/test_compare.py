"""aria compare statistics, the results document and its --check, and compare end to end."""

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from aria.experiment import compare
from aria.experiment import report
from aria.experiment.bar import BARS
from aria.errors import UserError
from aria.experiment.stats import mean_ci
from aria.files import write_json


def test_mean_ci_matches_t_interval():
    x = [1.0, 2.0, 4.0]
    ci = mean_ci(x)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert ci["n"] == 3 and ci["mean"] == pytest.approx(7 / 3)
    assert (ci["low"], ci["high"]) == pytest.approx((low, high))
    assert mean_ci([5.0])["low"] is None and mean_ci([None])["mean"] is None


def fake_eval(disc, gap, seed):
    """An eval-JSON-shaped dict (only what the summary reads)."""
    metrics = {}
    for g, d in disc.items():
        metrics[g] = {"discrepancy": d + 0.01 * seed, "accuracy_gap": gap[g], "judge_accuracy": 0.5}
    return {"metrics": metrics, "probe": {"digest": "abc"}}


def synthetic_results():
    seeds = [0, 1, 2]
    evals = {
        "rc": {s: fake_eval({"seen": 1.0, "under": 1.0, "unseen": 1.0}, {"seen": 0, "under": 0.1, "unseen": 0.4}, s)
               for s in seeds},
        "aria": {s: fake_eval({"seen": 1.0, "under": 0.8, "unseen": 0.9}, {"seen": 0, "under": 0.1, "unseen": 0.1}, s)
                 for s in seeds},
    }
    res = compare.summarise(evals, ["rc", "aria"], seeds)
    res.update(format="aria-compare/1", command="aria compare --seeds 3", card="cpu", date="2026-01-01 00:00 UTC",
               wall_time_s=12.5, run_wall_time_s=30.25, steps=10, strategies=["rc", "aria"], seeds=seeds,
               probe_digest="abc", plots={"regime metrics per strategy": "plots/regime_metrics.png"}, runs={})
    return res


def test_checks_apply_the_bars():
    checks = {c["name"]: c for c in synthetic_results()["checks"]}
    assert checks["under discrepancy aria/rc"]["pass"]  # ~0.8 <= 0.85
    assert not checks["unseen discrepancy aria/rc"]["pass"]  # ~0.9 > 0.85
    assert checks["seen discrepancy aria/rc"]["pass"]  # 1.0 <= 1.02
    gap = checks["unseen accuracy gap: aria - 0.5 rc"]
    assert gap["pass"] and gap["mean"] == pytest.approx(0.1 - 0.5 * 0.4)


def test_results_doc_keeps_reading_and_check_catches_a_foreign_number(tmp_path):
    path = tmp_path / "res" / "results.json"
    write_json(path, synthetic_results())
    doc = tmp_path / "docs" / "RESULTS.md"
    text = compare.results_doc(path, doc)
    assert "12.5 s" in text and "aria compare --seeds 3" in text and "../res/plots/regime_metrics.png" in text
    compare.results_doc(path, doc, check=True)  # freshly generated: passes
    # the reading section survives regeneration; its prose is not checked
    doc.write_text(doc.read_text().replace(report.READING_DEFAULT, "aria wins on 0.123 of cases."))
    compare.results_doc(path, doc)
    assert "aria wins on 0.123 of cases." in doc.read_text()
    compare.results_doc(path, doc, check=True)
    # one number in the generated part changed by hand: the check fails naming the line
    mean = compare.read_results(path)["summary"]["aria"]["under"]["discrepancy"]["mean"]
    cell = report.fmt(mean)
    assert cell in doc.read_text()
    doc.write_text(doc.read_text().replace(cell, "0.7", 1))
    with pytest.raises(report.DocCheckError, match="does not come from the results JSON"):
        compare.results_doc(path, doc, check=True)


def test_results_doc_of_several_results_files_titles_them_and_checks_every_number(tmp_path):
    first, second = tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"
    write_json(first, synthetic_results())
    write_json(second, {**synthetic_results(), "command": "aria compare --seeds 3 --set data.world.seed=1"})
    doc = tmp_path / "RESULTS.md"
    text = compare.results_doc([first, second], doc)
    assert "## 1. headline" in text and "## 2. with `data.world.seed=1`" in text
    assert text.count("### The bar") == 2 and text.count(report.READING_OPEN) == 1
    doc.write_text(text.replace(report.READING_DEFAULT, "our reading"))
    compare.results_doc([first, second], doc, check=True)
    assert "our reading" in compare.results_doc([first, second], doc)  # the reading survives
    # a number of the second results changed by hand: the check fails
    cell = report.fmt(compare.read_results(second)["summary"]["aria"]["under"]["discrepancy"]["mean"])
    text = doc.read_text()
    at = text.index("## 2.")
    doc.write_text(text[:at] + text[at:].replace(cell, "0.7", 1))
    with pytest.raises(report.DocCheckError, match="does not come from the results JSON"):
        compare.results_doc([first, second], doc, check=True)


def test_results_cli_check_exits_1_and_bad_json_exits_2(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, synthetic_results())
    doc = tmp_path / "RESULTS.md"
    run = lambda *a: subprocess.run([sys.executable, "-m", "aria.cli", "results", *a],  # noqa: E731
                                    capture_output=True, text=True)
    assert run("--results", str(path), "--out", str(doc)).returncode == 0
    assert run("--results", str(path), "--out", str(doc), "--check").returncode == 0
    doc.write_text(doc.read_text().replace("12.5 s", "11 s"))
    out = run("--results", str(path), "--out", str(doc), "--check")
    assert out.returncode == 1 and "line" in out.stderr
    (tmp_path / "bad.json").write_text("{")
    out = run("--results", str(tmp_path / "bad.json"), "--out", str(doc))
    assert out.returncode == 2 and "bad.json" in out.stderr and out.stderr.count("\n") == 1


def test_read_results_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(UserError, match="x.json"):
        compare.read_results(tmp_path / "x.json")


@pytest.mark.slow
def test_compare_end_to_end_writes_every_promised_file(tmp_path, tmp_path_factory, monkeypatch):
    """Two strategies x one seed on tiny models: training subprocesses, evaluations, results folder,
    and a second call that finds every run done (resume) and rewrites the same tables."""
    import torch
    from test_evaluate import ROOT, make_world_teacher, world_sets

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the training subprocesses: no oversubscription stalls
    torch.set_num_threads(1)
    make_world_teacher(tmp_path / "teacher")
    sets = world_sets(tmp_path, tmp_path_factory.getbasetemp() / "world-cache")
    sets += ["distillation.steps=3", "distillation.batch_size=4", "logging.every=1", "logging.checkpoint_every=3",
             "backend.device=cpu", "encoder.device=cpu"]
    out = tmp_path / "cmp"
    args = ["compare", "--strategies", "rc,aria", "--seeds", "1", "--parallel", "2",
            "--config", str(ROOT / "configs" / "tiny-test.yaml"),
            "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    from aria.cli import main

    main(args)
    results = compare.read_results(out / "results.json")
    promised = ["results.json", "results.md", *results["plots"].values()]
    assert set(results["plots"]) == {"regime metrics per strategy", "aria allocation over time",
                                     "aria tracked vs measured discrepancy",
                                     "switched prompts per regime over steps, per strategy"}
    for name in promised:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for s in ("rc", "aria"):
        run = out / "runs" / s / "seed0"
        assert (run / "student" / "config.json").is_file() and (run / "metrics.jsonl").is_file()
        assert (run / "eval" / "eval.json").is_file() and (run / "eval" / "region_discrepancy.png").is_file()
    assert results["strategies"] == ["rc", "aria"] and results["seeds"] == [0] and results["steps"] == 3
    assert [c["name"] for c in results["checks"]] == [b[0] for b in BARS if b[3] != "headroom"]  # no oracle
    assert results["card"] and results["date"] and results["wall_time_s"] > 0
    assert "--strategies rc,aria" in results["command"]
    table = (out / "results.md").read_text()
    assert "unseen discrepancy aria/rc" in table and "| rc |" in table
    assert set(results["switched"]) == {"rc", "aria"} and "## Where the switched prompts went" in table
    for s in ("rc", "aria"):  # every switched sample is counted once, in some regime
        run = results["switched"][s]["0"]
        assert run["samples"] > 0 and sum(run["regime"].values()) == pytest.approx(1.0)
    # resumable: nothing is retrained or re-evaluated, the numbers are the same
    stamp = (out / "runs" / "rc" / "seed0" / "eval" / "eval.json").stat().st_mtime_ns
    main(args)
    again = compare.read_results(out / "results.json")
    assert again["summary"] == results["summary"]
    assert (out / "runs" / "rc" / "seed0" / "eval" / "eval.json").stat().st_mtime_ns == stamp
    doc = tmp_path / "RESULTS.md"
    compare.results_doc(out / "results.json", doc)
    compare.results_doc(out / "results.json", doc, check=True)
    # --summary-only trains and evaluates nothing: a second seed that was never run is listed as missing
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("summary-only started a subprocess"))
    summary = compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc", "aria"], [0, 1], out, 1, sets,
                              summary_only=True)
    assert summary["missing"] == ["rc/seed1", "aria/seed1"] and summary["wall_time_s"] is None
    assert summary["summary"]["rc"]["all"]["discrepancy"]["n"] == 1
    assert (summary["summary"]["rc"]["all"]["discrepancy"]["mean"]
            == results["summary"]["rc"]["all"]["discrepancy"]["mean"])
    assert "missing runs (not in the statistics): rc/seed1, aria/seed1" in (out / "results.md").read_text()
    # the summaries below check the results' date and card, which come from the runs' records and files, not
    # from the plots: the calls above drew those from these same runs, these do not redraw them (~2 s each)
    monkeypatch.setattr(compare, "make_plots", lambda *a, **k: {})
    # the results' date is the evaluation's, recorded in compare.json: a copy or a clone (new mtimes) keeps it
    for s in ("rc", "aria"):
        os.utime(out / "runs" / s / "seed0" / "eval" / "eval.json", (0, 0))
    assert compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc", "aria"], [0], out, 1, sets,
                           summary_only=True)["date"] == results["date"]
    # a run without a record of its time (evaluated before compare kept one) does not bring in its clone's
    # mtime; where no run has a record, the newest mtime is all there is
    records = {s: out / "runs" / s / "seed0" / "compare.json" for s in ("rc", "aria")}
    kept = {s: r.read_text() for s, r in records.items()}
    aria_time = json.loads(kept["aria"])["evaluated_at"]

    def summary_date():
        return compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc", "aria"], [0], out, 1, sets,
                               summary_only=True)["date"]

    def unrecord(s, key="evaluated_at"):
        records[s].write_text(json.dumps({k: v for k, v in json.loads(records[s].read_text()).items() if k != key}))

    try:
        os.utime(out / "runs" / "rc" / "seed0" / "eval" / "eval.json", (4102444800, 4102444800))  # 2100
        unrecord("rc")
        assert summary_date() == _dt.datetime.fromtimestamp(aria_time, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        unrecord("aria")
        assert summary_date() == "2100-01-01 00:00 UTC"
        # the card is where the runs trained, as recorded: a run without a record of it is not the summariser's
        trained_on = json.loads(kept["rc"])["card"]
        unrecord("rc", "card")
        card = compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc", "aria"], [0], out, 1, sets,
                               summary_only=True)["card"]
        assert card == " + ".join(sorted([trained_on, compare.NO_CARD]))
        records["rc"].unlink()
        assert compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc", "aria"], [0], out, 1, sets,
                               summary_only=True)["card"] == card
    finally:
        for s, r in records.items():
            r.write_text(kept[s])
    # the same folder with another config is refused before any work
    with pytest.raises(UserError, match="trained with another config"):
        compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc"], [0], out, 1, [*sets, "distillation.steps=4"])
    # and with other weights at the teacher's path (the config names only the path)
    record = json.loads((out / "runs" / "rc" / "seed0" / "compare.json").read_text())
    assert set(record["assets"]) == {"teacher.path"} and len(record["assets"]["teacher.path"]) == 16
    weights = next((tmp_path / "teacher").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(UserError, match=r"trained with other weights at teacher.path \(digest "):  # before any run
        compare.compare(ROOT / "configs" / "tiny-test.yaml", ["rc"], [0], out, 1, sets)


TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


def _cut_writes(monkeypatch):
    """Every ``Path.write_text`` from now on writes half its text, then fails (a kill or a full disk)."""
    real = Path.write_text

    def cut(self, text, *args, **kwargs):
        real(self, text[:len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", cut)


def test_a_write_cut_short_leaves_the_run_record_whole(tmp_path, monkeypatch):
    """compare.json is written to a temporary file renamed into place: a write that dies half way leaves the
    previous record (and no leftover), never the truncated file a --summary-only would choke on."""
    out = tmp_path / "cmp"
    p = compare.run_paths(out, "rc", 0)
    p["run"].mkdir(parents=True)
    before = {"config": "digest-of-the-config", "assets": {}, "train_s": 1.5, "eval_s": 0.5, "card": "cpu"}
    p["record"].write_text(json.dumps(before))
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("no run must start"))
    _cut_writes(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        compare._job(out, TINY, [], "rc", 0, {}, {"config": "digest-of-the-config", "assets": {}},
                     compare.GpuSlots("cpu", 0))
    monkeypatch.undo()
    assert json.loads(p["record"].read_text()) == before
    assert [f.name for f in p["run"].iterdir()] == ["compare.json"]


def test_results_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """The results document (and results.md) are renamed into place: a write cut short keeps the previous one."""
    path = tmp_path / "results.json"
    write_json(path, synthetic_results())
    doc = tmp_path / "RESULTS.md"
    compare.results_doc(path, doc)
    kept = doc.read_text()
    _cut_writes(monkeypatch)
    with pytest.raises(OSError):
        compare.results_doc(path, doc)
    monkeypatch.undo()
    assert doc.read_text() == kept and sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "results.json"]


@pytest.mark.parametrize("name, needle", [("eval/eval.json", "delete its eval/ folder"),
                                          ("compare.json", "delete that run folder")])
def test_a_truncated_run_file_is_one_line_naming_it(tmp_path, name, needle):
    """--summary-only over a folder copied in part: half an eval.json or compare.json is a UserError naming the
    file and what to do, not a JSONDecodeError."""
    out = tmp_path / "cmp"
    run = compare.run_paths(out, "rc", 0)["run"]
    (run / "eval").mkdir(parents=True)
    if name == "compare.json":
        (run / "eval" / "eval.json").write_text(json.dumps({"format": "aria-eval/1"}))
    (run / name).write_text('{"format": "aria-eval/1", "metrics": {"all": {"discrep')
    with pytest.raises(UserError, match=f"{name}: not valid JSON") as err:
        compare.compare(TINY, ["rc"], [0], out, 1, [], summary_only=True)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_bad_out_fails_before_any_work(tmp_path, monkeypatch):
    """--out a file, or under one: one line before the configs are loaded or the data prepared."""
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(compare, "_device_card", lambda: pytest.fail("got past the --out check"))
    for out, problem in ((tmp_path / "file", "is a file, not a folder"),
                         (tmp_path / "file" / "cmp", "cannot be created")):
        with pytest.raises(UserError, match=f"--out {out}: {problem}"):
            compare.compare(TINY, ["rc"], [0], out, 1, [])


def test_seeds_take_a_count_or_a_list():
    from aria.cli.experiment import parse_seeds

    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,4,7") == [0, 4, 7]
    for bad in ("0", "x", "1,1", ","):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_gpu_slots_spread_runs_over_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = compare.GpuSlots("2 cards", 2)
    with slots.take() as a, slots.take() as b, slots.take() as c:
        assert ({a["CUDA_VISIBLE_DEVICES"], b["CUDA_VISIBLE_DEVICES"]} == {"3", "5"}
                and c["CUDA_VISIBLE_DEVICES"] in "35")
    assert set(slots.load.values()) == {0}  # released
    with compare.GpuSlots("cpu", 0).take() as env, compare.GpuSlots("1 card", 1).take() as one:
        assert env == {} and one == {}  # nothing to choose


def test_config_digest_keeps_the_experiment_runs_valid():
    """docs/results/shapes-gpu's runs were made with the config recorded in tests/data (its digest is the
    one in their compare.json files): a new config field must not change what the digest covers (the
    compare folders check it), speed-only settings do not count, a result-changing one does."""
    from aria.config import load_config

    sets = ["encoder.path=.encoder", "encoder.device=cuda", "logging.progress=false"]
    config = Path(__file__).resolve().parents[1] / "configs" / "shapes-gpu.yaml"
    recorded = json.loads((Path(__file__).parent / "data" / "shapes-gpu-digest-fields.json").read_text())
    assert compare.digest_fields(load_config(config, sets)) == recorded
    digest = lambda *extra: compare.config_digest(load_config(config, [*sets, *extra]))  # noqa: E731
    assert digest("distillation.step_sync=device") == digest("eval.batch_size=8") == digest()
    assert digest("distillation.step_sync=device", "distillation.feedback_delay=1") != digest()
    assert digest("distillation.lr=1e-4") != digest()
    # fields added after the runs count only away from the default that reproduces them
    assert digest("distillation.lr_schedule=constant", "backend.sdpa_backend=auto", "backend.fp8=none") == digest()
    assert digest("distillation.lr_schedule=cosine") != digest() != digest("backend.sdpa_backend=math")
    assert (digest("student.init_from_teacher=false", "student.init_path=stage1")
            != digest("student.init_from_teacher=false"))
    assert set(compare.ADDED_LATER) <= {(s, k) for s, fields in load_config(config, sets).model_dump().items()
                                        if isinstance(fields, dict) for k in fields}


def results_with_runs(disc_by_strategy: dict, seeds: list[int], command: str) -> dict:
    """Results JSON with per-seed runs: discrepancy disc[g] * (1 + seed / 100) per strategy and regime."""
    gap = {"seen": 0.0, "under": 0.1, "unseen": 0.2}
    evals = {s: {seed: fake_eval({g: d * (1 + seed / 100) - 0.01 * seed for g, d in disc.items()}, gap, seed)
                 for seed in seeds} for s, disc in disc_by_strategy.items()}
    names = list(disc_by_strategy)
    res = compare.summarise(evals, names, seeds)
    res.update(format="aria-compare/1", command=command, card="cpu", date="2026-01-01 00:00 UTC", wall_time_s=1.0,
               run_wall_time_s=2.0, steps=10, strategies=names, seeds=seeds, probe_digest="abc", plots={},
               runs={s: {str(seed): e["metrics"] for seed, e in by_seed.items()} for s, by_seed in evals.items()})
    return res


def test_ablations_are_tabled_against_their_own_rc_or_the_headlines(tmp_path):
    regimes = ("seen", "under", "unseen")
    head = results_with_runs({"rc": dict.fromkeys(regimes, 2.0), "aria": dict.fromkeys(regimes, 1.8)}, [0, 1, 2],
                             "aria compare --seeds 3")
    eps = results_with_runs({"aria": {"seen": 1.0, "under": 1.2, "unseen": 1.4}}, [0, 2],
                            "aria compare --seeds 0,2 --set strategy.params.aria.eps=0.5")
    sched = results_with_runs({"rc": dict.fromkeys(regimes, 4.0), "aria": dict.fromkeys(regimes, 3.0)}, [0, 1],
                              "aria compare --seeds 2 --set distillation.switch_schedule=sigmoid")
    paths = []
    for name, res in (("head", head), ("eps", eps), ("sched", sched)):
        paths.append(tmp_path / name / "results.json")
        write_json(paths[-1], res)
    eps_row, = report.ablation_rows(head, eps)
    assert eps_row["rc"] == "reference" and eps_row["seeds"] == ["0", "2"]
    assert eps_row["cells"]["unseen"]["mean"] == pytest.approx(0.7)  # 1.4 / 2.0 at both seeds
    sched_row, = report.ablation_rows(head, sched)
    assert sched_row["rc"] == "own" and sched_row["cells"]["seen"]["mean"] == pytest.approx(0.75)
    doc = tmp_path / "docs" / "RESULTS.md"
    text = compare.results_doc([paths[0]], doc, ablation_paths=paths[1:])
    assert "## Ablations" in text and "`strategy.params.aria.eps=0.5`" in text and "../eps/results.md" in text
    assert "| 0.7 [0.7, 0.7] |" in text
    compare.results_doc([paths[0]], doc, check=True, ablation_paths=paths[1:])
    doc.write_text(doc.read_text().replace("| 0.7 [0.7, 0.7] |", "| 0.6 [0.6, 0.6] |"))
    with pytest.raises(report.DocCheckError, match="does not come from the results JSON"):
        compare.results_doc([paths[0]], doc, check=True, ablation_paths=paths[1:])
    # the document names its sources, ablations included: `aria results --check` alone finds them
    assert report.document_sources(doc.read_text(), doc) == ([paths[0]], paths[1:])
    run = lambda *a: subprocess.run([sys.executable, "-m", "aria.cli", "results", "--out", str(doc), *a],  # noqa: E731
                                    capture_output=True, text=True)
    assert run("--check").returncode == 1  # still the hand-edited cell
    assert run().returncode == 0 and run("--check").returncode == 0  # regenerated from the named sources
    assert "| 0.7 [0.7, 0.7] |" in doc.read_text()
    cli = lambda *a: subprocess.run([sys.executable, "-m", "aria.cli", "results", *a],  # noqa: E731
                                    capture_output=True, text=True)
    (tmp_path / "other.md").write_text("# not generated\n")
    for args, says in ((("--check", "--out", str(tmp_path / "other.md")), "names no results JSON"),
                       (("--ablation", str(paths[1]), "--out", str(doc)), "--ablation needs --results"),
                       (("--out", str(tmp_path / "none.md")), "does not exist: give --results")):
        out = cli(*args)
        assert out.returncode == 2 and says in out.stderr and out.stderr.count("\n") == 1, out.stderr
    shutil.move(tmp_path / "sched", tmp_path / "moved")  # a source the line names is gone
    out = run("--check")
    assert out.returncode == 2 and "sched/results.json on its source line, which does not exist" in out.stderr
    odd = tmp_path / "a, b" / "results.json"  # a path the source line could not carry back
    odd.parent.mkdir()
    shutil.copy(paths[0], odd)
    out = cli("--results", str(odd), "--out", str(tmp_path / "odd.md"))
    assert out.returncode == 2 and "cannot be named in the document's source line" in out.stderr
    assert not (tmp_path / "odd.md").exists()


def test_shipped_results_document_is_what_its_results_generate():
    """docs/RESULTS.md, as committed, is generated from the results it names (only the reading is edited)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "aria.cli", "results", "--check"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_an_ablation_is_set_against_the_same_strategy_and_never_across_probe_sets(tmp_path):
    """The second ablation table: each strategy over itself in the reference, paired by seed. A setting that
    changes the regions changes the region-stratified probe prompts: no ratio to the reference then."""
    regimes = ("seen", "under", "unseen")
    head = results_with_runs({"rc": dict.fromkeys(regimes, 2.0), "aria": dict.fromkeys(regimes, 1.8)}, [0, 1, 2],
                             "aria compare --seeds 3")
    sched = results_with_runs({"rc": dict.fromkeys(regimes, 4.0), "aria": dict.fromkeys(regimes, 3.6)}, [0, 1],
                              "aria compare --seeds 2 --set distillation.switch_schedule=sigmoid")
    k16 = results_with_runs({"aria": dict.fromkeys(regimes, 1.0)}, [0, 1, 2],
                            "aria compare --seeds 3 --set regions.k=16")
    k16["probe_digest"] = "other"
    rows = {r["strategy"]: r for r in report.setting_rows(head, sched)}
    assert list(rows) == ["rc", "aria"] and rows["rc"]["seeds"] == ["0", "1"]
    assert rows["rc"]["cells"]["seen"]["mean"] == pytest.approx(2.0, rel=1e-2)  # 4.0 over 2.0, per seed
    assert rows["aria"]["cells"]["unseen"]["mean"] == pytest.approx(2.0, rel=1e-2)  # 3.6 over 1.8
    assert report.ablation_rows(head, k16)[0]["cells"] == dict.fromkeys(regimes)  # reference rc, other probes
    assert report.setting_rows(head, k16)[0]["cells"] == dict.fromkeys(regimes)
    paths = []
    for name, res in (("head", head), ("sched", sched), ("k16", k16)):
        paths.append(tmp_path / name / "results.json")
        write_json(paths[-1], res)
    text = compare.results_doc([paths[0]], tmp_path / "docs" / "RESULTS.md", ablation_paths=paths[1:])
    k16_rows = [line for line in text.splitlines() if line.startswith("| [with `regions.k=16`]")]
    assert len(k16_rows) == 2 and all(line.count(report.OTHER_PROBES) == 3 for line in k16_rows)
    assert "| seen / the same in it |" in text


def test_ablations_pair_with_the_results_of_their_own_config_and_sections_are_titled_by_it(tmp_path):
    """A headline of one config (world v2) before the results of another (world v1) and its ablation: the
    ablation is divided by its own config's rc and titled against it; an ablation of a config that no
    --results has is refused in one line."""
    regimes = ("seen", "under", "unseen")
    v2 = results_with_runs({"rc": dict.fromkeys(regimes, 10.0), "oracle": dict.fromkeys(regimes, 9.0)}, [0, 1],
                           "aria compare --seeds 2 --config configs/v2.yaml")
    v1 = results_with_runs({"rc": dict.fromkeys(regimes, 2.0), "aria": dict.fromkeys(regimes, 1.8)}, [0, 1],
                           "aria compare --seeds 2 --config configs/v1.yaml --set encoder.device=cuda")
    v1_seed = results_with_runs({"rc": dict.fromkeys(regimes, 2.0)}, [0, 1],
                                "aria compare --seeds 2 --config configs/v1.yaml --set encoder.device=cuda "
                                "--set data.world.seed=1")
    eps = results_with_runs({"aria": dict.fromkeys(regimes, 1.0)}, [0, 1],
                            "aria compare --seeds 2 --config configs/v1.yaml --set encoder.device=cuda "
                            "--set strategy.params.aria.eps=0.5")
    paths = {}
    for name, res in (("v2", v2), ("v1", v1), ("v1s", v1_seed), ("eps", eps)):
        paths[name] = tmp_path / name / "results.json"
        write_json(paths[name], res)
    text = compare.results_doc([paths["v2"], paths["v1"], paths["v1s"]], tmp_path / "RESULTS.md",
                               ablation_paths=[paths["eps"]])
    assert "## 2. `configs/v1.yaml` (" in text and "## 3. with `data.world.seed=1` (" in text
    ablations = text[text.index("## Ablations"):]
    assert "[with `strategy.params.aria.eps=0.5`]" in ablations and "encoder.device" not in ablations
    eps_line = next(line for line in ablations.splitlines() if "eps=0.5" in line)
    assert eps_line.endswith("| 0.5 [0.5, 0.5] | 0.5 [0.5, 0.5] | 0.5 [0.5, 0.5] |")  # 1.0 / v1's rc 2.0
    assert "| `configs/v1.yaml`'s |" in eps_line  # whose rc divides it (v2's rc would give 0.1)
    assert "| `configs/v1.yaml` | aria | its own |" in ablations  # the reference row above it
    with pytest.raises(UserError, match="no --results made with its config"):
        compare.results_doc([paths["v2"]], tmp_path / "R2.md", ablation_paths=[paths["eps"]])
    # an ablation of the second world (its --set values extend v1_seed's) is divided by that world's rc
    seed_eps = results_with_runs({"aria": dict.fromkeys(regimes, 1.0)}, [0, 1],
                                 "aria compare --seeds 2 --config configs/v1.yaml --set encoder.device=cuda "
                                 "--set data.world.seed=1 --set 'strategy.params.aria.eps=0.5'")
    assert report.reference_for(seed_eps, [v2, v1, v1_seed]) is v1_seed
    assert report.reference_for(eps, [v2, v1, v1_seed]) is v1
    assert report.command_options(seed_eps["command"]) == (
        "configs/v1.yaml", ["encoder.device=cuda", "data.world.seed=1", "strategy.params.aria.eps=0.5"])


def test_results_doc_puts_the_pre_registered_checks_first_and_the_oracle_headroom_with_shares(tmp_path):
    regimes = ("seen", "under", "unseen")
    res = results_with_runs({"rc": dict.fromkeys(regimes, 2.0), "oracle": {"seen": 2.1, "under": 1.8, "unseen": 1.6},
                             "aria": {"seen": 2.0, "under": 1.9, "unseen": 1.8}, "none": dict.fromkeys(regimes, 2.2)},
                            [0, 1, 2], "aria compare --seeds 3")
    ratios = res["ratios"]
    lines = "\n".join(report.headroom_section(res)).splitlines()
    unseen = next(line for line in lines if line.startswith("| unseen |"))
    headroom = 1 - ratios["oracle"]["unseen"]["discrepancy"]["mean"]  # ~0.2
    share = (1 - ratios["aria"]["unseen"]["discrepancy"]["mean"]) / headroom  # ~0.5
    assert headroom == pytest.approx(0.2, abs=0.01) and share == pytest.approx(0.5, abs=0.03)
    assert f"| {report.fmt(headroom)} |" in unseen and f"| {report.fmt(share)} |" in unseen
    assert "| n/a |" in next(line for line in lines if line.startswith("| seen |"))  # the oracle gains nothing there
    none_share = (1 - ratios["none"]["unseen"]["discrepancy"]["mean"]) / headroom
    assert none_share < 0 and f"| {report.fmt(none_share)} |" in unseen
    assert report.headroom_section({**res, "ratios": {"aria": ratios["aria"]}}) == []  # no oracle, no section

    path = tmp_path / "res" / "results.json"
    write_json(path, res)
    checks = {"format": "aria-checks/1", "all_pass": False, "checks": [
        {"check": "C2", "name": "none unseen/seen discrepancy", "value": 5.25, "op": ">=", "threshold": 3.0, "n": 2,
         "status": "pass", "detail": ""},
        {"check": "C5", "name": "unseen discrepancy oracle/rc", "value": 0.8585, "op": "<=", "threshold": 0.85, "n": 1,
         "status": "fail", "detail": "one seed"}]}
    write_json(path.parent / "checks.json", checks)
    doc = tmp_path / "RESULTS.md"
    text = compare.results_doc(path, doc)
    assert text.index("Pre-registered checks") < text.index("## The bar") < text.index("The oracle's headroom")
    assert "| C5 unseen discrepancy oracle/rc | 0.8585 | <= 0.85 | 1 | fail (one seed) |" in text
    compare.results_doc(path, doc, check=True)
    doc.write_text(text.replace("| 0.8585 |", "| 0.8 |"))
    with pytest.raises(report.DocCheckError, match="does not come from the results JSON"):
        compare.results_doc(path, doc, check=True)
    (path.parent / "checks.json").write_text("{not json")
    with pytest.raises(UserError, match="checks.json: not valid JSON"):
        compare.results_doc(path, doc)


def test_a_metric_some_runs_lack_is_left_out_whatever_the_strategy_order():
    """Runs evaluated before a metric existed beside runs that report it (split 1's first 18 runs and the
    rest): the summary keeps the metrics every run has, not the first run's."""
    seeds = [0, 1]
    gap = {"seen": 0.0, "unseen": 0.1}
    old = {s: fake_eval({"seen": 1.0, "unseen": 1.0}, gap, s) for s in seeds}
    new = {s: fake_eval({"seen": 1.0, "unseen": 0.9}, gap, s) for s in seeds}
    for e in new.values():
        for m in e["metrics"].values():
            m["guided_discrepancy"] = 2.0
    for order in (["rc", "aria"], ["aria", "rc"]):
        evals = {"rc": old, "aria": new} if order[0] == "rc" else {"aria": new, "rc": old}
        res = compare.summarise(evals, order, seeds)
        assert "guided_discrepancy" not in res["metrics"] and "discrepancy" in res["metrics"]
    both = compare.summarise({"rc": new, "aria": new}, ["rc", "aria"], seeds)
    assert "guided_discrepancy" in both["metrics"]


def test_the_bar_includes_half_the_oracles_headroom_when_an_oracle_ran():
    seeds = [0, 1, 2]
    gap = {"seen": 0.0, "under": 0.1, "unseen": 0.2}
    disc = {"rc": 2.0, "oracle": 1.6, "aria": 1.75}  # aria takes 62.5% of the oracle's 0.4 on unseen
    evals = {s: {seed: fake_eval({"seen": 1.0, "under": 1.0, "unseen": d + 0.001 * seed * (s == "aria")}, gap, seed)
                 for seed in seeds} for s, d in disc.items()}
    rows = {c["name"]: c for c in compare.summarise(evals, list(disc), seeds)["checks"]}
    half = rows["unseen discrepancy: aria - min(rc, rc - 0.5 (rc - oracle))"]
    per_seed = [(1.75 + 0.001 * s + 0.01 * s) - ((2.0 + 0.01 * s) - 0.5 * 0.4) for s in seeds]  # fake_eval adds 0.01 s
    assert half["mean"] == pytest.approx(np.mean(per_seed)) and half["pass"] and half["ci_clear"]
    evals["aria"] = {seed: fake_eval({"seen": 1.0, "under": 1.0, "unseen": 1.9}, gap, seed) for seed in seeds}
    assert not {c["name"]: c for c in compare.summarise(evals, list(disc), seeds)["checks"]}[half["name"]]["pass"]
    # an oracle worse than rc sets no bar above rc: aria between rc and that oracle fails
    worse = {**evals,
             "oracle": {seed: fake_eval({"seen": 1.0, "under": 1.0, "unseen": 2.4}, gap, seed) for seed in seeds},
             "aria": {seed: fake_eval({"seen": 1.0, "under": 1.0, "unseen": 2.1}, gap, seed) for seed in seeds}}
    row = {c["name"]: c for c in compare.summarise(worse, list(disc), seeds)["checks"]}[half["name"]]
    assert row["mean"] == pytest.approx(0.1) and not row["pass"]  # 2.1 - min(2.0, 2.2), each seed
    del evals["oracle"]
    assert half["name"] not in {c["name"] for c in compare.summarise(evals, ["rc", "aria"], seeds)["checks"]}


# two splits of one config, as results files that ran rc, the oracle and aria (pooled by ``aria results``)
SPLIT_REGIMES = ("seen", "under", "unseen")
SPLIT0 = {"rc": dict.fromkeys(SPLIT_REGIMES, 2.0), "oracle": {"seen": 2.0, "under": 1.9, "unseen": 1.6},
          "aria": {"seen": 2.0, "under": 1.9, "unseen": 1.7}}
SPLIT1 = {"rc": dict.fromkeys(SPLIT_REGIMES, 3.0), "oracle": {"seen": 3.0, "under": 3.0, "unseen": 2.4},
          "aria": {"seen": 3.1, "under": 3.0, "unseen": 2.9}}
SPLIT_BASE = "aria compare --config c.yaml --set encoder.path=/e"
SPLIT1_SETS = " --set data.concepts.seed=1 --set student.init_path=s1"


def split_results(disc: dict, seeds: list[int], command: str, missing=()) -> dict:
    """Results JSON whose ratios to rc vary by seed: probe discrepancy disc[s][g] * (1 + 0.05 * seed * k_s) and
    D_c at 0.6 times it, for strategy number k_s; ``missing``: (strategy, seed) runs left out."""
    gap = {"seen": 0.0, "under": 0.1, "unseen": 0.2}
    evals = {}
    for k, (s, d) in enumerate(disc.items()):
        evals[s] = {}
        for seed in seeds:
            if (s, seed) in missing:
                evals[s][seed] = None
                continue
            evals[s][seed] = fake_eval({g: v * (1 + 0.05 * seed * k) for g, v in d.items()}, gap, 0)
            for g in d:
                evals[s][seed]["metrics"][g]["cond_discrepancy"] = 0.6 * evals[s][seed]["metrics"][g]["discrepancy"]
    res = compare.summarise(evals, list(disc), seeds)
    res.update(format="aria-compare/1", command=command, card="cpu", date="2026-01-01 00:00 UTC", wall_time_s=1.0,
               run_wall_time_s=2.0, steps=10, strategies=list(disc), seeds=seeds, probe_digest="abc", plots={},
               runs={s: {str(seed): e["metrics"] for seed, e in by_seed.items() if e} for s, by_seed in evals.items()})
    return res, evals


def test_splits_of_one_config_are_pooled_into_the_bar_as_further_seeds(tmp_path):
    split0, split1, base = SPLIT0, SPLIT1, SPLIT_BASE
    first, evals0 = split_results(split0, [0, 1, 2], base)
    second, evals1 = split_results(split1, [0, 1, 2], base + SPLIT1_SETS, missing={("aria", 2)})
    other, _ = split_results(split0, [0, 1], "aria compare --config other.yaml")
    longer, _ = split_results(split0, [0, 1], base + " --set distillation.steps=50 --set data.concepts.seed=2")
    lines = "\n".join(report.pooled_sections([first, other, second, longer])).splitlines()
    # only the files that differ in their split are pooled (not another config, not another --set)
    assert [line for line in lines if line.startswith("## ")] == [
        "## Across the splits of `c.yaml`: headline, with `data.concepts.seed=1`, `student.init_path=s1`"]
    # the reference: the bar of one comparison whose seeds are both files' runs, renumbered
    pooled = {s: {**evals0[s], **{3 + seed: e for seed, e in evals1[s].items()}} for s in split0}
    reference = compare.summarise(pooled, list(split0), list(range(6)))["checks"]
    assert any(c["name"].startswith("unseen cond_discrepancy") for c in reference)
    for check in reference:
        row = next(line for line in lines if line.startswith(f"| {check['name']} |"))
        assert f"| {report.fmt_ci(check)} | {check['n']} |" in row
        assert row.endswith(f"| {'pass' if check['pass'] else 'fail'} | {report.fmt(check['ci_clear'])} |")
        for res in (first, second):  # and each file's own verdict
            own = next(c for c in res["checks"] if c["name"] == check["name"])
            assert f"| {report.fmt(own['mean'])} {'pass' if own['pass'] else 'fail'} |" in row
    # the share of the oracle's unseen D_c gain, over the (file, seed) pairs where aria, rc and the oracle ran
    def dc(evals, s, seeds):
        return [evals[s][seed]["metrics"]["unseen"]["cond_discrepancy"] for seed in seeds]

    pairs = [(evals0, [0, 1, 2]), (evals1, [0, 1])]
    aria = np.concatenate([np.array(dc(e, "aria", k)) / dc(e, "rc", k) for e, k in pairs])
    oracle = np.concatenate([np.array(dc(e, "oracle", k)) / dc(e, "rc", k) for e, k in pairs])
    share = (1 - aria.mean()) / (1 - oracle.mean())
    row = next(line for line in lines if line.startswith("| aria |"))
    assert row.endswith(f"| {report.fmt_ci(mean_ci(aria))} | {report.fmt(share)} |")
    oracle_all = np.concatenate([oracle, [dc(evals1, "oracle", [2])[0] / dc(evals1, "rc", [2])[0]]])
    unmatched = (1 - aria.mean()) / (1 - oracle_all.mean())  # the oracle's mean over a seed aria lacks
    assert report.fmt(unmatched) != report.fmt(share) and f"| {report.fmt(unmatched)} |" not in row
    # in the document: after the numbered sections, and checked like the rest
    paths = []
    for name, res in (("a", first), ("b", second)):
        paths.append(tmp_path / name / "results.json")
        write_json(paths[-1], res)
    doc = tmp_path / "RESULTS.md"
    text = compare.results_doc(paths, doc)
    assert text.index("## 2. with") < text.index("## Across the splits of `c.yaml`")
    row = next(line for line in text.splitlines() if line.startswith("| seen discrepancy aria/rc |"))
    doc.write_text(text.replace(row, row.replace("| <= 1.02 |", "| <= 1.2 |")))
    with pytest.raises(report.DocCheckError):
        compare.results_doc(paths, doc, check=True)
