"""Training and judged evaluation of the embedded world's teacher (architecture: ``aria.world.teacher``).

Training: DDPM epsilon prediction, 1000 steps, ``squaredcos_cap_v2`` betas (the cosine schedule
keeps more signal at low resolution than the linear one), sample clipping to [-1, 1]. Each step
draws items uniformly over ALL items of the world (unseen ones included), a random pool prompt
of each, and renders them with a fresh seed; the prompt is replaced by ``""`` with p=0.1 (CFG).
AdamW, warm-up then cosine decay over max(step/steps, elapsed/time limit), EMA of the weights
(the EMA is what is saved), bf16 autocast on CUDA, optional ``torch.compile``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aria.world import shapes
from aria.world.worlds import world_of_pool
from aria.world.teacher import CFG_DROPOUT, SCHEDULER_CONFIG, UNET_CONFIG, ComboPrompts, build_unet, make_scheduler, \
    pool_texts, sample_ddim


class Contexts:
    """Token states of pool prompts: precomputed on the device when they fit, else encoded per batch."""

    def __init__(self, encoder, pool, budget_bytes: float | None = None):
        self.encoder, self.pool = encoder, pool
        self.uncond = encoder.token_states([""])
        n = len(pool)
        need = n * encoder.max_length * encoder.dim * self.uncond.element_size()
        if budget_bytes is None:
            dev = torch.device(encoder.device)
            budget_bytes = 0.25 * torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else 2e9
        self.table = None
        if need <= budget_bytes:
            chunks = [encoder.token_states(texts) for texts in pool.iter_chunks(8192)]
            self.table = torch.cat(chunks)

    def __call__(self, ids: np.ndarray, drop: np.ndarray) -> torch.Tensor:
        if self.table is not None:
            ctx = self.table[torch.as_tensor(ids, device=self.table.device)]
        else:
            ctx = self.encoder.token_states(pool_texts(self.pool, ids))
        mask = torch.as_tensor(drop, device=ctx.device)[:, None, None]
        return torch.where(mask, self.uncond.expand_as(ctx), ctx)


def _batch(step: int, seed: int, batch_size: int, prompts: ComboPrompts, world):
    rng = np.random.default_rng([seed, step, 0x7EAC])
    combos = rng.integers(world.num_items, size=batch_size)  # every item, unseen ones included
    ids = prompts.draw(combos, rng)
    images = shapes.to_tensor_range(world.render(combos, seed=int(rng.integers(2**62))))
    drop = rng.random(batch_size) < CFG_DROPOUT
    return torch.from_numpy(images), ids, drop


class _StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is that step's batch: a pure function of (seed, step), rendered in a worker."""

    def __init__(self, seed: int, batch_size: int, prompts: ComboPrompts, steps: int, world):
        self.seed, self.batch_size, self.prompts, self.steps, self.world = seed, batch_size, prompts, steps, world

    def __len__(self):
        return self.steps

    def __getitem__(self, step: int):
        images, ids, drop = _batch(step, self.seed, self.batch_size, self.prompts, self.world)
        return images, torch.from_numpy(ids), torch.from_numpy(drop)


def _feed(dataset: _StepBatches, workers: int):
    """Batches for steps 0, 1, ... in order; ``workers`` processes render ahead (0: in-process)."""
    return iter(torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None, persistent_workers=False))


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_teacher(config, out_dir: Path, steps: int = 20_000, batch_size: int = 256, lr: float = 1e-3,
                  device: str = "auto", time_limit_s: float | None = None, compile: bool = False,
                  ema_decay: float = 0.999, warmup: int = 200, seed: int = 0, workers: int | None = None,
                  evaluate: bool = True, eval_steps: int = 25, context_budget_bytes: float | None = None,
                  judge_path: Path | None = None, unet_config: dict | None = None, eval_guidance: float | None = None,
                  log: Callable[[str], None] | None = None, out_name: str = "teacher folder",
                  device_name: str = "device") -> dict:
    """Train the world teacher; save the EMA weights (fp16 safetensors), README.md, training.json.

    ``config`` is a RunConfig (its data.world, data.cache_dir and encoder sections are used).
    Stops after ``steps`` or ``time_limit_s`` seconds of training, whichever comes first. The judged
    evaluation samples with ``eval_guidance`` (default ``teacher.guidance_scale``). Checked before any
    work: ``out_dir``, a new or empty folder that can be written (the save replaces it whole: whatever it held
    would be lost), and ``device``; their one-line errors name them ``out_name`` and ``device_name`` (the CLI
    passes its options). The teacher is saved atomically (``save_teacher``).
    """
    from aria.devices import check_device
    from aria.errors import UserError
    from aria.files import check_output_folder

    log = log or (lambda msg: None)
    check_output_folder(out_dir, out_name)  # before training: a bad folder or device never costs the teacher
    if Path(out_dir).is_dir() and any(Path(out_dir).iterdir()):
        raise UserError(f"{out_name} {out_dir}: is not empty (give a new folder)")
    check_device(device, device_name)
    run = _setup(config, device, seed, steps, batch_size, lr, compile, workers, context_budget_bytes, unet_config, log)
    done, history, wall = _train_loop(run, steps, lr, warmup, ema_decay, time_limit_s, log)
    report = _report(run, done, history, wall, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                     unet_config=unet_config)
    if evaluate:
        guidance = config.teacher.guidance_scale if eval_guidance is None else eval_guidance
        report["evaluation"] = _judged_evaluation(run, judge_path, guidance, eval_steps, seed, log)
    return save_teacher(run.ema, out_dir, report)


