"""The ``aria`` command line.

Subcommands live next to the code they drive and are imported only when invoked, so that
``aria --help`` and ``aria strategies`` stay fast. A user mistake (``UserError``) prints one
line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import click

from aria.errors import UserError

# name -> "module:attribute" of a click command, imported on use
LAZY_COMMANDS = {
    "theory-sim": ("aria.theory.cli:theory_sim", "Simulate discrepancy processes and check the tracking bound."),
    "regions": ("aria.cli.world:regions", "Build and inspect the regions of a prompt pool."),
    "teacher": ("aria.cli.world:teacher", "Train the embedded world's teacher."),
    "world": ("aria.cli.world:world", "Inspect the embedded world (renders, prompts, regimes, judge)."),
    "eval": ("aria.cli.experiment:eval_command", "Score a student against its teacher per regime."),
    "compare": ("aria.cli.experiment:compare_command", "Train and evaluate several strategies x seeds."),
    "sample": ("aria.cli.experiment:sample_command", "Draw a PNG grid from a student (and its teacher)."),
    "results": ("aria.cli.experiment:results_command", "Generate docs/RESULTS.md from a results JSON."),
    "checks": ("aria.cli.experiment:checks_command", "Pre-registered checks of a comparison (exit 1 on a fail)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        if name in LAZY_COMMANDS:
            target, _ = LAZY_COMMANDS[name]
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(n, self.commands[n].get_short_help_str(70)) for n in super().list_commands(ctx)]
        rows += [(n, h) for n, (_, h) in LAZY_COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="aria-distill")
def cli(debug: bool):
    """aria: distil conditional diffusion models, choosing where the training effort goes."""
    if debug:
        os.environ["ARIA_DEBUG"] = "1"


@cli.command()
@click.option("--strategy", "-s", default=None, help="Registered strategy (overrides the config's).")
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Typed override, e.g. distillation.lr=1e-4.")
@click.option("--resume", is_flag=True, help="Continue from the latest good checkpoint in output_dir.")
@click.option("--dry-run", is_flag=True, help="Check everything that needs no training (config, paths, teacher "
              "folder layout, regions.k against the pool, memory lower bound), print the resolved config, stop.")
@click.option("--check-consistency", is_flag=True, help="Compare strategy-state hashes across ranks every step.")
def run(strategy, config_path, overrides, resume, dry_run, check_consistency):
    """Distil the teacher into a student with the chosen allocation strategy.

    Ends by drawing the run's plots into OUTPUT_DIR/plots and printing the commands that evaluate,
    sample and compare it. Example: aria run --strategy aria --config configs/concepts-quick.yaml
    """
    from aria.config import config_to_dict, load_config

    if resume and dry_run:
        raise UserError("--resume and --dry-run cannot be combined: a dry run only validates the config "
                        "(drop --resume to check it, or --dry-run to continue training)")
    config = load_config(config_path, overrides, strategy=strategy)
    if dry_run:
        import yaml

        from aria.training.checks import check_run

        report = check_run(config, resume=False, dry_run=True)  # the engine's own checks (exit 2 on a mistake)
        click.echo(yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip())
        click.echo(dry_run_summary(report))
        return
    from aria.training.engine import run_distillation

    result = run_distillation(config, resume=resume, check_consistency=check_consistency)
    if "student" in result:  # the main rank
        click.echo(run_epilogue(config, config_path, overrides, Path(result["output_dir"])))


def dry_run_summary(report: dict) -> str:
    """The dry run's closing line, a YAML comment (stdout stays the resolved config)."""
    memory = report.get("memory") or {}
    if "lower_bound_gib" in memory:
        have = "" if memory["device_gib"] is None else f" of {memory['device_gib']:.1f} GiB"
        size = f"; weights, gradients and AdamW moments need >= {memory['lower_bound_gib']:.2f} GiB{have} on " \
               f"{memory['device']} (activations not counted)"
    else:
        size = f"; memory not estimated ({memory.get('skipped', 'no teacher checked')})"
    return f"# dry run: config, paths, teacher folder and data inputs check out{size}"


