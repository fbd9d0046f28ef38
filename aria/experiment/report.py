"""Tables (markdown), plots (PNG) and the results document, all rendered from result dicts.

Every number shown goes through ``fmt`` so that ``aria results --check`` can regenerate the
document from ``results.json`` and compare it line by line with the file on disk.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from aria.errors import UserError
from aria.experiment.bar import bar_checks, established_gain, headroom_metric, headroom_share
from aria.experiment.stats import mean_ci, paired_ratios
from aria.world.worlds import REGIME_NAMES
REGIME_COLORS = {"seen": "#4477aa", "under": "#ee7733", "unseen": "#cc3311", "compositional": "#228833",
                 "all": "#777777", None: "#bbbbbb"}
METRICS = {  # name -> (label, higher is better)
    "discrepancy": ("probe discrepancy", False),
    "cond_discrepancy": ("condition-specific discrepancy", False),
    "guided_discrepancy": ("guided discrepancy", False),
    "judge_accuracy": ("judge accuracy", True),
    "teacher_accuracy": ("teacher judge accuracy", True),
    "accuracy_gap": ("accuracy gap to teacher", False),
    "agreement": ("agreement with teacher", True),
    "pixel_mse": ("pixel MSE to teacher", False),
    "kid": ("KID to teacher", False),
}
READING_OPEN, READING_CLOSE = "<!-- reading -->", "<!-- /reading -->"
READING_DEFAULT = "_Write the reading of these results here; `aria results` keeps this section._"


def fmt(x) -> str:
    """The one number format of every table: 4 significant digits, ``n/a`` for missing."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.4g}"


def fmt_ci(stat: dict) -> str:
    """``mean [low, high]`` (or just the mean when the interval is undefined)."""
    if stat.get("low") is None:
        return fmt(stat.get("mean"))
    return f"{fmt(stat['mean'])} [{fmt(stat['low'])}, {fmt(stat['high'])}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- aria eval -------------------------------------------------------------------------------------

def eval_table(result: dict) -> str:
    """Rows: regimes (and ``all``); columns: the metrics present."""
    groups = list(result["metrics"])
    names = [m for m in METRICS if any(m in result["metrics"][g] for g in groups)]
    rows = [[g] + [fmt(result["metrics"][g].get(m)) for m in names] + [fmt(result["counts"][g]["probes"]),
            fmt(result["counts"][g]["prompts"])] for g in groups]
    return table(["regime"] + [METRICS[m][0] for m in names] + ["probes", "prompts"], rows)


def eval_markdown(result: dict) -> str:
    p = result["probe"]
    return "\n".join([
        f"# aria eval: {result['student']}",
        "",
        f"teacher: {result['teacher']}; probe set {p['digest']}: {p['images']} images x "
        f"{len(p['timesteps'])} timesteps; {p['sample_prompts']} sampled prompts, {p['sample_steps']} DDIM steps, "
        f"guidance {fmt(p['guidance_scale'])}.",
        "",
        eval_table(result),
        "",
    ])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_region_discrepancy(result: dict, path: Path) -> Path:
    """Per-region probe discrepancy, one bar per region, coloured by the region's main regime."""
    plt = _plt()
    regions = result["regions"]
    values = np.array([np.nan if v is None else v for v in regions["discrepancy"]], dtype=float)
    regimes = regions["regime"]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(values) + 2), 3.5))
    colors = [REGIME_COLORS[REGIME_NAMES[r] if r is not None else None] for r in regimes]
    ax.bar(np.arange(len(values)), np.nan_to_num(values), color=colors, width=0.85)
    _regime_legend(ax, [REGIME_NAMES[r] for r in sorted({r for r in regimes if r is not None})])
    ax.set_xlabel("region")
    ax.set_ylabel("teacher-student discrepancy")
    ax.set_title("probe discrepancy per region (colour: the region's main regime)")
    return _save(fig, path)


