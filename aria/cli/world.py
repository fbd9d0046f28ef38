"""``aria regions``, ``aria teacher`` and ``aria world``: build regions, train/evaluate the world
teacher, look at the world. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from aria.cli.options import SEED, FiniteFloat
from aria.devices import check_config_devices, check_device
from aria.errors import UserError
from aria.files import check_output_file

CONFIG = click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), default=None,
                      help="Run config YAML (defaults when omitted).")
JUDGE = click.option("--judge", "judge_dir", type=click.Path(path_type=Path), default=None,
                     help="Judge folder (judge.json + judge.safetensors); default: the shipped judge.")
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Typed override, e.g. regions.k=32.")


def _config(config_path, overrides):
    from aria.config import load_config

    return load_config(config_path, overrides)


@click.group()
def regions():
    """Build and inspect the regions of a prompt pool."""


@regions.command("build")
@CONFIG
@SET
@click.option("--device", default=None, help="Encoder / k-means device (default: encoder.device).")
@click.option("--from", "source", type=click.Path(path_type=Path), default=None,
              help="Take the k-means regions from this folder (labels.npy, regions.json, as the cache holds them) "
                   "instead of computing them: runs on several machines then share one partition.")
def regions_build(config_path, overrides, device, source):
    """Prepare data and regions (cached) and print the region statistics table."""
    from aria.data.bundle import prepare_data
    from aria.data.regions import format_statistics, region_statistics

    config = _config(config_path, overrides)
    if device is None:
        check_config_devices(config, backend=False)  # the encoder's device encodes and clusters
    else:
        check_device(device, "--device")
    bundle = prepare_data(config, device=device, regions_from=source)
    s = bundle.stats
    click.echo(f"pool: {s['pool_size']} prompts ({s['source']}), encoder {s['encoder']}")
    click.echo(f"regions: {s['regions_method']} K={s['num_regions']} ({s['empty_regions']} empty), "
               f"paired: {s['paired_size']} images, cache {s['cache_dir']}")
    if "regions_dir" in s:
        click.echo(f"regions folder: {s['regions_dir']}" + (f" (taken from {source})" if source else ""))
    for key in ("embed_s", "regions_s", "paired_s"):
        if key in s:
            click.echo(f"  {key[:-2]}: {s[key]:.1f}s{' (cached)' if s.get(key[:-2] + '_cached') else ''}")
    rows = region_statistics(bundle.regions, bundle.paired_prompt_ids, bundle.regime_of_prompt)
    click.echo(format_statistics(rows))


@click.group()
def teacher():
    """Train or evaluate the embedded world's teacher."""


