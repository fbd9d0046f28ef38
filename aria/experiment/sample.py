"""``aria sample``: a PNG grid of DDIM samples from an exported student, next to its teacher.

One row per prompt: the student's sample, then (with ``--teacher``) the teacher's from the same
initial noise. The text encoder, scheduler and guidance scale come from the run config stored in
the student's ``aria.json`` (written by the engine at export); latent models are decoded with
the VAE of the Stable Diffusion folder named there.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from aria.errors import UserError, folder_problem, format_validation_error

DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")  # as encoder.device


@torch.no_grad()
def ddim_sample(unet, context: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float,
                scheduler_config: dict) -> torch.Tensor:
    """DDIM (eta 0) with classifier-free guidance from ``noise``; returns the final sample (no clamping)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    p = next(unet.parameters())
    x = noise.to(p.device, torch.float32) * sched.init_noise_sigma
    ctx = torch.cat([uncond.expand_as(context), context]).to(p.device, p.dtype)
    for t in sched.timesteps:
        e_u, e_c = unet(torch.cat([x, x]).to(p.dtype), t.to(p.device), encoder_hidden_states=ctx).sample.float().chunk(2)
        x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return x


def read_card(model: Path) -> dict:
    card = Path(model) / "aria.json"
    if not card.is_file():
        raise UserError(f"--model {model}: no aria.json (not a student exported by aria run)")
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = " ".join(str(err).split())[:160]
        raise UserError(f"--model {model}: aria.json is not valid JSON ({type(err).__name__}: {reason})") from err
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("scheduler"), dict):
        raise UserError(f"--model {model}: aria.json lacks the run config (exported by an older aria?)")
    return data


def card_config(model: Path, card: dict):
    """The run config stored in a student's ``aria.json`` (validated: a UserError names a bad one)."""
    from pydantic import ValidationError

    from aria.config import RunConfig

    try:
        return RunConfig.model_validate(card["config"])
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=f"--model {model}: aria.json config")) from err


def check_options(prompts: list[str], steps: int, seed: int, guidance: float | None, device: str) -> None:
    """The command-line values of ``aria sample``, before anything is loaded."""
    from aria.config import SEED_MAX

    if not prompts:
        raise UserError("--prompt: give at least one prompt")
    blank = next((i for i, p in enumerate(prompts) if not p.strip()), None)
    if blank is not None:
        raise UserError(f"--prompt {prompts[blank]!r} (number {blank + 1}) is blank: give the text to draw "
                        f"(the empty condition is sampled by the guidance anyway)")
    if not 1 <= steps <= 1000:
        raise UserError(f"--steps {steps}: expected 1 to 1000")
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"--seed {seed}: expected 0 to 2^63 - 1")
    if guidance is not None and not (math.isfinite(guidance) and 0 <= guidance <= 1e3):
        raise UserError(f"--guidance {guidance}: expected a finite scale from 0 to 1000")
    if not DEVICE.match(device):
        raise UserError(f"--device {device!r}: expected auto, cpu, mps, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    elif device == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise UserError("--device mps: MPS is not available here")


def load_unet(folder: Path, what: str, device):
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    if (folder / "unet" / "config.json").is_file() and not (folder / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise UserError(f"{what} {folder}: not a diffusers UNet folder (no config.json)")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
    except Exception as err:
        raise UserError(f"{what} {folder}: cannot load a UNet2DConditionModel ({str(err).splitlines()[0]})") from err
    return unet.to(device).eval().requires_grad_(False)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) in [-1, 1] -> uint8 (n, H, W, 3)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    h, w = rows[0][0].shape[:2]
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    out = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = img
    return out


def sample_grid(model: Path, prompts: list[str], out: Path, teacher: Path | None = None, steps: int = 25,
                seed: int = 0, guidance: float | None = None, device: str = "auto", encoder=None) -> Path:
    """Write the grid; ``encoder`` replaces the one the run config names (tests)."""
    from aria.data.encoders import build_encoder, resolve_device

    check_options(prompts, steps, seed, guidance, device)
    out, image_format = check_out(out)  # before any model is loaded or sampled
    if not (Path(model) / "aria.json").is_file() and (Path(model) / "student" / "aria.json").is_file():
        model = Path(model) / "student"  # a run's output_dir
    card = read_card(model)
    config = card_config(model, card)
    device = resolve_device(device)
    student = load_unet(model, "--model", device)
    models = [student] + ([load_unet(teacher, "--teacher", device)] if teacher is not None else [])
    for m in models[1:]:
        for key in ("in_channels", "sample_size", "cross_attention_dim"):
            if m.config[key] != student.config[key]:
                raise UserError(f"--teacher: {key} {m.config[key]} differs from the student's {student.config[key]}")
    encoder = encoder or build_encoder(config.encoder, device=device)
    context = torch.as_tensor(encoder.encode_tokens(prompts))
    uncond = torch.as_tensor(encoder.encode_tokens([""]))
    c = student.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), c.in_channels, size, size), generator=gen)
    scale = config.teacher.guidance_scale if guidance is None else guidance
    decode = _decoder(config, device)
    columns = [to_uint8(decode(ddim_sample(m, context, uncond, noise, steps, scale, card["scheduler"]))) for m in models]
    image = grid([[col[i] for col in columns] for i in range(len(prompts))])
    from PIL import Image

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:  # a temporary file renamed: a failed write (full disk) leaves no partial image
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp, format=image_format)
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write the grid ({err.strerror or err})") from err
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    return out


def check_out(out: Path) -> tuple[Path, str]:
    """(``out``, its image format): an image file name whose folder is, or can be made, writable."""
    from PIL import Image

    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder (give an image file name, e.g. grid.png)")
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise UserError(f"--out {out}: unknown image type {out.suffix or '(no extension)'!r} (use .png)")
    problem = folder_problem(out.parent)
    if problem:
        raise UserError(f"--out {out}: its folder {out.parent} {problem}")
    return out, image_format


def _decoder(config, device):
    """Latents -> pixels with the SD folder's VAE (identity for pixel-space models)."""
    if not config.teacher.subfolder:
        return lambda x: x
    from diffusers import AutoencoderKL

    folder = Path(config.teacher.path) / "vae"
    if not folder.is_dir():
        raise UserError(f"the student is a latent model but its teacher's VAE folder {folder} is missing")
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True).to(device).eval()

    @torch.no_grad()
    def decode(z):
        return vae.decode(z.to(device, vae.dtype) / vae.config.scaling_factor).sample.float()
    return decode