def _regime_legend(ax, names) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=REGIME_COLORS[n], label=n) for n in names], frameon=False,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _save(fig, path: Path, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


# -- aria compare ----------------------------------------------------------------------------------

def summary_table(results: dict, metric: str) -> str:
    """One metric: rows strategies, columns regimes, cells mean [95% CI]."""
    groups = results["groups"]
    rows = [[s] + [fmt_ci(results["summary"][s][g][metric]) for g in groups] for s in results["strategies"]]
    return table(["strategy"] + groups, rows)


def ratio_table(results: dict, metric: str) -> str:
    groups = results["groups"]
    rows = [[s] + [fmt_ci(results["ratios"][s][g][metric]) for g in groups]
            for s in results["strategies"] if s in results["ratios"]]
    return table(["strategy / rc"] + groups, rows)


def checks_table(results: dict) -> str:
    rows = [[c["name"], fmt_ci(c), f"{c['op']} {fmt(c['bar'])}", "pass" if c["pass"] else "fail",
             fmt(c["ci_clear"])] for c in results["checks"]]
    return table(["check (aria vs rc)", "value [95% CI]", "bar", "verdict (mean)", "CI clears bar"], rows)


def world_checks_table(result: dict) -> str:
    """Markdown of ``aria checks``' result (its checks.json): check, value, threshold, runs, pass."""
    rows = [[f"{r['check']} {r['name']}", fmt(r["value"]), f"{r['op']} {fmt(r['threshold'])}", str(r["n"]),
             r["status"] + (f" ({r['detail']})" if r["detail"] and r["status"] != "pass" else "")]
            for r in result["checks"]]
    return table(["check", "value", "threshold", "n", "pass"], rows)


HEADROOM_REGIMES = ("seen", "under", "unseen", "compositional")


def run_values(files: list[dict], strategy: str, group: str, metric: str) -> list:
    """A strategy's ``metric`` on ``group`` per (results file, seed) from the files' runs (None where missing),
    in the same order for every strategy: values paired by position."""
    return [r["runs"].get(strategy, {}).get(str(seed), {}).get(group, {}).get(metric)
            for r in files for seed in r["seeds"]]


def headroom_section(results: dict) -> list[str]:
    """The oracle's headroom over rc per regime and every other strategy's share of it (markdown lines;
    none without an oracle), on ``bar.headroom_metric``."""
    runs = results.get("runs", {})
    if not {"oracle", "rc"} <= set(runs) or "oracle" not in results.get("ratios", {}):
        return []
    metric = headroom_metric(results["metrics"])
    others = [s for s in results["strategies"] if s in runs and s not in ("rc", "oracle")]
    rows = []
    for g in (g for g in HEADROOM_REGIMES if g in results["groups"]):
        oracle = results["ratios"]["oracle"][g][metric]
        row = [g, fmt_ci(oracle), fmt(established_gain(oracle))]
        for s in others:
            share = headroom_share(*(run_values([results], x, g, metric) for x in (s, "rc", "oracle")))["share"]
            row += [fmt_ci(results["ratios"][s][g][metric]), fmt(share)]
        rows.append(row)
    header = ["regime", "oracle / rc", "headroom: 1 - oracle/rc"] + [
        h for s in others for h in (f"{s} / rc", f"{s}'s share")]
    return [f"## The oracle's headroom ({metric})", "",
            "The oracle allocates by the measured probe discrepancy (evaluation data): what an allocator can "
            "gain over rc. A strategy's share is its gain over rc divided by the oracle's, from the mean "
            "ratios over the seeds where both ran: 1 matches the oracle, 0 is rc, below 0 worse than rc; n/a "
            "where the oracle's gain is not established (its 95% interval reaches 1).",
            "", table(header, rows), ""]


def switched_section(results: dict) -> list[str]:
    """Where each strategy's switched prompts went: switched samples a run and their share per regime,
    mean over seeds (markdown lines; none when no run logged an allocation)."""
    switched = {s: [v for v in results.get("switched", {}).get(s, {}).values() if "regime" in v]
                for s in results["strategies"]}
    switched = {s: runs for s, runs in switched.items() if runs}
    if not switched:
        return []
    regimes = list(next(iter(switched.values()))[0]["regime"])
    rows = [[s, fmt(float(np.mean([r["samples"] for r in runs])))]
            + [fmt(float(np.mean([r["regime"].get(g, 0.0) for r in runs]))) for g in regimes]
            for s, runs in switched.items()]
    return ["## Where the switched prompts went", "",
            "Switched samples a run and their share per regime, mean over seeds, from the allocation each run "
            "logged (every `logging.every` steps). rc draws from the pool, so its shares are the pool's.",
            "", table(["strategy", "switched samples a run"] + regimes, rows), ""]


def results_tables(results: dict, world_checks: dict | None = None) -> str:
    """Every table of a compare run, as markdown sections (used by results.md and RESULTS.md): the
    pre-registered checks first when ``world_checks`` (``aria checks``' result) is given."""
    out = []
    if world_checks is not None:
        out += ["## Pre-registered checks (`aria checks`)", "", world_checks_table(world_checks), ""]
    out += ["## The bar", ""]
    out += [checks_table(results) if results["checks"] else "_aria or rc missing: no checks._", ""]
    out += [f"Ratios to rc: {results['ratio_method']}. Each check passes when its mean meets the bar; the last "
            "column says whether the whole 95% interval does.", ""]
    out += headroom_section(results)
    out += switched_section(results)
    for metric in results["metrics"]:
        out += [f"## {METRICS[metric][0]} ({metric})", "", summary_table(results, metric), ""]
        first = next(iter(results["ratios"].values()), {})
        if metric in first.get(results["groups"][0], {}):
            out += [ratio_table(results, metric), ""]
    return "\n".join(out)


def results_header(results: dict) -> list[str]:
    seeds = ", ".join(str(s) for s in results["seeds"])
    return [
        f"- command: `{results['command']}`",
        f"- card: {results['card']}",
        f"- date: {results['date']} (last evaluation)",
        f"- wall time: {fmt(results['wall_time_s'])} s (this invocation); "
        f"{fmt(results['run_wall_time_s'])} s summed over runs" if results.get("wall_time_s") is not None else
        f"- wall time: {fmt(results['run_wall_time_s'])} s summed over runs (trained and evaluated by earlier "
        "invocations; this one only summarised them)",
        f"- strategies: {', '.join(results['strategies'])}; seeds: {seeds}; "
        f"{fmt(results['steps'])} distillation steps each",
        f"- probe set: {results['probe_digest']}; mean and 95% t-interval over seeds",
        *([f"- missing runs (not in the statistics): {', '.join(results['missing'])}"]
          if results.get("missing") else []),
    ]


def plot_regime_metrics(results: dict, path: Path) -> Path:
    """One panel per metric: grouped bars (strategy x regime) with 95% CI error bars."""
    plt = _plt()
    metrics, groups, strategies = results["metrics"], results["groups"], results["strategies"]
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    width = 0.8 / len(groups)
    for ax, metric in zip(axes.flat, metrics):
        for j, g in enumerate(groups):
            stats = [results["summary"][s][g][metric] for s in strategies]
            mean = np.array([np.nan if x["mean"] is None else x["mean"] for x in stats], dtype=float)
            err = np.array([[0.0 if x["low"] is None else x["mean"] - x["low"] for x in stats],
                            [0.0 if x["high"] is None else x["high"] - x["mean"] for x in stats]])
            ax.bar(np.arange(len(strategies)) + j * width, np.nan_to_num(mean), width, yerr=err,
                   color=REGIME_COLORS.get(g, "#777777"), capsize=2)
        ax.set_xticks(np.arange(len(strategies)) + 0.4 - width / 2, strategies, rotation=45, fontsize=8)
        ax.set_title(METRICS[metric][0], fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=REGIME_COLORS.get(g, "#777777"), label=g) for g in groups], frameon=False,
               loc="upper center", ncol=len(groups), bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return _save(fig, path, layout=False)


