"""``aria compare``: train and evaluate strategies x seeds; ``aria results``: the results document.

Each (strategy, seed) run trains in an ``aria run`` subprocess, ``--parallel`` at a time (small
models leave a GPU idle; several GPUs share the runs), in ``OUT/runs/<strategy>/seed<s>``, then is
evaluated by an ``aria eval`` subprocess on the same GPU (the teacher's reference, computed once, is
shared through ``OUT/reference``). Jobs start in the order ``rc``, ``aria``, then the others, seed
by seed, so that a comparison cut short has its headline pair first. A run whose
``eval/eval.json`` exists is skipped and a trained student is not retrained, so an interrupted
comparison resumes. Each run's ``compare.json`` keeps the config digest and the digests of the weights
the config names by path (the teacher, ``student.init_path``): an ``OUT`` holding runs of another
config, or made with other weights at those paths, is refused. The summary is the mean and 95%
t-interval over seeds; ratios to ``rc`` are paired per seed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aria.errors import UserError
from aria.experiment import report
from aria.experiment.allocation import group_mix, switched_by_group
from aria.experiment.bar import bar_checks
from aria.experiment.plots import history
from aria.experiment.stats import mean_ci, paired_ratios
from aria.devices import check_config_devices
from aria.files import check_output_folder, read_json, read_tagged_json, write_json, write_text_atomic
from aria.training.metrics import read_log

# what to do about a run whose compare.json or eval.json is unreadable (a copy or a write cut short)
BROKEN_RECORD = "; copy that run again, or delete that run folder (trained again)"
BROKEN_EVAL = "; copy that run again, or delete its eval/ folder (evaluated again)"
RATIO_METHOD = "mean of the paired per-seed ratios strategy/rc, with a 95% t-interval over seeds"
TEACHER_ONLY = ("teacher_accuracy",)  # the same for every student: no ratio


def summarise(evals: dict, strategies: list[str], seeds: list[int]) -> dict:
    """summary, ratios and checks from ``evals[strategy][seed]`` (eval JSON dicts; None = missing run)."""
    runs = [e["metrics"] for by_seed in evals.values() for e in by_seed.values() if e is not None]
    groups = list(runs[0])
    # the metrics every run reports: a folder mixing evaluations from before and after a metric was added
    # leaves it out, whatever the order of its strategies
    metrics = [m for m in report.METRICS if all(m in run[groups[0]] for run in runs)]

    def per_seed(s, g, m):
        return [None if evals[s][seed] is None else evals[s][seed]["metrics"].get(g, {}).get(m) for seed in seeds]

    summary = {s: {g: {m: mean_ci(per_seed(s, g, m)) for m in metrics} for g in groups} for s in strategies}
    ratios = {}
    if "rc" in strategies:
        ratios = {s: {g: {m: mean_ci(paired_ratios(per_seed(s, g, m), per_seed("rc", g, m)))
                          for m in metrics if m not in TEACHER_ONLY} for g in groups} for s in strategies if s != "rc"}
    return {"groups": groups, "metrics": metrics, "summary": summary, "ratios": ratios,
            "ratio_method": RATIO_METHOD, "checks": bar_checks(per_seed, groups, metrics, strategies)}


# -- running ---------------------------------------------------------------------------------------

def _aria(*args) -> list[str]:
    return [sys.executable, "-m", "aria.cli", *args]


def run_paths(out: Path, strategy: str, seed: int) -> dict:
    run = Path(out) / "runs" / strategy / f"seed{seed}"
    return {"run": run, "eval": run / "eval", "eval_json": run / "eval" / "eval.json", "record": run / "compare.json"}


def digest_fields(config) -> dict:
    """What a run's result depends on, apart from its seed, folder and strategy name (plain data)."""
    from aria.config import config_to_dict

    data = config_to_dict(config)
    for key in ("seed", "output_dir", "logging"):
        data.pop(key)
    data.pop("experiment", None)  # the pre-registered checks judge the runs; they do not change them
    data["strategy"].pop("name")
    if data["data"]["source"] != "concepts":  # the world v2 section, unused by other sources (digests made
        data["data"].pop("concepts")  # before it existed stay valid)
    data["eval"].pop("batch_size")  # speed only
    data["distillation"].pop("step_sync")  # where a non-finite step is skipped: speed only, the same results
    for (section, key), default in ADDED_LATER.items():  # at the default: digests made before them stay valid
        if data[section].get(key, default) == default:
            data[section].pop(key, None)
    return data


