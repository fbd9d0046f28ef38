"""The ``aria`` command line.

Subcommands live next to the code they drive and are imported only when invoked, so that
``aria --help`` and ``aria strategies`` stay fast. A user mistake (``UserError``) prints one
line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from .errors import UserError

# name -> "module:attribute" of a click command, imported on use
LAZY_COMMANDS = {
    "theory-sim": ("aria.theory.cli:theory_sim", "Simulate discrepancy processes and check the tracking bound."),
    "regions": ("aria.world.cli:regions", "Build and inspect the regions of a prompt pool."),
    "teacher": ("aria.world.cli:teacher", "Train the embedded world's teacher."),
    "world": ("aria.world.cli:world", "Inspect the embedded world (renders, prompts, regimes, judge)."),
    "eval": ("aria.evaluate:eval_command", "Score a student against its teacher per regime."),
    "compare": ("aria.compare:compare_command", "Train and evaluate several strategies x seeds."),
    "sample": ("aria.sample:sample_command", "Draw a PNG grid from a student (and its teacher)."),
    "results": ("aria.compare:results_command", "Generate docs/RESULTS.md from a results JSON."),
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
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Typed override, e.g. distillation.lr=1e-4.")
@click.option("--resume", is_flag=True, help="Continue from the latest good checkpoint in output_dir.")
@click.option("--dry-run", is_flag=True, help="Validate and print the resolved config, then stop.")
@click.option("--check-consistency", is_flag=True, help="Compare strategy-state hashes across ranks every step.")
def run(strategy, config_path, overrides, resume, dry_run, check_consistency):
    """Distil the teacher into a student with the chosen allocation strategy."""
    from .config import config_to_dict, load_config

    config = load_config(config_path, overrides, strategy=strategy)
    if dry_run:
        import yaml

        click.echo(yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip())
        return
    preflight(config, resume)
    from .engine import run_distillation

    run_distillation(config, resume=resume, check_consistency=check_consistency)


def check_output_dir(path: Path, field: str = "output_dir") -> None:
    """``path`` is, or can be created as, a writable folder (nothing is created)."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:  # exists() is False under a regular file
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == path else f" ({probe} is a file)"
        raise UserError(f"{field} {path} cannot be a folder{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{field} {path} is not writable ({probe} is read-only)")


def preflight(config, resume: bool) -> None:
    """The cheap checks of ``aria run``, before the engine's heavy imports and data work: output_dir,
    data files (the pool cache is filled for the engine to reuse), teacher folder, student variant
    against the teacher, and a resume against the newest checkpoint's config. The engine repeats the
    checks that matter; a check that cannot be made here (unexpected file contents) is left to it."""
    from . import data

    check_output_dir(config.output_dir)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 fills the caches (see aria.data)
        data.check_inputs(config)
    from . import checkpoint as ckpt
    from .models.students import student_unet_config
    from .models.teacher import check_teacher

    unet_config = check_teacher(config.teacher)
    try:
        student_unet_config(unet_config, config.student.variant, config.student.channel_scale)
    except (KeyError, TypeError, ValueError, IndexError):
        pass  # a config.json diffusers completes with defaults: the engine builds the student
    found = ckpt.list_checkpoints(ckpt.checkpoint_dir(config.output_dir))
    if found and not resume:
        raise UserError(f"output_dir {config.output_dir} already holds checkpoints: pass --resume, "
                        f"or choose another output_dir")
    if resume and found:
        from aria.strategies import create_strategy

        from .config import config_to_dict

        try:
            state, saved = ckpt.read_state(found[0])  # the newest; the engine verifies checksums
            saved_strategy = state["strategy"]["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # damaged: the engine reports it and tries an older one
        strategy = create_strategy(config.strategy.name, config.strategy.params_for())
        ckpt.check_resume_config(saved, config_to_dict(config), saved_strategy,
                                 strategy.config.model_dump(mode="json"))


@cli.command("strategies")
def strategies_command():
    """List every registered strategy with its origin, description and parameters."""
    from aria.strategies import list_strategies
    from aria.strategies.registry import describe_parameters

    for name, cls in list_strategies().items():
        click.echo(f"{name}  [{cls.origin}]  {cls.summary()}")
        for field, kind, default, desc in describe_parameters(cls):
            click.echo(f"    {field}: {kind} = {default!r}" + (f"  # {desc}" if desc else ""))


def exit_for_user_error(err: UserError) -> NoReturn:
    """One line, exit status 2. After a failed collective (``exit_at_once``) the process ends at once:
    a peer is gone, and the communicators' destructors could wait for it at interpreter exit."""
    click.echo(f"error: {err}", err=True)
    if getattr(err, "exit_at_once", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit status 2 for user mistakes, unless --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