def plot_allocation(steps: np.ndarray, probs: np.ndarray, region_regime: np.ndarray, fractions: np.ndarray,
                    sizes: np.ndarray, path: Path) -> Path:
    """aria's allocation over time. Left: the regime mix of switched prompts (region probabilities
    times each region's regime fractions; prompts are drawn uniformly inside a region) against the
    pool's mix (dashed: what ``rc`` draws). Right: per-region probabilities, regions sorted by regime."""
    plt = _plt()
    fig, (ax, hm) = plt.subplots(1, 2, figsize=(11, 3.8))
    mix = np.nan_to_num(probs) @ fractions
    pool = sizes @ fractions / sizes.sum()
    for r, name in enumerate(REGIME_NAMES):
        ax.plot(steps, mix[:, r], color=REGIME_COLORS[name], label=name)
        ax.axhline(pool[r], color=REGIME_COLORS[name], ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("share of switched prompts")
    ax.set_title("aria: regime mix of switched prompts (dashed: pool)")
    ax.legend(frameon=False)
    order = np.lexsort((-fractions[:, -1], region_regime))
    im = hm.imshow(probs[:, order].T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(order) - 0.5))
    hm.set_xlabel("step")
    hm.set_ylabel("region (by main regime, then unseen share)")
    fig.colorbar(im, ax=hm, label="p")
    return _save(fig, path)


