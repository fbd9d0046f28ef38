"""The sweep: configurations from a ``TheoryConfig``, run in parallel, judged against the bounds.

The check (Monte Carlo error accounted for): the replicates of a configuration are its seeds
(every-step runs: seeds x regions, independent there), each a time-averaged squared error. At
level ``confidence``, Bonferroni over the configuration's tests, it is a *violation* when the
one-sided lower confidence limit of the RMSE (Student-t; overall and per region) exceeds the
bound, or when the overall limit of the replicates capped at CAP bound^2 does (capping only
lowers a mean, so the bound caps it too; capped replicates are bounded, so this limit stays
informative under heavy tails). Otherwise *within*. *strict*: the upper limit is below the
bound too, i.e. the bound is shown to hold; reported, and impossible where the bound is exact.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.special import stdtrit

from aria.strategies import list_strategies

from . import bounds as Bd
from .config import TheoryConfig
from .simulate import Stream, run_allocation, run_every_step, run_sampled


@dataclass
class Row:
    """One configuration: what was simulated, what was measured, and the verdict."""

    kind: str  # every | scan | sampled | outside
    process: str
    noise: str
    alpha: float
    sigma: float
    delta: float
    delay: int
    regions: int
    seeds: int
    eps: float = 1.0
    draws: int = 0
    p_min: float = 1.0
    in_assumption: bool = True
    rmse: float = 0.0
    lcl: float = 0.0
    ucl: float = 0.0
    bound: float = 0.0
    ratio: float = 0.0
    region_ratio_max: float = 0.0
    within: bool = True
    strict: bool = True
    robust_lcl: float = 0.0
    dropped: int = 0
    warmup: int = 0  # t0: every region observed by then (sampled runs), see bounds.warmup_steps
    bound_theory_md: float | None = None
    region_rmse: list = field(default_factory=list)

    @property
    def label(self) -> str:
        where = f"K={self.regions}" + (f" eps={self.eps:g} B={self.draws}" if self.kind == "sampled" else "")
        return (f"{self.kind:7s} {self.process:11s} {self.noise:10s} a={self.alpha:<6g} s={self.sigma:<5g} "
                f"d={self.delta:<7g} D={self.delay} {where}")


CAP = 4.0  # the robust limit caps every replicate's mean squared error at CAP * bound^2


def confidence_limits(mse: np.ndarray, level: float) -> tuple[float, float, float]:
    """(RMSE, lower, upper) one-sided limits at ``level`` from replicate mean squared errors."""
    mse = np.asarray(mse, dtype=np.float64)
    n = mse.size
    mean = float(mse.mean())
    half = float(stdtrit(n - 1, level) * mse.std(ddof=1) / np.sqrt(n)) if n > 1 else np.inf
    return np.sqrt(mean), np.sqrt(max(mean - half, 0.0)), np.sqrt(mean + half)


def judge(row: Row, mse: np.ndarray, bound: float, level: float, cells: bool = False) -> Row:
    """Fill the measured values and the verdict from per-(seed, region) mean squared errors.

    ``cells``: the regions of a seed are independent too (every-step runs), so the overall limits
    use all seeds x regions as replicates; otherwise seeds only.
    """
    tests = 2 + mse.shape[1]
    lvl = 1.0 - (1.0 - level) / tests
    reps = mse.reshape(-1) if cells else mse.mean(1)
    row.rmse, row.lcl, row.ucl = confidence_limits(reps, lvl)
    row.robust_lcl = confidence_limits(np.minimum(reps, CAP * bound**2), lvl)[1]
    regional = [confidence_limits(mse[:, k], lvl) for k in range(mse.shape[1])]
    row.bound = bound
    row.ratio = row.rmse / bound
    row.region_rmse = [r[0] for r in regional]
    row.region_ratio_max = max(r[0] for r in regional) / bound
    row.within = row.lcl <= bound and row.robust_lcl <= bound and all(r[1] <= bound for r in regional)
    row.strict = row.ucl <= bound and all(r[2] <= bound for r in regional)
    return row


# -- tasks (run in worker processes) -------------------------------------------------------------

def _every_task(alpha, streams, burn, max_delay, trace):
    return alpha, run_every_step(alpha, streams, burn, max_delay, trace)


def _sampled_task(index, alpha, eps, draws, delay, stream, burn, trace):
    return index, run_sampled(alpha, eps, draws, delay, stream, burn, trace)


def _allocation_task(name, kwargs):
    try:
        return name, {**run_allocation(name, **kwargs), "params": kwargs["params"]}
    except Exception as err:  # a strategy under construction elsewhere must not hide the others
        return name, {"error": f"{type(err).__name__}: {err}", "params": kwargs["params"]}


def allocation_setup(cfg: TheoryConfig) -> dict:
    """Region sizes (Zipf), starts (small regions start worse) and floors for the coupled comparison."""
    a = cfg.allocation
    k = np.arange(a.regions)
    sizes = np.maximum(1, np.round(1000.0 / (k + 1.0) ** a.skew)).astype(np.int64)
    start = 1.0 + 1.5 * k / max(a.regions - 1, 1)
    floor = np.random.default_rng([cfg.seed, 7]).uniform(0.3, 0.8, a.regions)
    return {"sizes": sizes, "start": start, "floor": floor}


def strategies_to_compare(cfg: TheoryConfig) -> list[str]:
    return [n for n in list_strategies() if n not in cfg.allocation.exclude]


def allocation_params(name: str, cfg: TheoryConfig) -> dict:
    """A compared strategy's parameters: ``allocation.eps`` for every strategy with an ``eps`` floor
    (the same floor for all; strategies without one run as they are), aria's alpha without timestep
    normalisation, and ``every = 1`` for a probing strategy (the oracle): the simulation measures the
    true discrepancy for free, so the oracle sees it at every step, the best case it stands for."""
    al, cls = cfg.allocation, list_strategies()[name]
    fields = cls.Config.model_fields
    params: dict = {"eps": al.eps} if "eps" in fields else {}
    if name == "aria":
        params.update(alpha=al.alpha, timestep_norm=False)
    if hasattr(cls, "probe_every") and "every" in fields:
        params["every"] = 1
    return params


def _pool(workers: int):
    if workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))


def build_plan(cfg: TheoryConfig):
    """Every-step streams grouped by alpha (kind, stream, delays) and the sampled configurations."""
    ev, sc, sa, ou = cfg.every, cfg.scan, cfg.sampled, cfg.outside
    base = dict(regions=ev.regions, seeds=ev.seeds, steps=ev.steps, seed=cfg.seed, df=cfg.student_df)
    plan: dict[float, list[tuple[str, Stream, list[int]]]] = {}
    for a in ev.alphas:
        for proc, noise, s, d in itertools.product(ev.processes, ev.noises, ev.sigmas, ev.deltas):
            plan.setdefault(a, []).append(("every", Stream(proc, noise, s, d, **base), ev.delays))
    for a in sc.alphas:
        plan.setdefault(a, []).append(("scan", Stream("linear", "gaussian", sc.sigma, sc.delta, **base), sc.delays))
    for a in ou.alphas:
        out = [Stream("jumps", "gaussian", ou.sigma, ou.delta, jump=ou.jump, jump_every=ou.jump_every, **base)]
        out += [Stream(p, "heavy_t", ou.sigma, ou.delta, **{**base, "df": df})
                for p in ou.heavy_processes for df in ou.heavy_df]
        plan.setdefault(a, []).extend(("outside", s, ou.delays) for s in out)
    trace_alpha = ev.alphas[len(ev.alphas) // 2]
    items = plan[trace_alpha]  # trace a curved path: the first non-linear stream goes first
    items.insert(0, items.pop(next((j for j, it in enumerate(items) if it[1].process != "linear"), 0)))
    sampled = []
    combos = itertools.product(sa.alphas, sa.sigmas, sa.deltas, sa.designs, sa.delays)
    for i, (a, s, d, (k, eps, b), delay) in enumerate(combos):
        proc, noise = sa.processes[i % len(sa.processes)], sa.noises[i % len(sa.noises)]
        stream = Stream(proc, noise, s, d, regions=k, seeds=sa.seeds, steps=sa.steps, seed=cfg.seed + i,
                        df=cfg.student_df)
        sampled.append((a, eps, b, delay, stream))
    return plan, trace_alpha, sampled


def _jobs(cfg: TheoryConfig, plan, trace_alpha, sampled) -> list[tuple[float, object, tuple]]:
    """(cost estimate, function, arguments), longest first."""
    ev, al = cfg.every, cfg.allocation
    jobs = []
    for a, items in plan.items():
        streams = [s for _, s, _ in items]
        max_delay = max(max(dl) for _, _, dl in items)
        jobs.append((sum(s.seeds * s.regions for s in streams) * ev.steps * 0.02 + ev.steps * 60,
                     _every_task, (a, streams, ev.burn_in, max_delay, 3 if a == trace_alpha else 0)))
    traced = next((i for i, c in enumerate(sampled) if c[4].process != "linear"), 0)
    for i, (a, eps, b, delay, stream) in enumerate(sampled):
        jobs.append((stream.seeds * stream.steps * 110, _sampled_task,
                     (i, a, eps, b, delay, stream, cfg.sampled.burn_in, i == traced)))
    setup = allocation_setup(cfg)
    for name in strategies_to_compare(cfg):
        kwargs = dict(params=allocation_params(name, cfg), sizes=setup["sizes"], start=setup["start"],
                      floor=setup["floor"], delta=al.delta, sigma=al.sigma, noise_law=al.noise, draws=al.draws,
                      steps=al.steps, seeds=al.seeds, seed=cfg.seed, trace=name == "aria", df=cfg.student_df)
        jobs.append((al.seeds * al.steps * 160, _allocation_task, (name, kwargs)))
    return sorted(jobs, key=lambda j: -j[0])


def run_sweep(cfg: TheoryConfig) -> dict:
    """Run every configuration of ``cfg``; returns rows, the alpha scan, allocation results and traces."""
    workers = cfg.workers or min(2, os.cpu_count() or 1)
    plan, trace_alpha, sampled = build_plan(cfg)
    jobs = _jobs(cfg, plan, trace_alpha, sampled)
    pool = _pool(workers)
    try:
        futures = [pool.submit(fn, *args) if pool else None for _, fn, args in jobs]
        results = [f.result() if pool else fn(*args) for f, (_, fn, args) in zip(futures, jobs)]
    finally:
        if pool:
            pool.shutdown()
    out = {fn: {} for fn in (_every_task, _sampled_task, _allocation_task)}
    for (key, value), (_, fn, _) in zip(results, jobs):
        out[fn][key] = value

    ev, sa = cfg.every, cfg.sampled
    rows, traces = [], {}
    for a, items in plan.items():
        for (kind, s, delays), res in zip(items, out[_every_task][a]):
            if "trace" in res:
                traces["every"] = {**res["trace"], "alpha": a, "process": s.process, "noise": s.noise}
            noise = s.noise if s.noise != "heavy_t" else f"heavy_t{s.df:g}"
            for delay in delays:
                bound = Bd.window_bound(a, s.sigma, s.delta, 1.0, delay, ev.burn_in, ev.steps, 0)
                row = Row(kind, s.process, noise, a, s.sigma, s.delta, delay, s.regions, s.seeds,
                          in_assumption=kind != "outside", dropped=res["dropped"])
                rows.append(judge(row, res["mse"][delay], bound, cfg.confidence, cells=True))
    eta = Bd.warmup_eta(cfg.confidence, sa.seeds)
    for i, (a, eps, b, delay, s) in enumerate(sampled):
        res = out[_sampled_task][i]
        p = Bd.update_probability(eps, s.regions, b)
        t0 = Bd.warmup_steps(s.regions, eps, b, delay, eta)
        bound = Bd.window_bound(a, s.sigma, s.delta, p, delay, sa.burn_in, sa.steps, t0)
        loose = float(Bd.noise_term(a, s.sigma) + Bd.theory_md_drift(a, s.delta, p) + delay * s.delta)
        row = Row("sampled", s.process, s.noise, a, s.sigma, s.delta, delay, s.regions, s.seeds, eps, b, p,
                  dropped=res["dropped"], warmup=t0, bound_theory_md=loose)
        rows.append(judge(row, res["mse"], bound, cfg.confidence))
        if "trace" in res:
            traces["sampled"] = {**res["trace"], "alpha": a, "process": s.process, "noise": s.noise,
                                 "regions": s.regions, "eps": eps, "draws": b, "delay": delay}
    return {"rows": rows, "scan": scan_summary(rows, cfg), "allocation": allocation_summary(out[_allocation_task]),
            "traces": traces, "workers": workers}


def scan_summary(rows: list[Row], cfg: TheoryConfig) -> list[dict]:
    """Per delay: the measured minimiser in alpha (log-parabola through the grid minimum) against a*."""
    out = []
    for delay in cfg.scan.delays:
        sel = sorted((r for r in rows if r.kind == "scan" and r.delay == delay), key=lambda r: r.alpha)
        la, err = np.log([r.alpha for r in sel]), np.log([r.rmse for r in sel])
        i = int(np.argmin(err))
        best = la[i]
        if 0 < i < len(sel) - 1:
            c = np.polyfit(la[i - 1:i + 2], err[i - 1:i + 2], 2)
            if c[0] > 0:
                best = float(np.clip(-c[1] / (2 * c[0]), la[i - 1], la[i + 1]))
        star = Bd.a_star(cfg.scan.sigma, cfg.scan.delta, 1.0, delay)
        measured = float(np.exp(best))
        out.append({"delay": delay, "measured_minimiser": measured, "grid_minimiser": float(np.exp(la[i])),
                    "a_star": star, "a_star_approx": Bd.a_star_approx(cfg.scan.sigma, cfg.scan.delta),
                    "ratio": measured / star, "within_factor_2": bool(0.5 <= measured / star <= 2.0),
                    "alphas": [r.alpha for r in sel], "rmse": [r.rmse for r in sel],
                    "lcl": [r.lcl for r in sel], "ucl": [r.ucl for r in sel], "bound": [r.bound for r in sel]})
    return out


def allocation_summary(results: dict) -> list[dict]:
    """Per strategy: its floor (``eps``, None where it has none), probe measurements (the oracle), results."""
    out = []
    for name, res in sorted(results.items()):
        head = {"strategy": name, "eps": res["params"].get("eps")}
        if "error" in res:
            out.append({**head, "error": res["error"]})
            continue
        final = res["final"]
        out.append({**head, "measurements": res["measurements"], "final_max": float(final.max(1).mean()),
                    "final_max_sd": float(final.max(1).std()), "final_mean": float(final.mean()),
                    "mean_worst": float(res["worst"].mean()), "worst_curve": res["worst"].mean(1),
                    "probabilities": res["probabilities"]})
    return out


def summary(result: dict) -> dict:
    """Counts, percentages and the median tightness of the in-assumption configurations."""
    rows = result["rows"]
    inside = [r for r in rows if r.in_assumption]
    outside = [r for r in rows if not r.in_assumption]
    ratios = np.array([r.ratio for r in inside])
    by_kind = {k: float(np.median([r.ratio for r in inside if r.kind == k]))
               for k in ("every", "scan", "sampled") if any(r.kind == k for r in inside)}
    return {
        "in_assumption": len(inside),
        "pairs": int(sum(r.seeds for r in inside)),
        "within": int(sum(r.within for r in inside)),
        "within_pct": 100.0 * sum(r.within for r in inside) / max(len(inside), 1),
        "strict": int(sum(r.strict for r in inside)),
        "median_ratio": float(np.median(ratios)) if len(ratios) else float("nan"),
        "median_ratio_by_kind": by_kind,
        "max_ratio": float(ratios.max()) if len(ratios) else float("nan"),
        "outside": len(outside),
        "outside_violations": int(sum(not r.within for r in outside)),
        "all_within": all(r.within for r in inside),
    }


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [{**asdict(r), "label": r.label} for r in rows]
