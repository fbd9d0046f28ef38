"""``aria eval``, ``aria compare``, ``aria results`` and ``aria sample``: the experiment's commands."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from aria.cli.options import SEED
from aria.config import SEED_MAX
from aria.devices import check_config_devices
from aria.errors import UserError
from aria.files import check_output_file, check_output_folder


@click.command("eval")
@click.option("--student", "student", type=click.Path(path_type=Path), required=True,
              help="Exported student folder, or a run output_dir holding it.")
@click.option("--teacher", "teacher_path", type=click.Path(path_type=Path), default=None,
              help="Teacher diffusers folder (overrides teacher.path).")
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Typed override, e.g. eval.sample_steps=50.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: eval/ in the run folder holding the student).")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Cache folder for the teacher's predictions and samples (shared by a comparison).")
def eval_command(student, teacher_path, config_path, overrides, out, reference):
    """Score a student against its teacher per regime and per region."""
    from aria.config import load_config
    from aria.experiment import evaluate, report

    config = load_config(config_path, overrides)
    if teacher_path is not None:
        config.teacher.path = teacher_path
    folder = evaluate.find_student(student)
    what = "--out" if out is not None else "the eval folder (--out)"
    if out is None:
        out = (folder.parent if folder == Path(student) else Path(student)) / "eval"
    for path, what in ((out, what), (reference, "--reference")):
        if path is not None:  # before the evaluation, not after it
            check_output_folder(path, what)
    check_config_devices(config)  # backend.device runs the models, encoder.device encodes the prompts
    result = evaluate.evaluate(config, student, reference=reference)
    paths = evaluate.write_eval(result, out)
    click.echo(report.eval_table(result))
    click.echo(f"wrote {paths['json']}, {paths['markdown']} and {paths['plot']}")


@click.command("compare")
@click.option("--strategies", default="none,rc,uniform,exp3,ducb,swucb,dts,aria", show_default=True,
              help="Comma-separated strategy names.")
@click.option("--seeds", default="3", show_default=True,
              help="N (seeds 0..N-1) or a comma-separated list; seed s sets config.seed = s.")
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), required=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override for every run.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True)
@click.option("--parallel", type=click.IntRange(1), default=None,
              help="Concurrent training runs (default: 1 on CPU, 2 a GPU, spread over the GPUs).")
@click.option("--summary-only", is_flag=True,
              help="Train nothing: summarise the evaluated runs already in --out (e.g. copied from other machines).")
def compare_command(strategies, seeds, config_path, overrides, out, parallel, summary_only):
    """Train and evaluate several strategies x seeds; write results.json, tables and plots."""
    from aria.experiment import compare, report

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    seed_list = parse_seeds(seeds)
    cmd = ["aria", "compare", "--strategies", ",".join(names), "--seeds", seeds, "--config", str(config_path),
           "--out", str(out), *[a for o in overrides for a in ("--set", o)]]
    if parallel:
        cmd += ["--parallel", str(parallel)]
    if summary_only:
        cmd += ["--summary-only"]
    results = compare.compare(config_path, names, seed_list, out, parallel, overrides, shlex.join(cmd), summary_only)
    click.echo(report.checks_table(results) if results["checks"] else "no checks (aria or rc missing)")
    click.echo(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'results.md'}")


def parse_seeds(text: str) -> list[int]:
    """``3`` -> [0, 1, 2]; ``0,4,7`` -> [0, 4, 7]."""
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected a count N >= 1 or a comma-separated list of seeds") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected distinct seeds")
    if not all(0 <= s <= SEED_MAX for s in seeds):
        raise UserError(f"--seeds {text!r}: seeds are 0 to 2^63 - 1")
    return seeds


@click.command("results")
@click.option("--results", "results_path", type=click.Path(path_type=Path), multiple=True,
              help="A compare results.json; repeat for more (the headline first, then e.g. a second split). "
                   "Default: the results and ablations that --out names on its second line.")
@click.option("--ablation", "ablation_paths", type=click.Path(path_type=Path), multiple=True,
              help="An ablation's results.json (same config but its --set values); repeat for more. Summarised "
                   "in one table against rc (its own, or the headline's when it did not run rc). Needs --results.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("docs/RESULTS.md"), show_default=True)
@click.option("--check", is_flag=True, help="Fail (exit 1) if the document differs from what the JSON generates.")
def results_command(results_path, ablation_paths, out, check):
    """Generate docs/RESULTS.md from a results JSON (keeping the reading section). Without --results, from
    the JSONs the existing document names: `aria results --check` verifies the shipped docs/RESULTS.md."""
    from aria.experiment import compare, report

    # before any results file is read; with --check the document is only read
    check_output_file(out, "--out", kind="document", example="docs/RESULTS.md", written=not check)
    if not results_path:
        if ablation_paths:
            raise UserError("--ablation needs --results (the experiment the ablations extend)")
        if not out.is_file():
            raise UserError(f"--out {out} does not exist: give --results")
        results_path, ablation_paths = report.document_sources(out.read_text(), out)
        gone = [str(p) for p in [*results_path, *ablation_paths] if not p.is_file()]
        if gone:
            raise UserError(f"{out} names {', '.join(gone)} on its source line, which does not exist; give --results")
    try:
        compare.results_doc(results_path, out, check, ablation_paths)
    except report.DocCheckError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"{out}: {'matches' if check else 'written from'} "
               f"{', '.join(map(str, [*results_path, *ablation_paths]))}")


SAMPLE_EXAMPLE = "aria sample --model runs/concepts-quick --prompt 'a large blue fish on the left' " \
    "--prompt 'a small red apple in the center'"


@click.command("sample", epilog=f"""\b
Example (the quickstart's run, configs/concepts-quick.yaml; the concepts world
reads captions of a concept, colour, size and position; with seed 0 fish are
seen in the paired data, the fruit family is unseen):
  {SAMPLE_EXAMPLE}""")
@click.option("--model", "model", type=click.Path(path_type=Path), required=True,
              help="A run's output_dir, or the student folder in it.")
@click.option("--prompt", "prompts", multiple=True, required=True,
              help="A prompt, e.g. 'a large blue fish on the left'; repeat for more rows.")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="Teacher UNet folder (or SD folder) for the teacher column (default: the run's own teacher, "
                   "recorded in aria.json).")
@click.option("--no-teacher", is_flag=True, help="The student's column alone.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Image file to write, replacing a file of that name (default: the run folder's "
                   "samples/<first prompt>[+N]-seed<seed>-<digest>.png, the digest of every prompt and setting "
                   "that changes the picture, so another grid never overwrites it).")
@click.option("--steps", type=int, default=25, show_default=True, help="DDIM steps.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--guidance", type=float, default=None,
              help="CFG scale, finite (default: the run's teacher.guidance_scale).")
@click.option("--device", default="auto", show_default=True)
def sample_command(model, prompts, teacher, no_teacher, out, steps, seed, guidance, device):
    """Draw a labelled PNG grid: one row per prompt, the student's and the teacher's samples from the same noise."""
    from aria.experiment import sample

    path = sample.sample_grid(model, list(prompts), out, teacher, steps, seed, guidance, device,
                              with_teacher=not no_teacher)
    click.echo(f"wrote {path}")


@click.command("checks")
@click.option("--compare", "compare_dir", type=click.Path(path_type=Path), required=True,
              help="An aria compare --out folder (with none, rc and oracle runs).")
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), default=None,
              help="Config whose experiment.checks holds the thresholds (default: the one the compare command named, "
                   "with its --set values).")
def checks_command(compare_dir, config_path):
    """Pre-registered checks of a comparison: print the table, write checks.json; exit 1 unless all pass."""
    from aria.config import load_config
    from aria.experiment import checks, report

    folder = checks.read_compare(compare_dir)
    sets = []
    if config_path is None:
        recorded = checks.recorded_config(folder)
        if recorded is None:
            raise UserError(f"--config: {compare_dir}/results.json names no config; pass --config")
        config_path, sets = recorded
        if not config_path.is_file():
            raise UserError(f"--config: the comparison used {config_path}, which is not here; pass --config")
    config = load_config(config_path, sets)
    result = checks.compute_checks(compare_dir, config.experiment.checks, config.distillation.feedback_from)
    result["config"] = {"path": str(config_path), "sets": sets}
    path = checks.write_checks(result, compare_dir)
    click.echo(report.world_checks_table(result))
    passed = sum(r["status"] == "pass" for r in result["checks"])
    click.echo(f"{passed} of {len(result['checks'])} checks pass; wrote {path}")
    sys.exit(0 if result["all_pass"] else 1)