# -- the steps of ``train_teacher`` ----------------------------------------------------------------

@dataclass
class _Run:
    """A teacher training's data, encoder, models and optimiser, as ``_setup`` made them."""
    device: str
    cuda: bool
    encoder: object
    pool: object
    contexts: Contexts
    unet: torch.nn.Module
    ema: torch.nn.Module  # the EMA of ``unet``'s weights: what is evaluated and saved
    model: torch.nn.Module  # ``unet``, compiled or not: what the steps call
    n_params: int
    sched: object
    opt: torch.optim.Optimizer
    gen: torch.Generator
    feed: object  # the step batches; the training loop drops it (shutting the workers down)


def _setup(config, device: str, seed: int, steps: int, batch_size: int, lr: float, compile: bool,
           workers: int | None, context_budget_bytes: float | None, unet_config: dict | None, log) -> _Run:
    """Seed; build the encoder, the pool's prompts and contexts, the UNet and its EMA, the optimiser
    and the batch feed (``workers`` render ahead; default: up to 12 on CUDA, none on CPU)."""
    from aria.devices import resolve_device

    t_setup = time.time()
    device = resolve_device(device)
    torch.manual_seed(seed)
    cuda = device.startswith("cuda")
    encoder, pool, prompts, contexts = _data(config, device, context_budget_bytes)
    unet = build_unet(**(unet_config or {})).to(device).train()
    ema = build_unet(**(unet_config or {})).to(device).eval().requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    n_params = sum(p.numel() for p in unet.parameters())
    sched = make_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    model = torch.compile(unet) if compile else unet
    if workers is None:
        workers = min(12, (os.cpu_count() or 2) - 2) if cuda else 0
    feed = _feed(_StepBatches(seed, batch_size, prompts, steps, world_of_pool(pool)), max(0, workers))
    gen = torch.Generator(device=device).manual_seed(seed)
    log(f"teacher: {n_params / 1e6:.2f} M parameters, device {device}, pool {len(pool)} prompts, "
        f"contexts {'precomputed' if contexts.table is not None else 'per batch'}, setup {time.time() - t_setup:.1f}s")
    return _Run(device=device, cuda=cuda, encoder=encoder, pool=pool, contexts=contexts, unet=unet, ema=ema,
                model=model, n_params=n_params, sched=sched, opt=opt, gen=gen, feed=feed)


def _data(config, device: str, context_budget_bytes: float | None):
    """The encoder, the world pool, its prompts by item (every one must be covered) and contexts."""
    from aria.data.bundle import embedded_world_pool
    from aria.data.encoders import build_encoder
    from aria.errors import UserError

    pool = embedded_world_pool(config)
    world = world_of_pool(pool)
    prompts = ComboPrompts(np.asarray(pool.meta(world.meta_key)), num_combos=world.num_items)
    if len(prompts.covered) < world.num_items:
        raise UserError(f"the {world.name} pool covers {len(prompts.covered)} of {world.num_items} items: "
                        "raise its num_prompts")
    encoder = build_encoder(config.encoder, device)
    return encoder, pool, prompts, Contexts(encoder, pool, context_budget_bytes)