# Fields added after runs were recorded, with the default that reproduces those runs.
ADDED_LATER = {
    ("distillation", "feedback_delay"): 0,
    ("distillation", "lr_schedule"): "constant",
    ("distillation", "lr_final"): 0.0,
    ("backend", "fp8"): "none",
    ("backend", "fp8_emulate"): False,
    ("backend", "channels_last"): False,
    ("backend", "compile_mode"): "default",
    ("backend", "sdpa_backend"): "auto",
    ("backend", "cudnn_benchmark"): False,
    ("student", "init_path"): None,
}


MODEL_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # what from_pretrained loads


def asset_digests(config) -> dict:
    """sha256 (16 hex) of the weights a run reads by path, which the config digest names only by path: the
    teacher's UNet (and its VAE, for a latent teacher) and ``student.init_path``; the file diffusers loads
    from each folder (other variants in it are not read)."""
    from aria.files import file_sha256

    folders = {}
    if config.teacher.path:
        root = Path(config.teacher.path).expanduser()
        folders["teacher.path"] = root / (config.teacher.subfolder or "")
        folders["teacher.path/vae"] = root / "vae"  # a latent teacher's; a pixel-space one has none
    if config.student.init_path:
        folders["student.init_path"] = Path(config.student.init_path).expanduser()
    digests = {}
    for key, folder in folders.items():
        weights = next((folder / name for name in MODEL_WEIGHTS if (folder / name).is_file()), None)
        if weights is not None:
            digests[key] = file_sha256(weights)[:16]
    return digests


def config_digest(config) -> str:
    """Short digest of ``digest_fields``: runs of a comparison must share it."""
    import hashlib

    return hashlib.sha256(json.dumps(digest_fields(config), sort_keys=True).encode()).hexdigest()[:16]


def sets(overrides) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _job(out: Path, config_path: Path, overrides: list[str], strategy: str, seed: int, env: dict,
         stamp: dict, gpus: "GpuSlots") -> dict:
    """Train (``aria run``, unless the student is there) and evaluate (``aria eval``) one run, each a
    subprocess on one GPU slot; returns wall times. ``stamp``: the config digest and the weights' digests
    (``asset_digests``) that its record keeps."""
    from aria.training import checkpoint as ckpt
    from aria.experiment.evaluate import find_student

    p = run_paths(out, strategy, seed)
    p["run"].mkdir(parents=True, exist_ok=True)
    before = read_json(p["record"], hint=BROKEN_RECORD) if p["record"].is_file() else {}  # kept if only evaluated now
    before.pop("evaluated_at", None)  # set again when this evaluation succeeds
    write_json(p["record"], {**before, **stamp})
    times = {**stamp, "train_s": before.get("train_s", 0.0), "eval_s": 0.0, "card": before.get("card", gpus.card)}
    if find_student(p["run"], required=False) is None:
        resume = ["--resume"] if ckpt.list_checkpoints(p["run"] / "checkpoints") else []  # not an unfinished write
        cmd = _aria("run", "--config", str(config_path), "--strategy", strategy,
                    *sets([*overrides, f"seed={seed}", f"output_dir={p['run']}"]), *resume)
        t0, log = time.perf_counter(), p["run"] / "train.log"
        with gpus.take() as device_env, open(log, "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**env, **device_env}).returncode
        times["train_s"], times["card"] = time.perf_counter() - t0, gpus.card
        if rc != 0:
            raise RunFailed(f"{strategy}/seed{seed}: aria run exited {rc} ({last_line(log)}); see {log}")
    t0, log = time.perf_counter(), p["run"] / "eval.log"
    cmd = _aria("eval", "--student", str(p["run"]), "--config", str(config_path), *sets(overrides),
                "--reference", str(Path(out) / "reference"), "--out", str(p["eval"]))
    with gpus.take() as device_env, open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**env, **device_env}).returncode
    if rc != 0:
        raise RunFailed(f"{strategy}/seed{seed}: aria eval exited {rc} ({last_line(log)}); see {log}")
    times["eval_s"], times["evaluated_at"] = time.perf_counter() - t0, time.time()  # epoch s: the results' date
    write_json(p["record"], times)
    return times


