"""``aria eval``: score a student against its teacher per regime and per region.

- probe discrepancy: mean over pixels of (eps_S - eps_T)^2 on a fixed probe set (prompts
  stratified over regimes then regions, their images (rendered, or paired images for user files),
  a midpoint grid of timesteps and noises, noised by the scheduler's ``add_noise``), every piece
  derived from ``eval.seed`` and the data config, never from the student;
- DDIM samples of teacher and student from the same initial noise: pixel MSE, and in a world the
  judge's metrics: attribute accuracy of both, agreement (identical judge readings) and KID
  (unbiased polynomial-kernel MMD) in the judge's feature space.

Rows: every regime, every concept family (world v2) or prompts-file group (``group:<name>``), and
``all``; per region in ``regions``. The teacher's share (probe predictions, samples) is a pure
function of the probe set and the teacher: it is cached (``--reference DIR``, by default
``data.cache_dir/eval-reference``) and computed once for every student of a comparison.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from aria.errors import UserError
from aria.files import discard, json_text
from aria.experiment import report
from aria.training.probe import (build_probe_set, condition_discrepancy, guided_discrepancy, items_of_pool,
                                 probe_eps, sample_prompt_ids, world_of)

GROUPS = report.REGIME_NAMES  # regime r -> name; families ("family:<name>") and "all" are added
# version of the teacher's cached share: 2 = probe noised by add_noise, with and without prompt in one pass
REFERENCE_VERSION = 2


# -- model passes ---------------------------------------------------------------------------------

def ddim_samples(unet, context, uncond, noise: np.ndarray, steps: int, guidance: float, scheduler_config,
                 batch: int) -> np.ndarray:
    """DDIM samples (the world teacher's sampler) from the given initial noise, in batches."""
    from aria.world.teacher import sample_ddim

    return np.concatenate([
        sample_ddim(unet, context[s:s + batch], uncond, steps, guidance, noise=torch.from_numpy(noise[s:s + batch]),
                    scheduler_config=scheduler_config).float().cpu().numpy()
        for s in range(0, len(noise), batch)])


@contextlib.contextmanager
def counting(unet, bar, desc: str):
    """Advance the progress ``bar`` by the images of every forward of ``unet`` (any sampler)."""
    if bar is None:
        yield
        return
    def tick(module, args, kwargs, output):
        bar.update(len(args[0] if args else kwargs["sample"]))  # returns None: the output is kept

    bar.set_description(desc)
    handle = unet.register_forward_hook(tick, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def teacher_reference(teacher_unet, probe, sample_noise, ctx, scheduler, args: dict, cache: Path | None,
                      bar=None) -> dict:
    """The teacher's probe predictions and samples, read from / written to ``cache`` when given."""
    from safetensors.numpy import load_file, save_file

    arrays = {"noise": sample_noise, **{k: v.numpy() for k, v in ctx.items()}}
    key = hashlib.sha256(json.dumps({**args, "version": REFERENCE_VERSION, "probe": probe.digest,
                                     "teacher": weights_digest(teacher_unet),
                                     **{k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                                        for k, v in arrays.items()}},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = None if cache is None else Path(cache) / f"teacher-{key}.safetensors"
    if path is None:
        return _teacher_reference(teacher_unet, probe, ctx, sample_noise, scheduler, args, bar)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:  # concurrent evaluations compute it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            if bar is not None:
                bar.update(forwards(probe, len(sample_noise), args))
            return load_file(path)
        ref = _teacher_reference(teacher_unet, probe, ctx, sample_noise, scheduler, args, bar)
        tmp = path.with_suffix(f".{np.random.default_rng().integers(1 << 30)}.tmp")
        save_file({k: np.ascontiguousarray(v) for k, v in ref.items()}, str(tmp))
        tmp.replace(path)
    return ref


def _teacher_reference(teacher_unet, probe, ctx, sample_noise, scheduler, args: dict, bar=None) -> dict:
    with counting(teacher_unet, bar, "eval: teacher"):
        eps = probe_eps(teacher_unet, probe, {"c": ctx["probe"], "u": ctx["uncond"]}, scheduler, args["batch"])
        samples = ddim_samples(teacher_unet, ctx["sample"], ctx["uncond"], sample_noise, args["steps"],
                               args["guidance"], args["scheduler"], args["batch"])
    return {"probe_eps": eps["c"], "probe_eps_uncond": eps["u"], "samples": samples}


def forwards(probe, samples: int, args: dict) -> int:
    """Images through one model in an evaluation: the probe (with and without the prompt) and the sampler."""
    return (2 * probe.noise.shape[0] * probe.noise.shape[1]
            + samples * args["steps"] * (1 if args["guidance"] == 1.0 else 2))


def weights_digest(module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- metrics --------------------------------------------------------------------------------------

def _groups(regimes: np.ndarray | None, n: int, families: np.ndarray | None = None,
            family_names=(), groups: np.ndarray | None = None, group_names=()) -> dict[str, np.ndarray]:
    """name -> boolean mask over n items: every regime present, every family present
    (``family:<name>``), every prompts-file group present (``group:<name>``), then ``all``."""
    out = {}
    if regimes is not None:
        out = {GROUPS[r]: regimes == r for r in range(len(GROUPS)) if (regimes == r).any()}
    if families is not None:
        out.update({f"family:{name}": families == f for f, name in enumerate(family_names) if (families == f).any()})
    if groups is not None:
        out.update({f"group:{name}": groups == g for g, name in enumerate(group_names) if (groups == g).any()})
    out["all"] = np.ones(n, dtype=bool)
    return out


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3 (KID) between two feature sets."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, m, d = len(x), len(y), x.shape[1]
    if n < 2 or m < 2:
        return float("nan")
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def judge_readings(judge, pixels: np.ndarray) -> dict:
    """The judge's attribute readings and features of images in [-1, 1]."""
    from aria.world.shapes import from_tensor_range

    images = from_tensor_range(pixels)
    return {"pred": judge.predict(images), "features": np.asarray(judge.features(images))}


def judge_metrics(world, items: np.ndarray, student: dict, teacher: dict, mask: np.ndarray) -> dict:
    """Accuracy (all attributes right) of student and teacher, agreement and KID on ``mask``."""
    ATTRIBUTES = world.attributes
    truth = dict(zip(ATTRIBUTES, world.attributes_of(items[mask])))
    s_pred = {a: np.asarray(student["pred"][a])[mask] for a in ATTRIBUTES}
    t_pred = {a: np.asarray(teacher["pred"][a])[mask] for a in ATTRIBUTES}
    s_ok = np.all([s_pred[a] == truth[a] for a in ATTRIBUTES], axis=0)
    t_ok = np.all([t_pred[a] == truth[a] for a in ATTRIBUTES], axis=0)
    same = np.all([s_pred[a] == t_pred[a] for a in ATTRIBUTES], axis=0)
    out = {"judge_accuracy": float(s_ok.mean()), "teacher_accuracy": float(t_ok.mean()),
           "accuracy_gap": float(t_ok.mean() - s_ok.mean()), "agreement": float(same.mean()),
           "kid": kid(student["features"][mask], teacher["features"][mask])}
    out["attributes"] = {a: {"student": float((s_pred[a] == truth[a]).mean()),
                             "teacher": float((t_pred[a] == truth[a]).mean())} for a in ATTRIBUTES}
    return out


def region_table(bundle, probe_ids: np.ndarray, disc: np.ndarray, cond: np.ndarray) -> dict:
    """Per region: probe discrepancy (raw, and divided by each timestep's all-probe mean, as aria's
    tracker normalises), condition-specific discrepancy, probes, pool size, main regime and the
    fraction of its prompts per regime."""
    k = len(bundle.region_info.sizes)
    reg = np.asarray(bundle.region_of_prompt)[probe_ids]
    counts = np.bincount(reg, minlength=k)
    sums = np.bincount(reg, weights=disc.mean(1), minlength=k)
    scale = disc.mean(0, keepdims=True)
    norm = np.bincount(reg, weights=(disc / np.where(scale > 0, scale, 1.0)).mean(1), minlength=k)
    main, fractions = [None] * k, None
    if bundle.regime_of_prompt is not None:
        cells = np.zeros((k, len(GROUPS)), dtype=np.int64)
        np.add.at(cells, (np.asarray(bundle.region_of_prompt), np.asarray(bundle.regime_of_prompt)), 1)
        main = [int(np.argmax(c)) if c.sum() else None for c in cells]
        fractions = (cells / np.maximum(cells.sum(1, keepdims=True), 1)).tolist()
    cond_sums = np.bincount(reg, weights=cond.mean(1), minlength=k)
    return {"discrepancy": [float(s / c) if c else None for s, c in zip(sums, counts)],
            "cond_discrepancy": [float(s / c) if c else None for s, c in zip(cond_sums, counts)],
            "normalised": [float(s / c) if c else None for s, c in zip(norm, counts)],
            "probes": counts.tolist(), "size": np.asarray(bundle.region_info.sizes).tolist(), "regime": main,
            "regime_fractions": fractions}


# -- the evaluation -------------------------------------------------------------------------------

def student_unet_folder(folder: Path) -> Path:
    """The UNet folder of an exported student: ``unet/`` of a pipeline folder, else ``folder`` itself."""
    folder = Path(folder)
    return folder / "unet" if (folder / "model_index.json").is_file() else folder


def find_student(path: Path, required: bool = True) -> Path | None:
    """The student's export: ``path`` itself or ``student/`` inside a run's output_dir, holding a
    diffusers UNet (a UNet folder, or a pipeline folder with the UNet in ``unet/``)."""
    path = Path(path)
    for folder in (path, path / "student"):
        unet = student_unet_folder(folder)
        if (unet / "config.json").is_file() and any(unet.glob("diffusion_pytorch_model*")):
            return folder
    if required:
        raise UserError(f"--student {path}: no exported student (a diffusers UNet or pipeline folder, or a run "
                        f"output_dir holding one in student/)")
    return None


def load_student(path: Path, device: str):
    from diffusers import UNet2DConditionModel

    folder = find_student(path)
    try:
        unet = UNet2DConditionModel.from_pretrained(student_unet_folder(folder), local_files_only=True)
    except Exception as err:  # corrupt or foreign folder: one line naming it
        raise UserError(f"--student {folder}: cannot load a UNet2DConditionModel "
                        f"({(str(err).strip().splitlines() or [type(err).__name__])[0]})") from err
    return unet.to(device).eval().requires_grad_(False), folder


def load_components(config, teacher=None, bundle=None, judge=None) -> tuple:
    """(teacher, bundle, judge) of ``config``, loading those not given (no judge outside the world)."""
    from aria.devices import resolve_device, use_cpu_threads

    device = resolve_device(config.backend.device)
    use_cpu_threads(config.backend.cpu_threads)
    if teacher is None:
        from aria.models import load_teacher

        teacher = load_teacher(config.teacher, device=device, source=config.data.source)
    if bundle is None:
        from aria.data.bundle import prepare_data

        bundle = prepare_data(config, device=None)
    world = world_of(bundle)
    if judge is None and world is not None:
        from aria.world.judge import Judge

        if not (world.judge_dir / "judge.json").is_file():
            raise UserError(f"the {world.name} world's judge is missing at {world.judge_dir}")
        judge = Judge.load(world.judge_dir, device=device)
    return teacher, bundle, judge


def evaluate(config, student_path: Path, teacher=None, bundle=None, judge=None, reference: Path | None = None,
             progress: bool | None = None) -> dict:
    """Every metric of one student (a dict ready for JSON); loads what is not passed in. ``reference``:
    the teacher's cache folder (default ``data.cache_dir/eval-reference``); ``progress``: a progress
    bar on stderr (default ``logging.progress``)."""
    if reference is None:
        reference = Path(config.data.cache_dir) / "eval-reference"
    progress = config.logging.progress if progress is None else progress
    try:
        return _evaluate(config, student_path, teacher, bundle, judge, reference, progress)
    except torch.cuda.OutOfMemoryError as err:
        raise UserError(f"eval.batch_size={config.eval.batch_size}: out of GPU memory (the sampler runs twice "
                        "that with guidance); lower eval.batch_size") from err


def _evaluate(config, student_path, teacher, bundle, judge, reference, progress) -> dict:
    from diffusers import DDPMScheduler

    find_student(student_path)  # a wrong folder fails before any heavy work
    teacher, bundle, judge = load_components(config, teacher, bundle, judge)
    student, folder = load_student(student_path, next(teacher.unet.parameters()).device)
    for key in ("in_channels", "sample_size", "cross_attention_dim"):
        if student.config[key] != teacher.unet.config[key]:
            raise UserError(f"--student {folder}: {key} {student.config[key]} differs from the teacher's "
                            f"{teacher.unet.config[key]}")
    ecfg = config.eval
    if ecfg.sample_steps > 50:
        raise UserError(f"eval.sample_steps {ecfg.sample_steps}: the DDIM sampler takes 1 to 50 steps")
    sched = DDPMScheduler.from_config(teacher.scheduler_config)
    encode, decode = teacher.pixel_codec()
    probe = build_probe_set(bundle, ecfg, sched.config.num_train_timesteps, encode)
    ids = sample_prompt_ids(bundle, ecfg)
    enc, pool = bundle.encoder, bundle.pool
    ctx = {"probe": torch.from_numpy(enc.encode_tokens(pool.texts(probe.prompt_ids))),
           "sample": torch.from_numpy(enc.encode_tokens(pool.texts(ids))),
           "uncond": torch.from_numpy(enc.encode_tokens([""]))}
    noise = np.random.default_rng([ecfg.seed, 4]).standard_normal((len(ids), *probe.x0.shape[1:]), dtype=np.float32)
    args = {"steps": ecfg.sample_steps, "guidance": config.teacher.guidance_scale, "batch": ecfg.batch_size,
            "scheduler": {k: v for k, v in teacher.scheduler_config.items() if not k.startswith("_")}}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * forwards(probe, len(ids), args), unit="img", desc="eval", dynamic_ncols=True,
                   file=sys.stderr)
    try:
        ref = teacher_reference(teacher.unet, probe, noise, ctx, sched, args, reference, bar)
        with counting(student, bar, "eval: student"):
            eps_s = probe_eps(student, probe, {"c": ctx["probe"], "u": ctx["uncond"]}, sched, ecfg.batch_size)
            s_px = decode(ddim_samples(student, ctx["sample"], ctx["uncond"], noise, ecfg.sample_steps,
                                       args["guidance"], args["scheduler"], ecfg.batch_size))
    finally:
        if bar is not None:
            bar.close()
    disc = ((eps_s["c"] - ref["probe_eps"]) ** 2).mean(axis=(2, 3, 4))  # (N, J)
    cond = condition_discrepancy(eps_s["c"], eps_s["u"], ref["probe_eps"], ref["probe_eps_uncond"])  # (N, J)
    guided = guided_discrepancy(eps_s["c"], eps_s["u"], ref["probe_eps"], ref["probe_eps_uncond"], args["guidance"])
    result = {
        "format": "aria-eval/1",
        "student": str(folder),
        "teacher": str(teacher.path) + (f" ({teacher.subfolder})" if teacher.subfolder else ""),
        "probe": {"digest": probe.digest, "seed": ecfg.seed, "images": len(probe.prompt_ids),
                  "timesteps": probe.timesteps.tolist(), "sample_prompts": len(ids),
                  "sample_steps": ecfg.sample_steps, "guidance_scale": args["guidance"]},
    }
    per_probe = {"discrepancy": disc, "cond_discrepancy": cond, "guided_discrepancy": guided}
    result.update(score(bundle, judge, probe.prompt_ids, per_probe, ids, s_px, decode(ref["samples"])))
    result["regions"] = region_table(bundle, probe.prompt_ids, disc, cond)
    return result


def score(bundle, judge, probe_ids, per_probe: dict, sample_ids, student_px, teacher_px) -> dict:
    """Per group (each regime, each concept family or prompts-file group, ``all``): the mean of each
    ``per_probe`` metric (name -> (N, J) array: probe, condition-specific and guided discrepancy; the
    probe discrepancy, ``discrepancy``, also per timestep), pixel MSE and, in a world, judge metrics."""
    world, combos = world_of(bundle), items_of_pool(bundle)
    if combos is not None:
        s_read, t_read = judge_readings(judge, student_px), judge_readings(judge, teacher_px)
    regimes = bundle.regime_of_prompt
    families = None if world is None else world.family_of(combos)
    names = () if world is None else world.family_names
    labels, label_names = getattr(bundle, "group_of_prompt", None), getattr(bundle, "group_names", ())

    def groups(ids):
        return _groups(None if regimes is None else regimes[ids], len(ids),
                       None if families is None else families[ids], names,
                       None if labels is None else np.asarray(labels)[ids], label_names)

    p_groups, s_groups = groups(probe_ids), groups(sample_ids)
    out = {"metrics": {}, "counts": {}, "attributes": {}, "by_timestep": {}}
    for g, pm in p_groups.items():
        m = {name: float(values[pm].mean()) for name, values in per_probe.items()}
        out["by_timestep"][g] = per_probe["discrepancy"][pm].mean(0).tolist()
        sm = s_groups.get(g, np.zeros(len(sample_ids), bool))
        if sm.any():
            m["pixel_mse"] = float(((student_px[sm] - teacher_px[sm]) ** 2).mean())
            if combos is not None:
                jm = judge_metrics(world, combos[sample_ids], s_read, t_read, sm)
                out["attributes"][g] = jm.pop("attributes")
                m.update(jm)
        out["metrics"][g] = m
        out["counts"][g] = {"probes": int(pm.sum()), "prompts": int(sm.sum())}
    return out


def write_eval(result: dict, out: Path) -> dict:
    """eval.json, eval.md and region_discrepancy.png in ``out``; returns the paths. Each is written to a
    temporary name first and renamed once all three are written, eval.json (the result) last; a failed
    write leaves none of them (a UserError naming ``out``)."""
    out = Path(out)
    final = {"markdown": out / "eval.md", "plot": out / "region_discrepancy.png", "json": out / "eval.json"}
    tmp = {k: out / f".{os.getpid()}.tmp.{p.name}" for k, p in final.items()}  # suffix kept: the plot's format
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp["markdown"].write_text(report.eval_markdown(result))
        report.plot_region_discrepancy(result, tmp["plot"])
        tmp["json"].write_text(json_text(result))
        for key in ("markdown", "plot", "json"):
            os.replace(tmp[key], final[key])
    except OSError as err:
        discard(*tmp.values())
        if created:
            try:
                out.rmdir()
            except OSError:
                pass
        raise UserError(f"--out {out}: cannot write the evaluation ({err.strerror or err})") from err
    return final