def _train_loop(run: _Run, steps: int, lr: float, warmup: int, ema_decay: float, time_limit_s: float | None,
                log) -> tuple[int, list[dict], float]:
    """Train until ``steps`` or ``time_limit_s``; log the mean loss every 200 steps. Returns the steps
    made, the loss history and the training wall time (s)."""
    device, sched, opt, gen = run.device, run.sched, run.opt, run.gen
    params, ema_params = list(run.unet.parameters()), list(run.ema.parameters())
    losses, history, t0, step = [], [], time.time(), 0
    try:
        while step < steps:
            elapsed = time.time() - t0
            if time_limit_s is not None and elapsed >= time_limit_s:
                break
            progress = max(step / steps, elapsed / time_limit_s if time_limit_s else 0.0)
            for g in opt.param_groups:
                g["lr"] = lr * _lr_factor(progress, step, warmup)
            x0, ids, drop = next(run.feed)
            x0 = x0.to(device, non_blocking=True)
            ctx = run.contexts(ids.numpy(), drop.numpy())
            noise = torch.randn(x0.shape, generator=gen, device=device)
            t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen, device=device)
            xt = sched.add_noise(x0, noise, t)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.cuda):
                pred = run.model(xt, t, encoder_hidden_states=ctx.float()).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            d = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - d)
            losses.append(loss.detach())
            step += 1
            if step % 200 == 0 or step == steps:
                mean = float(torch.stack(losses).mean())
                losses = []
                history.append({"step": step, "loss": mean, "time_s": round(time.time() - t0, 1)})
                log(f"step {step} loss {mean:.4f} {step / (time.time() - t0):.1f} it/s")
    finally:
        run.feed = None  # shuts the workers down
    if losses:
        history.append({"step": step, "loss": float(torch.stack(losses).mean()), "time_s": round(time.time() - t0, 1)})
    return step, history, time.time() - t0


def _report(run: _Run, steps: int, history: list[dict], wall: float, *, batch_size: int, lr: float,
            ema_decay: float, seed: int, unet_config: dict | None) -> dict:
    """training.json's content: settings, speed, device, model, encoder, pool and loss history."""
    return {"world": world_of_pool(run.pool).name, "steps": steps, "batch_size": batch_size, "lr": lr,
            "ema_decay": ema_decay, "seed": seed,
            "train_wall_s": round(wall, 1), "steps_per_s": round(steps / max(wall, 1e-9), 2),
            "device": torch.cuda.get_device_name(run.device) if run.cuda else platform.processor() or "cpu",
            "parameters": run.n_params, "encoder": run.encoder.identity, "pool_hash": run.pool.content_hash,
            "pool_size": len(run.pool), "context_tokens": run.encoder.max_length,
            "unet_config": {**UNET_CONFIG, **(unet_config or {})}, "scheduler_config": SCHEDULER_CONFIG,
            "history": history}


def _judged_evaluation(run: _Run, judge_path: Path | None, guidance: float, steps: int, seed: int, log) -> dict:
    """``evaluate_teacher`` of the EMA weights with the judge at ``judge_path``, timed and logged."""
    from aria.world.judge import Judge

    t1 = time.time()
    judge = Judge.load(judge_path or world_of_pool(run.pool).judge_dir)
    evaluation = evaluate_teacher(run.ema, run.pool, run.encoder, judge, guidance=guidance,
                                  steps=steps, seed=seed)
    evaluation["wall_s"] = round(time.time() - t1, 1)
    log(f"judged fully correct: {evaluation['accuracy']:.3f}")
    return evaluation


def save_teacher(unet, out_dir: Path, report: dict) -> dict:
    """fp16 safetensors UNet + scheduler_config.json + training.json + README.md model card, written in a
    sibling temporary folder renamed into ``out_dir`` (as ``aria.models.export.export_student`` writes the
    student): an interrupted or failed save leaves no half-written teacher, and a previous folder there is
    replaced only once the new one is complete. A failed write is a one-line UserError naming ``out_dir``."""
    from diffusers import UNet2DConditionModel

    from aria.errors import UserError
    from aria.files import folder_written_whole

    out_dir = Path(out_dir)
    try:
        with folder_written_whole(out_dir) as tmp:
            half = UNet2DConditionModel.from_config(unet.config)
            half.load_state_dict({k: v.detach().float().cpu() for k, v in unet.state_dict().items()})
            half.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
            make_scheduler().save_pretrained(tmp)
            weights = tmp / "diffusion_pytorch_model.safetensors"
            report = {**report, "weights_mb": round(weights.stat().st_size / 1e6, 2)}
            (tmp / "training.json").write_text(json.dumps(report, indent=1, default=str))
            (tmp / "README.md").write_text(model_card(report))
    except OSError as err:
        raise UserError(f"teacher folder {out_dir}: cannot be written ({err.strerror or err})") from err
    return report