class RunFailed(UserError):
    """One run of a comparison failed (training or evaluation); the message names it."""


def _device_card() -> tuple[str, int]:
    """The machine in words and its number of CUDA devices (0 on CPU)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}", torch.cuda.device_count()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", 0


class GpuSlots:
    """Spreads concurrent trainings over the visible GPUs: each ``aria run`` subprocess sees one
    (``CUDA_VISIBLE_DEVICES``), the least loaded at its start. Nothing to spread on CPU or one GPU."""

    def __init__(self, card: str, num_gpus: int):
        self.card, self.lock = card, threading.Lock()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(num_gpus)]
        ids = ids[:num_gpus]
        start = os.getpid() % max(1, len(ids))  # several comparisons at once start on different GPUs
        self.load = {i: 0 for i in ids[start:] + ids[:start]} if num_gpus > 1 else {}

    @contextlib.contextmanager
    def take(self):
        if not self.load:
            yield {}
            return
        with self.lock:
            gpu = min(self.load, key=self.load.get)
            self.load[gpu] += 1
        try:
            yield {"CUDA_VISIBLE_DEVICES": gpu}
        finally:
            with self.lock:
                self.load[gpu] -= 1


def compare(config_path: Path, strategies: list[str], seeds: list[int], out: Path, parallel: int | None,
            overrides: list[str] = (), command: str = "", summary_only: bool = False) -> dict:
    """Train and evaluate every (strategy, seed); write results.json, results.md and plots in ``out``.

    ``summary_only``: train and evaluate nothing; summarise the evaluations found in ``out`` (runs
    made on other machines and copied there), listing the missing ones in the results."""
    plan = _plan_jobs(config_path, strategies, seeds, out, parallel, overrides, summary_only)
    _run_jobs(plan)
    found = _collect_runs(plan)
    return _assemble_results(plan, found, command)


# -- the steps of ``compare`` ----------------------------------------------------------------------

@dataclass
class _Plan:
    """What a comparison does: its inputs, the runs' configs, where they run and which are to make."""
    config_path: Path
    out: Path
    strategies: list[str]
    seeds: list[int]
    overrides: list[str]
    summary_only: bool
    started: float  # time.perf_counter() when the comparison began
    configs: dict
    digest: str
    assets: dict  # asset_digests of the config
    card: str
    num_gpus: int
    parallel: int
    env: dict
    jobs: list[tuple[str, int]]  # (strategy, seed) to train and/or evaluate, in start order
    missing: list[str]  # summary_only: "strategy/seed<s>" of the runs without an evaluation


@dataclass
class _Found:
    """What the evaluated runs of a comparison hold."""
    evals: dict  # evals[strategy][seed]: eval JSON dict, None where missing
    wall: float  # training + evaluation seconds of the runs, summed
    cards: set  # where the runs trained
    finished: float  # when the last evaluation was made: compare.json's evaluated_at, else eval.json's mtime
    probe_digest: str
    logs: dict  # logs[(strategy, seed)]: the evaluated run's metrics.jsonl records ([] where unreadable)
    switched: dict  # switched[strategy][seed]: allocation.switched_by_group of the run (strategies that switch)