@teacher.command("train")
@CONFIG
@SET
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder (diffusers UNet).")
@click.option("--steps", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:i]")
@click.option("--time-limit", "time_limit", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Stop training after this many seconds (evaluation and saving come after).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the UNet.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-eval", is_flag=True, help="Skip the judged evaluation after training.")
@click.option("--guidance", type=FiniteFloat(min=0), default=None,
              help="CFG scale of the evaluation (default: teacher.guidance_scale).")
@click.option("--unet-config", "unet_json", default=None, metavar="JSON",
              help='Overrides of the UNet config, e.g. \'{"block_out_channels": [64, 96, 96], ...}\'.')
@JUDGE
def teacher_train(config_path, overrides, out_dir, steps, batch_size, lr, device, time_limit, compile_, seed, no_eval,
                  guidance, unet_json, judge_dir):
    """Train the world teacher on every item of the config's world (DDPM, CFG dropout, EMA) and save it."""
    from aria.training.world_teacher import train_teacher

    config = _config(config_path, overrides)
    unet_config = None
    if unet_json:
        try:
            unet_config = json.loads(unet_json)
        except ValueError as err:
            raise UserError(f"--unet-config is not valid JSON ({err})") from err
        if not isinstance(unet_config, dict):
            raise UserError("--unet-config must be a JSON object")
        from aria.world.teacher import build_unet

        try:
            build_unet(**unet_config)
        except (TypeError, ValueError) as err:
            raise UserError(f"--unet-config: {str(err).splitlines()[0]}") from err
    report = train_teacher(config, out_dir, steps=steps, batch_size=batch_size, lr=lr, device=device,
                           time_limit_s=time_limit, compile=compile_, seed=seed, evaluate=not no_eval,
                           judge_path=judge_dir, eval_guidance=guidance, unet_config=unet_config,
                           log=lambda m: click.echo(m, err=True), out_name="--out", device_name="--device")
    ev = report.get("evaluation")
    click.echo(f"saved {out_dir}: {report['steps']} steps in {report['train_wall_s']}s, "
               f"{report['weights_mb']} MB" + (f", judged fully correct {100 * ev['accuracy']:.1f}%" if ev else ""))


@teacher.command("evaluate")
@CONFIG
@SET
@click.option("--teacher", "teacher_dir", type=click.Path(path_type=Path), default=None,
              help="Teacher folder (default: teacher.path or the shipped teacher).")
@click.option("--device", default="auto", show_default=True)
@click.option("--steps", type=click.IntRange(1, 50), default=25, show_default=True, help="DDIM steps.")
@click.option("--per-combo", type=click.IntRange(min=1), default=1, show_default=True, help="Prompts per combination.")
@click.option("--guidance", type=FiniteFloat(min=0), default=None, help="CFG scale (default: teacher.guidance_scale).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@JUDGE
def teacher_evaluate(config_path, overrides, teacher_dir, device, steps, per_combo, guidance, as_json, judge_dir):
    """Judge DDIM samples of one pool prompt per combination (all four attributes)."""
    import torch

    from aria.data.encoders import build_encoder
    from aria.devices import resolve_device
    from aria.models.teacher import load_teacher
    from aria.data.bundle import embedded_world_pool
    from aria.training.world_teacher import evaluate_teacher
    from aria.world.judge import Judge
    from aria.world.worlds import world_of_pool

    config = _config(config_path, overrides)
    tconf = config.teacher.model_copy(update={"path": teacher_dir}) if teacher_dir else config.teacher
    device = resolve_device(check_device(device, "--device"))
    t = load_teacher(tconf, device=device, dtype=torch.float32, source=config.data.source)
    if t.latent or t.sample_size != 32 or t.in_channels != 3:
        raise UserError(f"teacher {t.path} is not a 32x32 pixel-space world teacher")
    encoder = build_encoder(config.encoder, device)
    pool = embedded_world_pool(config)
    judge = Judge.load(judge_dir or world_of_pool(pool).judge_dir)
    result = evaluate_teacher(t.unet, pool, encoder, judge, guidance=guidance if guidance is not None
                              else config.teacher.guidance_scale, steps=steps, prompts_per_combo=per_combo,
                              scheduler_config=t.scheduler_config)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"{t.path}: fully correct {100 * result['accuracy']:.1f}% of {result['prompts']} prompts "
               f"({result['sample_steps']} DDIM steps, guidance {result['guidance']})")
    for attr, acc in {**result["per_attribute"], **result["by_family"]}.items():
        click.echo(f"  {attr:<11} {100 * acc:.1f}%")


@click.group()
def world():
    """Inspect the embedded world (renders, prompts, regimes, judge)."""


@world.command("show")
@CONFIG
@SET
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
              help="Image file to write (.png, or another type matplotlib writes: .jpg, .pdf, .svg, ...).")
@click.option("--n", "count", type=click.IntRange(1, 256), default=24, show_default=True, help="Images in the grid.")
@click.option("--seed", type=SEED, default=0, show_default=True)
def world_show(config_path, overrides, out_path, count, seed):
    """Write a grid of renders of random prompts of the configured world (data.source: shapes or concepts),
    each captioned with its prompt and regime."""
    import numpy as np

    from aria.data.bundle import embedded_world_pool
    from aria.world.teacher import pool_texts
    from aria.world.worlds import world_of_pool

    config = _config(config_path, overrides)
    if config.data.source not in ("shapes", "concepts"):
        raise UserError(f"data.source {config.data.source!r}: aria world show draws an embedded world "
                        f"(data.source shapes or concepts), not user files")
    check_output_file(out_path, "--out", grid_suffixes(), kind="image", example="grid.png")  # before the pool
    pool = embedded_world_pool(config)
    world = world_of_pool(pool)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(len(pool), size=min(count, len(pool)), replace=False))
    items = np.asarray(pool.meta(world.meta_key))[ids]
    images = world.render(items, seed)
    regime = world_regimes(config)[items]
    names = world.regime_names
    labels = [f"{t}\n[{names[r]}]" for t, r in zip(pool_texts(pool, ids), regime)]
    save_grid(images, labels, out_path)
    click.echo(f"wrote {out_path} ({len(ids)} renders of the {world.name} world)")


def world_regimes(config):
    """The regime of every item of ``config``'s embedded world (as ``prepare_data`` splits it)."""
    if config.data.source == "concepts":
        from aria.data.bundle import concepts_regimes

        return concepts_regimes(config)
    from aria.world import regimes

    return regimes.split_regimes(config.data.world)


def grid_suffixes() -> set[str]:
    """The file suffixes matplotlib's Agg canvas writes (.png, .jpg, .pdf, .svg, ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return {f".{ext}" for ext in FigureCanvasAgg.get_supported_filetypes()}


def save_grid(images, labels, path: Path, cols: int = 6):
    """A matplotlib grid of uint8 images with wrapped captions, written to a temporary file beside ``path``
    and renamed into place (a failed write leaves no partial image; one line names it)."""
    import os
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aria.files import discard

    path = Path(path)
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, label in zip(axes.ravel(), images, labels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(label, 24)), fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=100, format=path.suffix[1:].lower() or "png")
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"--out {path}: cannot write the grid ({err.strerror or err})") from err
    finally:
        plt.close(fig)
        discard(tmp)
