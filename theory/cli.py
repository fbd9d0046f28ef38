"""``aria theory-sim``: sweep discrepancy processes through the shipped tracker and check the bound.

Exit status 0 when every in-assumption configuration is within the bound, 1 otherwise; 2 for a
user mistake (bad config, unwritable --out, a strategy plugin that fails to load). Everything is
checked before ``--out`` is made; a run that fails after that removes the folder it made.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

from aria.errors import UserError
from aria.files import json_text

from .config import load_config


def _prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"--out {out}: not writable ({err.strerror or err})") from err
    return out


def format_table(rows) -> str:
    head = f"{'configuration':<84} {'RMSE':>9} {'UCL':>9} {'bound':>9} {'ratio':>6}  within"
    lines = [head, "-" * len(head)]
    for r in rows:
        verdict = ("yes" if r.within else "NO") + ("" if r.in_assumption else " (outside)")
        lines.append(f"{r.label:<84} {r.rmse:9.4g} {r.ucl:9.4g} {r.bound:9.4g} {r.ratio:6.3f}  {verdict}")
    return "\n".join(lines)


@click.command("theory-sim")
@click.option("--quick", is_flag=True, help="The small preset (seconds).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML overriding the preset key by key (see configs/theory.yaml).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/theory-sim"), show_default=True,
              help="Folder for theory_sim.json and the figures.")
def theory_sim(quick: bool, config_path: Path | None, out_dir: Path):
    """Simulate discrepancy processes and check the tracking bound of the aria tracker."""
    t0 = time.perf_counter()
    cfg = load_config(config_path, quick)
    from aria.strategies.registry import broken_plugins

    broken = {name: line for name, line in broken_plugins().items() if name not in cfg.allocation.exclude}
    if broken:  # the allocation check runs every registered strategy: it cannot check these
        raise UserError("; ".join(broken.values()) + " (add it to allocation.exclude to check the others)")
    made = None if out_dir.exists() else out_dir  # the top folder this command makes
    while made is not None and not made.parent.exists() and made.parent != made:
        made = made.parent
    try:
        _sweep_and_write(cfg, _prepare_out(out_dir), t0)
    except (Exception, KeyboardInterrupt):
        if made is not None:  # nothing valid in it: a later run must not take it for a result
            shutil.rmtree(made, ignore_errors=True)
        raise


def _sweep_and_write(cfg, out: Path, t0: float) -> None:
    from .sweep import rows_as_dicts, run_sweep, summary

    result = run_sweep(cfg)
    s = summary(result)
    click.echo(format_table(result["rows"]))
    level = f"{100 * cfg.confidence:g}%"
    click.echo(
        f"\nin assumptions: {s['in_assumption']} configurations ({s['pairs']} configuration-seed pairs), "
        f"{s['within']} within the bound ({s['within_pct']:.1f}%): no one-sided {level} lower confidence limit "
        f"(t over replicates, raw and capped at 4 bound^2) above the bound; {s['strict']} also have the "
        f"{level} upper confidence limit below it.")
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in s["median_ratio_by_kind"].items())
    click.echo(f"tightness: median measured/bound {s['median_ratio']:.3f} ({kinds}); largest point estimate "
               f"{s['max_ratio']:.3f}")
    for sc in result["scan"]:
        click.echo(f"alpha minimiser (linear trend, delay {sc['delay']}): measured {sc['measured_minimiser']:.4g}"
                   f" vs a* {sc['a_star']:.4g} (ratio {sc['ratio']:.2f}; within a factor of 2: "
                   f"{'yes' if sc['within_factor_2'] else 'NO'})")
    click.echo(f"outside the assumptions: {s['outside']} configurations, {s['outside_violations']} reported as "
               f"violations")
    click.echo("allocation on the coupled process (mean over seeds):")
    for a in result["allocation"]:
        floor = f"eps={a['eps']:g}" if a["eps"] is not None else "no floor"
        if "error" in a:
            click.echo(f"  {a['strategy']:<10} {floor:<9} failed: {a['error']}")
        else:
            probed = f"  (true discrepancy observed {a['measurements']}x)" if a["measurements"] else ""
            click.echo(f"  {a['strategy']:<10} {floor:<9} final max {a['final_max']:.3f}  final mean "
                       f"{a['final_mean']:.3f}  time-averaged max {a['mean_worst']:.3f}{probed}")
    from . import plots

    ev = cfg.every
    figures = [
        plots.plot_alpha(result["scan"], cfg.scan.sigma, cfg.scan.delta, ev.burn_in, ev.steps, out / "alpha.png"),
        plots.plot_trajectories(result["traces"], out / "trajectories.png"),
        plots.plot_allocation(result["allocation"], out / "allocation.png"),
    ]
    elapsed = time.perf_counter() - t0
    doc = {"config": cfg.model_dump(), "summary": s, "rows": rows_as_dicts(result["rows"]),
           "scan": result["scan"], "allocation": [{k: v for k, v in a.items() if k != "probabilities"}
                                                  for a in result["allocation"]],
           "workers": result["workers"], "elapsed_s": elapsed,
           "check": "violation iff a one-sided lower confidence limit of the RMSE (t over replicates; raw, "
                    "or with each replicate's MSE capped at 4 bound^2) exceeds the bound (level confidence, "
                    "Bonferroni per configuration); strict: the upper limit is below the bound"}
    (out / "theory_sim.json").write_text(json_text(doc))
    click.echo(f"wrote {out / 'theory_sim.json'}, " + ", ".join(str(f) for f in figures) + f" ({elapsed:.1f} s)")
    sys.exit(0 if s["all_within"] else 1)