def _plan_jobs(config_path: Path, strategies: list[str], seeds: list[int], out: Path, parallel: int | None,
               overrides, summary_only: bool) -> _Plan:
    """Validate the names, load every config, check the runs already in ``out`` share its digest and
    list the runs still to make (or, ``summary_only``, the missing ones)."""
    from aria.config import load_config

    started = time.perf_counter()
    check_output_folder(out, "--out")  # before any config, data or run work
    _check_names(strategies)
    configs = {s: load_config(config_path, overrides, strategy=s) for s in strategies}  # validates every name
    if not summary_only:  # every run would fail on a device this machine lacks: say so once, now
        check_config_devices(configs[strategies[0]])
    card, num_gpus = _device_card()
    parallel = _parallelism(parallel, num_gpus, len(strategies) * len(seeds))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    digest, assets = config_digest(configs[strategies[0]]), asset_digests(configs[strategies[0]])
    _check_digests(out, strategies, seeds, digest, assets, config_path)
    jobs = _pending(out, strategies, seeds)
    missing = [f"{s}/seed{seed}" for s, seed in jobs] if summary_only else []
    if summary_only and len(missing) == len(strategies) * len(seeds):
        raise UserError(f"--summary-only: no evaluated run in {out}/runs")
    return _Plan(config_path=config_path, out=out, strategies=strategies, seeds=seeds, overrides=overrides,
                 summary_only=summary_only, started=started, configs=configs, digest=digest, assets=assets, card=card,
                 num_gpus=num_gpus, parallel=parallel, env=env, jobs=[] if summary_only else jobs, missing=missing)


def _check_names(strategies: list[str]) -> None:
    """At least one strategy, none twice."""
    if not strategies:
        raise UserError("--strategies: name at least one strategy")
    if len(set(strategies)) != len(strategies):
        raise UserError(f"--strategies: duplicate names in {','.join(strategies)}")


def _parallelism(parallel: int | None, num_gpus: int, num_runs: int) -> int:
    """Concurrent runs: ``parallel`` if given, else 2 a GPU (at most one a run), 1 on CPU."""
    # World teacher, tiny student, batch 256: 4 concurrent runs on one GPU trained at 0.95x (H200) and 1.08x
    # (H100) the samples/s of one (the GPU time-slices), but overlap start-up and evaluation; 2 a GPU keeps
    # that overlap at little cost.
    return parallel or (min(2 * num_gpus, num_runs) if num_gpus else 1)


def _check_digests(out: Path, strategies: list[str], seeds: list[int], digest: str, assets: dict,
                   config_path: Path) -> None:
    """Refuse an ``out`` holding a run trained with another config, or with other weights at a path the
    config names (runs recorded before the weights' digests were kept are checked by config only)."""
    for s in strategies:
        for seed in seeds:
            record = run_paths(out, s, seed)["record"]
            if not record.is_file():
                continue
            recorded = read_json(record, hint=BROKEN_RECORD)
            if recorded.get("config") != digest:
                raise UserError(f"{record.parent}: trained with another config than {config_path} and these --set "
                                "values; choose another --out or delete that run")
            for key, then in recorded.get("assets", {}).items():
                if key in assets and assets[key] != then:
                    raise UserError(f"{record.parent}: trained with other weights at {key} (digest {then}, now "
                                    f"{assets[key]}); restore them, or choose another --out or delete that run")