def model_card(report: dict) -> str:
    ev = report.get("evaluation") or {}
    acc = (f"{100 * ev['accuracy']:.1f}% of {ev['prompts']} prompts (one per item, unseen included) judged "
           f"fully correct; per attribute: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in ev["per_attribute"].items())
           + f" ({ev['sample_steps']} DDIM steps, guidance {ev['guidance']})") if ev else "not evaluated"
    families = "".join(f"\n  - {name}: {100 * v:.1f}%" for name, v in (ev.get("by_family") or {}).items())
    tokens = report.get("context_tokens", 32)
    return f"""# aria world teacher ({report.get('world', 'shapes')})

A pixel-space `diffusers.UNet2DConditionModel` (32x32 RGB) for aria's procedural {report.get('world', 'shapes')} world,
conditioned on all-MiniLM-L6-v2 token states ({tokens} tokens, 384-d; `""` is the unconditional context).
DDPM epsilon prediction, 1000 steps, `squaredcos_cap_v2` (see `scheduler_config.json`).
Weights: the EMA (decay {report['ema_decay']}), stored in fp16 ({report.get('weights_mb')} MB).

- parameters: {report['parameters']:,}
- training: {report['steps']} steps, batch {report['batch_size']}, lr {report['lr']}, seed {report['seed']}
- wall time: {report['train_wall_s']} s ({report['steps_per_s']} steps/s) on {report['device']}
- encoder: `{report['encoder']}`
- judged accuracy: {acc}{families}

Config (`config.json`): {json.dumps(report['unet_config'])}

Trained with `aria teacher train`; `training.json` holds the loss history.
"""


def evaluate_teacher(unet, pool, encoder, judge=None, guidance: float = 2.0, steps: int = 25,
                     prompts_per_combo: int = 1, seed: int = 0, batch_size: int = 576,
                     scheduler_config: dict | None = None, combos: np.ndarray | None = None) -> dict:
    """Sample random pool prompts of EVERY item of the pool's world (or ``combos``) and judge all attributes.

    ``accuracy`` is the share of samples whose attributes are all read back right by the world's
    judge (the quality bar is 0.9); ``by_family`` the same per concept family (world v2).
    """
    from aria.world.judge import Judge

    world = world_of_pool(pool)
    judge = judge or Judge.load(world.judge_dir)
    rng = np.random.default_rng([seed, 0xE7A1])
    prompts = ComboPrompts(np.asarray(pool.meta(world.meta_key)), num_combos=world.num_items)
    combos = np.arange(world.num_items) if combos is None else np.asarray(combos, np.int64)
    combos = np.repeat(combos, prompts_per_combo)
    ids = prompts.draw(combos, rng)
    p = next(unet.parameters())
    uncond = encoder.token_states([""])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = []
    was_training = unet.training
    unet.eval()
    for s in range(0, len(ids), batch_size):
        ctx = encoder.token_states(pool_texts(pool, ids[s:s + batch_size]))
        noise = torch.randn((len(ctx), 3, 32, 32), generator=gen)
        x = sample_ddim(unet, ctx, uncond, steps, guidance, noise=noise.to(p.device), scheduler_config=scheduler_config)
        images.append(shapes.from_tensor_range(x.float().cpu().numpy()))
    unet.train(was_training)
    ok = judge.correct(np.concatenate(images), combos)
    families = world.family_of(combos)
    by_family = {} if families is None else {
        name: float(ok["all"][families == f].mean())
        for f, name in enumerate(world.family_names) if (families == f).any()}
    return {"accuracy": float(ok["all"].mean()), "per_attribute": {a: float(ok[a].mean()) for a in world.attributes},
            "by_family": by_family, "prompts": int(len(ids)), "sample_steps": steps, "guidance": guidance,
            "failed_combos": [int(c) for c in combos[~ok["all"]][:50]],
            "correct": ok["all"].astype(np.int8).tolist() if combos.size == world.num_items else None}