def plot_switched_mix(mixes: dict, path: Path) -> Path:
    """Per regime, each strategy's share of the switched prompts over the steps (mean over seeds);
    ``mixes``: strategy -> (steps, regime names, (steps, regimes) shares)."""
    plt = _plt()
    names = next(iter(mixes.values()))[1]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10")
    for r, (ax, name) in enumerate(zip(axes[0], names)):
        for i, (strategy, (steps, _, shares)) in enumerate(mixes.items()):
            ax.plot(steps, shares[:, r], color=colors(i % 10), label=strategy)
        ax.set_title(name, fontsize=10, color=REGIME_COLORS.get(name, "black"))
        ax.set_xlabel("step")
    # once every panel is drawn: a limit set earlier stops the shared axis from growing to later panels' lines
    axes[0][0].set_ylim(bottom=0)
    axes[0][0].set_ylabel("share of switched prompts")
    axes[0][-1].legend(frameon=False, fontsize=8)
    return _save(fig, path)


def plot_tracking(estimates: np.ndarray, measured: np.ndarray, region_regime: np.ndarray, path: Path) -> Path:
    """aria's final tracked estimate per region against the discrepancy measured on the probe set."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ok = np.isfinite(measured) & np.isfinite(estimates)
    for r, name in enumerate(REGIME_NAMES):
        mask = (region_regime == r) & ok
        if mask.any():
            ax.scatter(measured[mask], estimates[mask], s=14, color=REGIME_COLORS[name], label=name)
    title = "aria: tracked vs measured per region"
    if ok.sum() >= 3:
        from scipy.stats import spearmanr

        title += f"\nSpearman rho {spearmanr(measured[ok], estimates[ok]).statistic:.2f} over {ok.sum()} regions"
    ax.set_xlabel("measured probe discrepancy (per-timestep normalised)")
    ax.set_ylabel("tracked estimate (end of training)")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False)
    return _save(fig, path)


# -- the results document -------------------------------------------------------------------------

SOURCE_LINE = re.compile(r"<!-- generated by `aria results` from (?P<results>.+?)"
                         r"(?:; ablations (?P<ablations>.+?))?; edit only the reading section -->")


def relative(paths, here: Path) -> list[str]:
    """``paths`` relative to the folder ``here`` (resolved), as the document names them."""
    return [os.path.relpath(Path(p).resolve(), here) for p in paths]


def source_line(results: list[str], ablations: list[str]) -> str:
    """The document's second line: the results JSONs and ablations it is generated from, relative to it
    (``document_sources`` reads it back). UserError for a path that the line could not carry."""
    for name in results + ablations:
        if any(part in name for part in (", ", "; ", "\n", "-->")):
            raise UserError(f"--results/--ablation {name}: a path holding ', ', '; ', '-->' or a line break "
                            "cannot be named in the document's source line; rename its folder")
    named = f"from {', '.join(results)}" + (f"; ablations {', '.join(ablations)}" if ablations else "")
    return f"<!-- generated by `aria results` {named}; edit only the reading section -->"


def document_sources(text: str, doc_path: Path) -> tuple[list[Path], list[Path]]:
    """The results JSONs and ablation JSONs that the document ``text`` (at ``doc_path``) names in its
    source line, as paths; UserError if it names none. (A document written before the line named its
    ablations gives none: regenerate it once with --ablation.)"""
    match = next(filter(None, map(SOURCE_LINE.fullmatch, text.splitlines()[:5])), None)
    if match is None:
        raise UserError(f"{doc_path} names no results JSON it was generated from: give --results")
    here = Path(doc_path).resolve().parent

    def paths(names):
        return [Path(os.path.normpath(here / name)) for name in names.split(", ")] if names else []
    return paths(match["results"]), paths(match["ablations"])


def reading_section(existing: str | None) -> str:
    """The human reading kept from an existing document (between the markers), or the default."""
    if existing and READING_OPEN in existing:
        start = existing.index(READING_OPEN) + len(READING_OPEN)
        end = existing.find(READING_CLOSE, start)
        if end < 0:
            raise UserError(f"results document: {READING_OPEN} without {READING_CLOSE}")
        return existing[start:end].strip("\n")
    return READING_DEFAULT


def results_document(results: dict | list[dict], results_path: Path | list[Path], doc_path: Path,
                     existing: str | None, ablations: list[dict] = (), ablation_paths: list[Path] = (),
                     world_checks: list[dict | None] | None = None) -> str:
    """The whole RESULTS.md: the reading (kept from ``existing``), then for every results JSON (the
    headline first, then e.g. a second split) its header, tables (its pre-registered checks first,
    ``world_checks``, one per results JSON or None) and plot links, then the ablations' table
    (``ablation_section``)."""
    many = isinstance(results, list)
    results_list, paths = (results, results_path) if many else ([results], [results_path])
    world_checks = list(world_checks) if world_checks is not None else [None] * len(results_list)
    here = Path(doc_path).resolve().parent
    srcs = relative(paths, here)
    if many:
        seen_paths = set()
        for path in paths:
            if Path(path).resolve() in seen_paths:
                raise UserError(f"--results {path} is given twice: its runs would be pooled with themselves as "
                                "further samples; name each results JSON once")
            seen_paths.add(Path(path).resolve())
    out = ["# aria: results", "", source_line(srcs, relative(ablation_paths, here)), ""]
    if many:
        out += ["## Reading", "", READING_OPEN, reading_section(existing), READING_CLOSE, ""]
    for i, (res, path, src, checked) in enumerate(zip(results_list, paths, srcs, world_checks)):
        base = Path(path).resolve().parent
        links = [f"- [{name}]({os.path.relpath(base / rel, here)})" for name, rel in res["plots"].items()]
        if many:
            tables = results_tables(res, checked).replace("\n## ", "\n### ")
            tables = ("#" + tables) if tables.startswith("## ") else tables
            out += [f"## {i + 1}. {experiment_title(res, results_list, i)} (`{src}`)", "", *results_header(res), "",
                    tables, "### Plots", "", *links, ""]
        else:
            out += [*results_header(res), "", "## Reading", "", READING_OPEN, reading_section(existing),
                    READING_CLOSE, "", results_tables(res, checked), "## Plots", "", *links, ""]
    if many:
        out += pooled_sections(results_list, srcs)
    if ablations:
        out += ablation_section(results_list, list(ablations), list(ablation_paths), here)
    return "\n".join(out)


SPLIT_SETTINGS = ("data.concepts.seed", "data.world.seed", "student.init_path")  # what a split or world seed sets
POOLED_METHOD = ("each check over the per-seed values of every file together, paired by (file, seed): a t-interval "
                 "for these files, with the files as further seeds (it says nothing of a split not run)")


def pooled_sections(results_list: list[dict], names: list[str] | None = None) -> list[str]:
    """For results files that differ only in their split (``SPLIT_SETTINGS``: the same config and every other
    --set value, compared as the values they resolve to: ``_sets``) and ran aria and rc, two or more of them:
    the bar per file and pooled over their runs, and each strategy's share of the oracle's unseen headroom per
    file and pooled (markdown lines).

    Only distinct samples are pooled: a file that repeats a (split, seed) of an earlier file of its group
    (a re-run with the same settings and seeds, or a copy) is left out, with a line saying so in the
    document and on stderr. ``names``: how those lines name the files (default: their titles)."""
    def key(r):
        return _config(r), frozenset(s for s in _sets(r) if s[0] not in SPLIT_SETTINGS)

    names = list(names) if names is not None else [
        experiment_title(r, results_list, i) for i, r in enumerate(results_list)]
    out = []
    for k in dict.fromkeys(key(r) for r in results_list):
        group = [r for r in results_list if key(r) == k and {"aria", "rc"} <= set(r.get("runs", {}))]
        if len(group) < 2:
            continue
        group, notes = distinct_samples(group, [names[_index(r, results_list)] for r in group])
        for note in notes:
            print(f"aria results: {note}", file=sys.stderr)
        if len(group) >= 2:
            out += _pooled_section(group, results_list, notes)
        else:
            out += [f"## Across the splits of `{_config(group[0])}`: nothing pooled", "", *notes, ""]
    return out


def _split(results: dict) -> frozenset:
    """The split a results file ran on: its ``SPLIT_SETTINGS`` --set values as they resolve (``_sets``; none:
    the config's own split)."""
    return frozenset(s for s in _sets(results) if s[0] in SPLIT_SETTINGS)


def distinct_samples(group: list[dict], names: list[str]) -> tuple[list[dict], list[str]]:
    """The files of ``group`` that are distinct samples, in order: each file that shares a (split, seed)
    with a file kept before it is left out (its runs repeat those runs, not further seeds); and one line
    per file left out, naming it and the file it repeats."""
    kept, notes = [], []
    for r, name in zip(group, names):
        seeds = [str(s) for s in r["seeds"]]
        for other, other_name in kept:
            shared = [s for s in seeds if s in {str(x) for x in other["seeds"]}]
            if _split(other) == _split(r) and shared:
                split = ", ".join(f"`{v}`" for v in _shown(r, _split(r))) or "the config's own"
                notes.append(f"Not pooled: `{name}` ran the same split ({split}) and seed{'s' * (len(shared) > 1)} "
                             f"{', '.join(shared)} as `{other_name}`, so its runs are not further samples.")
                break
        else:
            kept.append((r, name))
    return [r for r, _ in kept], notes


def _pooled_section(group: list[dict], results_list: list[dict], notes: list[str] = ()) -> list[str]:
    strategies = [s for s in group[0]["strategies"] if all(s in r["runs"] for r in group)]
    groups = [g for g in group[0]["groups"] if all(g in r["groups"] for r in group)]
    metrics = [m for m in group[0]["metrics"] if all(m in r["metrics"] for r in group)]
    titles = [experiment_title(r, results_list, _index(r, results_list)) for r in group]

    rows = []
    for check in bar_checks(lambda s, g, m: run_values(group, s, g, m), groups, metrics, strategies):
        own = [next((c for c in r["checks"] if c["name"] == check["name"]), None) for r in group]
        rows.append([check["name"], *[f"{fmt(c['mean'])} {'pass' if c['pass'] else 'fail'}" if c else "n/a"
                                      for c in own],
                     fmt_ci(check), str(check["n"]), f"{check['op']} {fmt(check['bar'])}",
                     "pass" if check["pass"] else "fail", fmt(check["ci_clear"])])
    out = [f"## Across the splits of `{_config(group[0])}`: {', '.join(titles)}", "",
           f"The bar in each results file (its mean) and pooled: {POOLED_METHOD}; n is the pairs pooled.", "",
           *((*notes, "") if notes else ()),
           table(["check (aria vs rc)", *titles, "pooled [95% CI]", "n", "bar", "verdict (pooled mean)",
                  "CI clears bar"], rows), ""]
    metric = headroom_metric(metrics)
    if "oracle" in strategies and "unseen" in groups:
        def share(s, files):
            return headroom_share(*(run_values(files, x, "unseen", metric) for x in (s, "rc", "oracle")))

        rows = []
        for s in (s for s in strategies if s != "rc"):
            own, pooled = [share(s, [r]) for r in group], share(s, group)
            rows.append([s, *[f"{fmt(o['strategy']['mean'])} ({fmt(o['share'])})" for o in own],
                         fmt_ci(pooled["strategy"]), fmt(pooled["share"])])
        out += [f"Unseen {metric} over rc's per file (in brackets: the share of the oracle's gain over rc) and "
                "pooled, over the seeds where the strategy, rc and the oracle all ran. A share of 1 matches the "
                "oracle, 0 is rc; n/a where the oracle's gain is not established (its 95% interval reaches 1).", "",
                table(["strategy", *[f"{t}: unseen / rc (share)" for t in titles], "pooled unseen / rc [95% CI]",
                       "pooled share"], rows), ""]
    return out


ABLATION_REGIMES = ("seen", "under", "unseen")


def command_options(command: str) -> tuple[str | None, list[str]]:
    """The ``--config`` (or ``-c``) and ``--set`` values of a recorded command line (None, [] where absent
    or where the line does not parse)."""
    import shlex

    try:
        args = shlex.split(command or "")
    except ValueError:
        return None, []
    config, sets = None, []
    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c"):
            config = value
        elif flag == "--set":
            sets.append(value)
    return config, sets


def _config(results: dict) -> str | None:
    return command_options(results["command"])[0]


def _sets(results: dict) -> frozenset[tuple[str, str]]:
    """The ``--set`` values of the command that made ``results``, as the config values they resolve to
    (``aria.config.override_values``), each a (dotted key, JSON text) pair: the order of the items, a repeated
    key and the spelling of a value (``01``, `` 1``, ``./s1/``) do not make other settings. Every comparison of
    two results files' settings goes through it (pooling, splits, ablations' references)."""
    return _resolved_sets(tuple(command_options(results["command"])[1]))


@functools.lru_cache(maxsize=256)
def _resolved_sets(items: tuple[str, ...]) -> frozenset[tuple[str, str]]:
    from aria.config import override_values

    return frozenset((key, json.dumps(value, sort_keys=True)) for key, value in override_values(items).items())


def _shown(results: dict, settings) -> list[str]:
    """``settings`` (pairs of ``_sets``) as the command that made ``results`` gave them (the last item of each
    key), sorted."""
    given = {item.split("=", 1)[0].strip(): item for item in command_options(results["command"])[1]}
    return sorted(given[key] for key, _ in settings)


def reference_for(results: dict, results_list: list[dict]) -> dict | None:
    """The results of ``results_list`` that ``results`` extends: the same config, and ``--set`` values that
    ``results`` also has, as many as possible (the first of them on a tie); None if there are none."""
    fits = [r for r in results_list if _config(r) == _config(results) and _sets(r) <= _sets(results)]
    return max(fits, key=lambda r: len(_sets(r)), default=None)


def _first_of_config(results: dict, results_list: list[dict]) -> dict:
    return next(r for r in results_list if _config(r) == _config(results))


def _index(results: dict, results_list: list[dict]) -> int:
    return next(i for i, r in enumerate(results_list) if r is results)


def experiment_title(results: dict, results_list: list[dict], index: int) -> str:
    """"headline" for the first results; the first of another config by its config; the others by the
    ``--set`` values that the first results of their config lack."""
    if index == 0:
        return "headline"
    first = _first_of_config(results, results_list)
    return f"`{_config(results)}`" if first is results else _title_against(results, first)


def _title_against(results: dict, reference: dict) -> str:
    extra = _shown(results, _sets(results) - _sets(reference))
    return ("with " + ", ".join(f"`{e}`" for e in extra)) if extra else "same settings"


def ablation_rows(reference: dict, ablation: dict, metric: str = "discrepancy") -> list[dict]:
    """Per strategy of an ablation: its ``metric`` over rc's, paired by seed, per regime. rc is the
    ablation's own where it ran rc (a setting that changes rc too), else the reference's, the results of
    the same config (a setting that rc ignores, e.g. aria's own parameters or the regions, which rc's
    draws from the pool do not use)."""

    own = "rc" in ablation["runs"]
    rc_runs = (ablation if own else reference)["runs"].get("rc", {})
    comparable = own or same_probes(ablation, reference)
    rows = []
    for strategy in ablation["strategies"]:
        if strategy == "rc" or strategy not in ablation["runs"]:
            continue
        runs = ablation["runs"][strategy]
        seeds = sorted(runs, key=int)
        cells = paired_cells(runs, rc_runs, seeds, metric) if comparable else dict.fromkeys(ABLATION_REGIMES)
        rows.append({"strategy": strategy, "rc": "own" if own else "reference", "seeds": seeds, "cells": cells})
    return rows


def paired_cells(runs: dict, base: dict, seeds: list[str], metric: str) -> dict:
    """Per regime: ``metric`` of ``runs`` over ``base`` (``runs[seed][regime][metric]``), paired by seed."""
    def value(r, seed, g):
        return (r.get(seed) or {}).get(g, {}).get(metric)
    return {g: mean_ci(paired_ratios([value(runs, s, g) for s in seeds], [value(base, s, g) for s in seeds]))
            for g in ABLATION_REGIMES}


def same_probes(results: dict, other: dict) -> bool:
    """Both were evaluated on one probe set. The probes are stratified by region, so a setting that changes
    the regions (``regions.k``, ``regions.method``) changes the probe prompts, and a per-regime ratio across
    two probe sets mixes the setting's effect with the change of prompts: no ratio is given then."""
    return results.get("probe_digest") == other.get("probe_digest")


OTHER_PROBES = "n/a: other probe set"


def _cell(stat: dict | None) -> str:
    return OTHER_PROBES if stat is None else fmt_ci(stat)


def setting_rows(reference: dict, ablation: dict, metric: str = "discrepancy") -> list[dict]:
    """Per strategy that both ran, rc included: its ``metric`` under the ablation's settings over the same
    strategy in the reference, paired by seed, per regime (what the setting itself costs or gains: for
    a numerics lever such as backend.fp8, its price)."""
    comparable = same_probes(ablation, reference)
    rows = []
    for strategy in ablation["strategies"]:
        runs, base = ablation["runs"].get(strategy), reference["runs"].get(strategy)
        if not runs or not base:
            continue
        seeds = sorted(set(runs) & set(base), key=int)
        if not seeds:
            continue
        cells = paired_cells(runs, base, seeds, metric) if comparable else dict.fromkeys(ABLATION_REGIMES)
        rows.append({"strategy": strategy, "seeds": seeds, "cells": cells})
    return rows


def ablation_section(results_list: list[dict], ablations: list[dict], paths: list[Path], here: Path) -> list[str]:
    """The ablations in two tables: probe discrepancy of each ablated strategy over rc's, paired by seed,
    each after the row of its reference (the first results of the same config); then each strategy over
    itself in the reference (``setting_rows``)."""
    rows, shown, against_reference = [], [], []
    for res, path in zip(ablations, paths):
        reference = reference_for(res, results_list)
        if reference is None:
            raise UserError(f"{path}: no --results made with its config ({_config(res)}) and a subset of its --set "
                            "values to compare the ablation with; pass that experiment's results.json too")
        title = experiment_title(reference, results_list, _index(reference, results_list))
        if not any(r is reference for r in shown):
            shown.append(reference)
            if "aria" in reference.get("ratios", {}):
                rows.append([title, "aria", "its own", ", ".join(str(s) for s in reference["seeds"]),
                             *[fmt_ci(reference["ratios"]["aria"][g]["discrepancy"]) for g in ABLATION_REGIMES]])
        link = (f"[{_title_against(res, reference)}]"
                f"({os.path.relpath(Path(path).resolve().parent / 'results.md', here)})")
        for row in ablation_rows(reference, res):
            rows.append([link, row["strategy"], row["rc"] if row["rc"] == "own" else f"{title}'s",
                         ", ".join(row["seeds"]), *[_cell(row["cells"][g]) for g in ABLATION_REGIMES]])
        for row in setting_rows(reference, res):
            against_reference.append([link, row["strategy"], title, ", ".join(row["seeds"]),
                                      *[_cell(row["cells"][g]) for g in ABLATION_REGIMES]])
    out = ["## Ablations", "",
           "Probe discrepancy of the ablated strategy over `rc`'s, per regime: mean of the per-seed ratios "
           "with a 95% t-interval (one seed: the ratio alone). `rc` is the ablation's own when the setting "
           "changes rc too, else that of the experiment it extends (same config, its --set values and more; "
           "named in the rc column), same seeds. Each ablation's own tables are linked. A ratio across two "
           f"probe sets (a setting that changes the regions changes the region-stratified probe prompts) is "
           f"not given: \"{OTHER_PROBES}\".", "",
           table(["ablation", "strategy", "rc", "seeds", *[f"{g} / rc" for g in ABLATION_REGIMES]], rows), ""]
    if against_reference:
        out += ["What each setting does to the strategies it ran: probe discrepancy of a strategy under the "
                "ablation's settings over the same strategy in the experiment it extends, per regime, paired "
                "by seed (the seeds both ran).", "",
                table(["ablation", "strategy", "against", "seeds",
                       *[f"{g} / the same in it" for g in ABLATION_REGIMES]], against_reference), ""]
    return out


def check_document(expected: str, actual: str, doc_path: Path) -> None:
    """Raise DocCheckError at the first line of ``actual`` that the JSON does not produce."""
    exp, act = expected.splitlines(), actual.splitlines()
    for i, (e, a) in enumerate(zip(exp, act)):
        if e != a:
            raise DocCheckError(f"{doc_path} line {i + 1} does not come from the results JSON: {a.strip()!r:.120} "
                                f"(regenerated: {e.strip()!r:.120})")
    if len(exp) != len(act):
        raise DocCheckError(f"{doc_path}: {len(act)} lines, the results JSON gives {len(exp)}; regenerate it")


class DocCheckError(UserError):
    """The results document differs from what its JSON generates (``aria results --check``: exit 1)."""