def _pending(out: Path, strategies: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The (strategy, seed) runs without an evaluation, seed by seed, ``rc`` and ``aria`` first."""
    first = [s for s in ("rc", "aria") if s in strategies] + [s for s in strategies if s not in ("rc", "aria")]
    return [(s, seed) for seed in seeds for s in first if not run_paths(out, s, seed)["eval_json"].exists()]


def _run_jobs(plan: _Plan) -> None:
    """Train and evaluate the planned runs, ``plan.parallel`` at a time on the GPU slots; a failed run
    leaves the others going, then every failure is raised together."""
    if plan.jobs:  # prompts, embeddings and regions once, into the shared cache, before the runs read it
        from aria.data.bundle import prepare_data

        prepare_data(plan.configs[plan.strategies[0]], "cuda" if plan.num_gpus else "cpu")
    gpus, errors = GpuSlots(plan.card, plan.num_gpus), []
    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        futures = [pool.submit(_job, plan.out, plan.config_path, list(plan.overrides), s, seed, plan.env,
                               {"config": plan.digest, "assets": plan.assets}, gpus) for s, seed in plan.jobs]
        for f in futures:
            try:
                f.result()
            except UserError as err:  # a failed run or evaluation: the others go on
                errors.append(str(err))
    if errors:
        raise UserError(f"{len(errors)} run(s) failed: " + " | ".join(errors))


NO_CARD = "card not recorded"


def _collect_runs(plan: _Plan) -> _Found:
    """Read every run's eval JSON and compare.json record; the evaluations must share one probe set."""
    evals, wall, cards, recorded, modified = {}, 0.0, set(), [], []
    for s in plan.strategies:
        evals[s] = {}
        for seed in plan.seeds:
            p = run_paths(plan.out, s, seed)
            if not p["eval_json"].exists():  # summary_only: listed in "missing"
                evals[s][seed] = None
                continue
            evals[s][seed] = read_json(p["eval_json"], hint=BROKEN_EVAL)
            record = read_json(p["record"], hint=BROKEN_RECORD) if p["record"].exists() else None
            # when it was evaluated: recorded by compare (a copy or a clone keeps it); eval.json's mtime is
            # used only where no run of the folder recorded a time (tools/world2_gather.py stamps runs
            # evaluated by hand, from their archived mtime)
            if (record or {}).get("evaluated_at"):
                recorded.append(record["evaluated_at"])
            else:
                modified.append(p["eval_json"].stat().st_mtime)
            if record is not None:
                wall += record.get("train_s", 0.0) + record.get("eval_s", 0.0)
            # where it trained: its record's card (compare writes it); a run without one (copied or evaluated by
            # hand) did not necessarily train on the machine that summarises it
            cards.add((record or {}).get("card") or (NO_CARD if plan.summary_only else plan.card))
    digests = {e["probe"]["digest"] for by_seed in evals.values() for e in by_seed.values() if e is not None}
    if len(digests) != 1:
        raise UserError(f"{plan.out}: evaluations used different probe sets ({', '.join(sorted(digests))}); "
                        "delete the stale eval/ folders")
    logs = {(s, seed): read_log(run_paths(plan.out, s, seed)["run"] / "metrics.jsonl") or []
            for s in plan.strategies for seed in plan.seeds if evals[s][seed] is not None}
    # a clone gives every file a new mtime, so an mtime counts only where no run recorded its time (runs
    # evaluated before compare recorded it are the older ones)
    finished = max(recorded or modified or [0.0])
    return _Found(evals, wall, cards, finished, digests.pop(), logs, _switched(logs))


def _switched(logs: dict) -> dict:
    """Where each evaluated run's switched prompts went (runs that switched nothing are left out)."""
    out = {}
    for (s, seed), records in logs.items():
        shares = switched_by_group(records) if records else None
        if shares is not None:
            out.setdefault(s, {})[str(seed)] = shares
    return out


def _assemble_results(plan: _Plan, found: _Found, command: str) -> dict:
    """Summarise the runs, draw the plots and write results.json and results.md; return the results."""
    strategies, seeds, evals, out = plan.strategies, plan.seeds, found.evals, plan.out
    card = " + ".join(sorted(found.cards)) or plan.card  # where the runs trained (a summary may be made elsewhere)
    last_eval = _dt.datetime.fromtimestamp(found.finished, _dt.timezone.utc)  # the results' date
    results = {
        "format": "aria-compare/1",
        "command": command,
        "card": card,
        "date": last_eval.strftime("%Y-%m-%d %H:%M UTC"),
        "wall_time_s": None if plan.summary_only else time.perf_counter() - plan.started,
        "run_wall_time_s": found.wall,
        "steps": plan.configs[strategies[0]].distillation.steps,
        "strategies": list(strategies),
        "seeds": list(seeds),
        "probe_digest": found.probe_digest,
        **summarise(evals, strategies, seeds),
        "runs": {s: {str(seed): evals[s][seed]["metrics"] for seed in seeds if evals[s][seed]} for s in strategies},
        "switched": found.switched,
        "missing": plan.missing,
    }
    results["plots"] = make_plots(results, evals, found.logs, out)
    write_json(Path(out) / "results.json", results)
    write_text_atomic(Path(out) / "results.md", "# aria compare\n\n" + "\n".join(report.results_header(results))
                      + "\n\n" + report.results_tables(results))
    return results


def make_plots(results: dict, evals: dict, logs: dict, out: Path) -> dict:
    """Regime metrics per strategy; aria's allocation over time and tracked-vs-measured per region; every
    switching strategy's regime mix of switched prompts over the steps."""
    folder = Path(out) / "plots"
    plots = {"regime metrics per strategy": report.plot_regime_metrics(results, folder / "regime_metrics.png")}
    seed = next((seed for seed in results["seeds"] if evals.get("aria", {}).get(seed)), None)
    if seed is not None:
        ev = evals["aria"][seed]
        regime = np.array([-1 if r is None else r for r in ev["regions"]["regime"]])
        sizes = np.asarray(ev["regions"]["size"], dtype=float)
        measured = np.array([np.nan if v is None else v for v in ev["regions"]["normalised"]], dtype=float)
        hist = history(logs[("aria", seed)])
        fractions = ev["regions"].get("regime_fractions")
        if hist["probabilities"] is not None and fractions is not None:
            steps, probs = hist["probabilities"]
            plots["aria allocation over time"] = report.plot_allocation(
                steps, probs, regime, np.asarray(fractions), sizes, folder / "allocation.png")
        if hist["estimates"] is not None:
            plots["aria tracked vs measured discrepancy"] = report.plot_tracking(
                hist["estimates"][1][-1], measured, regime, folder / "tracking.png")
    mixes = {}
    for s in results["strategies"]:
        runs = [group_mix(logs[(s, seed)]) for seed in results["seeds"] if (s, seed) in logs]
        runs = [m for m in runs if m is not None]
        if runs:  # the steps every seed logged an allocation at (a step that switched nothing logs none)
            steps = runs[0][0]
            for m in runs[1:]:
                steps = np.intersect1d(steps, m[0])
            mixes[s] = (steps, runs[0][1], np.mean([m[2][np.isin(m[0], steps)] for m in runs], axis=0))
    if mixes:
        plots["switched prompts per regime over steps, per strategy"] = report.plot_switched_mix(
            mixes, folder / "switched_mix.png")
    return {name: str(Path(p).relative_to(out)) for name, p in plots.items()}


# -- the commands ----------------------------------------------------------------------------------


def read_results(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--results {path} does not exist")
    return read_tagged_json(path, "aria-compare/1", f"--results {path}", "an aria compare results.json")


def read_world_checks(results_path: Path) -> dict | None:
    """The pre-registered checks ``aria checks`` wrote beside ``results_path`` (checks.json), or None."""
    path = Path(results_path).parent / "checks.json"
    if not path.is_file():
        return None
    return read_tagged_json(path, "aria-checks/1", str(path), "an aria checks result", "; rerun aria checks")


def results_doc(results_path: Path | list[Path], out: Path, check: bool = False, ablation_paths=()) -> str:
    """Write (or, with ``check``, verify) the results document generated from ``results_path`` (one
    results JSON, or several: the headline first) and the ablations' results JSONs."""
    paths = list(results_path) if isinstance(results_path, (list, tuple)) else [results_path]
    results = [read_results(p) for p in paths]
    world_checks = [read_world_checks(p) for p in paths]
    ablations = [read_results(p) for p in ablation_paths]
    existing = Path(out).read_text() if Path(out).is_file() else None
    if len(paths) == 1 and not ablations:
        text = report.results_document(results[0], paths[0], out, existing, world_checks=world_checks)
    else:
        text = report.results_document(results, paths, out, existing, ablations, list(ablation_paths), world_checks)
    if check:
        if existing is None:
            raise report.DocCheckError(f"--out {out} does not exist (nothing to check)")
        report.check_document(text, existing, out)
        return text
    write_text_atomic(Path(out), text)  # a killed write leaves the previous document, never half of one
    return text