def run_epilogue(config, config_path: Path, overrides, output_dir: Path) -> str:
    """The lines that end a run: where its plots are, and the commands that come next. A plot that
    cannot be drawn is named, never fatal: the student is already exported."""
    from aria.experiment import plots

    lines = []
    try:
        drawn = plots.run_plots(output_dir)
        if drawn:
            names = ", ".join(Path(p).name for p in drawn.values())
            lines.append(f"plots: {output_dir / plots.PLOTS_DIR} ({names})")
    except Exception as err:  # noqa: BLE001 - e.g. a matplotlib backend problem
        lines.append(f"plots: not drawn ({type(err).__name__}: {' '.join(str(err).split())[:160]})")
    if (output_dir / "tensorboard").is_dir():
        lines.append(f"tensorboard: tensorboard --logdir {shlex.quote(str(output_dir / 'tensorboard'))}")
    sets = [a for o in overrides for a in ("--set", o)]
    compare_sets = [a for o in overrides if not o.strip().startswith("output_dir=") for a in ("--set", o)]
    examples = plots.example_prompts(output_dir)
    name = config.strategy.name
    strategies = "none,rc" if name in ("none", "rc") else f"rc,{name}"
    prompts = [a for p in examples for a in ("--prompt", p)] or ["--prompt", "<a prompt of your pool>"]
    lines += ["next:",
              "  " + shlex.join(["aria", "eval", "--student", str(output_dir), "--config", str(config_path), *sets]),
              "  " + shlex.join(["aria", "sample", "--model", str(output_dir), *prompts]),
              "  " + shlex.join(["aria", "compare", "--strategies", strategies, "--seeds", "3", "--config",
                                 str(config_path), *compare_sets])]
    return "\n".join(lines)


@cli.command("strategies")
def strategies_command():
    """List every registered strategy with its origin, description and parameters."""
    from aria.strategies import list_strategies
    from aria.strategies.registry import broken_plugins, describe_parameters

    for name, cls in list_strategies().items():
        click.echo(f"{name}  [{cls.origin}]  {cls.summary()}")
        for field, kind, default, desc in describe_parameters(cls):
            click.echo(f"    {field}: {kind} = {default!r}" + (f"  # {desc}" if desc else ""))
    broken = broken_plugins()
    if broken:  # the others are listed above; the broken ones are named in one line (exit status 2)
        raise UserError("; ".join(broken.values()) if len(broken) == 1 else
                        f"{len(broken)} strategy plugins failed to load: " + "; ".join(broken.values()))


def exit_for_user_error(err: UserError) -> NoReturn:
    """One line, exit status 2. After a failed collective (``exit_at_once``) the process ends at once:
    a peer is gone, and the communicators' destructors could wait for it at interpreter exit."""
    click.echo(f"error: {err}", err=True)
    if getattr(err, "exit_at_once", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    sys.exit(2)


# diffusers notices that say nothing about an aria run, dropped by logger and the start of the message; every
# other diffusers message stays. Each would print on every model load (or import) and break the one-line errors.
_IRRELEVANT_NOTICES = {
    # accelerate is optional: without it diffusers loads models with low_cpu_mem_usage=False by itself, with the
    # same weights (five lines on every load: eval, sample, teacher)
    "diffusers.models.modeling_utils": "Cannot initialize model with low cpu memory usage because `accelerate`",
    "diffusers.pipelines.pipeline_utils": "Cannot initialize model with low cpu memory usage because `accelerate`",
    # where torchao is installed (backend.fp8) diffusers imports it at once and misses Tensor classes that
    # torchao 0.18 moved; aria loads no torchao-serialised checkpoint
    "diffusers.quantizers.torchao.torchao_quantizer": "Unable to import `torchao` Tensor objects",
}


class _DropNotice(logging.Filter):
    """Drops the records whose message starts with ``start``, and only them."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_diffusers_notices() -> None:
    """Install a ``_DropNotice`` on each diffusers logger of ``_IRRELEVANT_NOTICES`` (by name: diffusers,
    imported later, picks up these same logger objects)."""
    for name, start in _IRRELEVANT_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in logger.filters):
            logger.addFilter(_DropNotice(start))


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit status 2 for user mistakes, unless --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_diffusers_notices()
    debug = "--debug" in argv or os.environ.get("ARIA_DEBUG") == "1"
    try:
        result = cli.main(args=argv, prog_name="aria", standalone_mode=False)
        if isinstance(result, int) and result != 0:  # ctx.exit(code) in a subcommand
            sys.exit(result)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(2)
    except UserError as err:
        if debug:
            raise
        exit_for_user_error(err)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
