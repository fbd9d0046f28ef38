"""``aria sample``: a labelled PNG grid of DDIM samples from an exported student, next to its teacher.

One row per prompt, its text beside the row; columns headed "student" and "teacher", the teacher's
sample drawn from the same initial noise. The teacher is the run's own (recorded in the student's
``aria.json``) unless ``--teacher`` names another or ``--no-teacher`` leaves it out. The text
encoder, scheduler, guidance scale and ``backend.cpu_threads`` come from the run config stored in
``aria.json`` (written by the engine at export); latent models are decoded with the VAE of the
Stable Diffusion folder. Sampling is diffusers' ``DDIMScheduler`` loop (``set_timesteps``/``step``)
with classifier-free guidance. Small images are enlarged (nearest neighbour) to at least
``MIN_CELL`` pixels. The grid goes to ``<run folder>/samples/`` under a name that a digest of every
prompt and setting makes its own (``default_out``), or to the file ``--out`` names (replacing one there),
and is written to a temporary file renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from aria.devices import check_device
from aria.errors import UserError, format_validation_error
from aria.files import check_output_file

MIN_CELL = 128  # pixels: a 32x32 world image is drawn 4x
PAD = 4
LABEL_WIDTH = 260  # the prompt column
HEADER_HEIGHT = 26  # the "student" / "teacher" row
FONT_SIZE = 14


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
        e_u, e_c = unet(torch.cat([x, x]).to(p.dtype), t.to(p.device),
                        encoder_hidden_states=ctx).sample.float().chunk(2)
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
    if (not isinstance(data, dict) or not isinstance(data.get("config"), dict)
            or not isinstance(data.get("scheduler"), dict)):
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
    check_device(device, "--device")


def load_unet(folder: Path, what: str, device):
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    if (folder / "unet" / "config.json").is_file() and not (folder / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise UserError(f"{what} {folder}: not a diffusers UNet folder (no config.json)")
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=_accelerate())
    except Exception as err:
        raise UserError(f"{what} {folder}: cannot load a UNet2DConditionModel ({str(err).splitlines()[0]})") from err
    return unet.to(device).eval().requires_grad_(False)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) in [-1, 1] -> uint8 (n, H, W, 3)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _accelerate() -> bool:
    """diffusers' default low_cpu_mem_usage=True needs accelerate; without it diffusers falls back to
    False itself after a five-line warning: ask for what it will do."""
    from diffusers.utils import is_accelerate_available

    return is_accelerate_available()


def _font(size: int = FONT_SIZE):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (FreeType)
    except (TypeError, OSError, ImportError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _wrap(text: str, width: int, measure) -> list[str]:
    """Words of ``text`` in lines of at most ``width`` pixels (a longer word is cut)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if measure(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
        while measure(line) > width and len(line) > 1:  # one word wider than the column
            cut = len(line) - 1
            while cut > 1 and measure(line[:cut]) > width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
    return lines + ([line] if line else [])


def label_image(text: str, width: int, height: int, align: str = "left") -> np.ndarray:
    """``text`` drawn black on white in a (height, width) box, wrapped to the width, cut with an
    ellipsis where it does not fit; uint8 (height, width, 3)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    measure = lambda t: draw.textlength(t, font=font)  # noqa: E731
    step = FONT_SIZE + 4
    lines = _wrap(text, width - 8, measure)
    fits = max(1, (height - 4) // step)
    if len(lines) > fits:
        lines = lines[:fits]
        lines[-1] = lines[-1].rstrip() + "..."
    top = max(2, (height - step * len(lines)) // 2)
    for i, line in enumerate(lines):
        x = 4 if align == "left" else max(0, (width - measure(line)) // 2)
        draw.text((x, top + i * step), line, fill="black", font=font)
    return np.asarray(image)


def enlarge(images: np.ndarray, min_size: int = MIN_CELL) -> np.ndarray:
    """(n, H, W, 3) uint8 enlarged by the smallest integer factor that makes them at least
    ``min_size`` pixels high (nearest neighbour: the pixels stay sharp; a large image is kept)."""
    factor = max(1, -(-min_size // images.shape[1]))
    return images.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else images


def cell_origin(row: int, column: int, cell: int) -> tuple[int, int]:
    """(y, x) of the top-left pixel of image (row, column) in ``labelled_grid``'s output."""
    return HEADER_HEIGHT + PAD + row * (cell + PAD), LABEL_WIDTH + PAD + column * (cell + PAD)


def labelled_grid(columns: list[np.ndarray], prompts: list[str], headers: list[str],
                  min_size: int = MIN_CELL) -> np.ndarray:
    """One row per prompt (its text in the left column), one column per model (``headers`` above):
    ``columns[j][i]`` is model j's image of prompt i, uint8 (H, W, 3), enlarged by ``enlarge``."""
    columns = [enlarge(np.asarray(c), min_size) for c in columns]
    cell = columns[0].shape[1]
    height = HEADER_HEIGHT + PAD + len(prompts) * (cell + PAD)
    width = LABEL_WIDTH + PAD + len(columns) * (cell + PAD)
    out = np.full((height, width, 3), 255, np.uint8)
    for j, header in enumerate(headers):
        _, x = cell_origin(0, j, cell)
        out[:HEADER_HEIGHT, x:x + cell] = label_image(header, cell, HEADER_HEIGHT, align="center")
    for i, prompt in enumerate(prompts):
        y, _ = cell_origin(i, 0, cell)
        out[y:y + cell, :LABEL_WIDTH] = label_image(prompt, LABEL_WIDTH, cell)
        for j, images in enumerate(columns):
            y, x = cell_origin(i, j, cell)
            out[y:y + cell, x:x + cell] = images[i]
    return out


def run_folder(model: Path) -> Path:
    """The run output_dir holding a student: ``model`` itself when it holds ``student/``, else its parent."""
    model = Path(model)
    return model if (model / "student" / "aria.json").is_file() else model.parent


def default_out(model: Path, prompts: list[str], seed: int, settings: dict | None = None) -> Path:
    """``<run folder>/samples/<first prompt>[+N]-seed<seed>-<digest>.png``: the digest (8 hex) covers every
    prompt, the seed and ``settings`` (what else changes the picture: steps, guidance, teacher, device), so a
    grid of other prompts or settings never lands on an earlier one; the same inputs give the same name."""
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9]+", "-", prompts[0]).strip("-").lower()[:48].rstrip("-") or "prompt"
    more = f"+{len(prompts) - 1}" if len(prompts) > 1 else ""
    key = json.dumps({"prompts": list(prompts), "seed": seed, **(settings or {})}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return run_folder(model) / "samples" / f"{slug}{more}-seed{seed}-{digest}.png"


def run_teacher(model: Path, card: dict, config) -> Path:
    """The teacher the run distilled from: its config's ``teacher.path`` (else the path recorded at export);
    without one, the teacher recorded at export (``aria.json``), else the one its world ships
    (``aria.models.teacher.teacher_root``: a run made before the default followed the world recorded another);
    a UserError when none is here."""
    from aria.models.teacher import teacher_root

    recorded = Path(str(card["teacher"])).expanduser() if card.get("teacher") else None
    if config.teacher.path is not None:
        candidates = [Path(config.teacher.path).expanduser(), recorded]
    else:
        try:
            shipped = teacher_root(config.teacher, config.data.source)
        except UserError as err:  # data.source files without teacher.path: no shipped teacher to fall back on
            if recorded is None or not recorded.is_dir():
                raise UserError(f"--model {model}: {err}; or pass --teacher PATH, or --no-teacher") from None
            shipped = None
        candidates = [recorded, shipped]
    for root in candidates:
        if root is not None and root.is_dir():
            return root / config.teacher.subfolder if config.teacher.subfolder else root
    missing = next(r for r in candidates if r is not None)
    raise UserError(f"--model {model}: the run's teacher {missing} is not here (recorded in aria.json): "
                    f"pass --teacher PATH, or --no-teacher for the student alone")


def sample_grid(model: Path, prompts: list[str], out: Path | None = None, teacher: Path | None = None,
                steps: int = 25, seed: int = 0, guidance: float | None = None, device: str = "auto", encoder=None,
                with_teacher: bool = True) -> Path:
    """Write the grid; returns its path. ``teacher`` None: the run's own (``run_teacher``), unless
    ``with_teacher`` is False. ``out`` None: ``default_out``. ``encoder`` replaces the one the run
    config names (tests)."""
    from aria.data.encoders import build_encoder
    from aria.devices import resolve_device, use_cpu_threads

    check_options(prompts, steps, seed, guidance, device)
    if teacher is not None and not with_teacher:
        raise UserError("--teacher and --no-teacher cannot be combined")
    if out is not None:
        out, image_format = check_out(out)  # before any model is loaded or sampled
    given = Path(model)
    if not (Path(model) / "aria.json").is_file() and (Path(model) / "student" / "aria.json").is_file():
        model = Path(model) / "student"  # a run's output_dir
    card = read_card(model)
    config = card_config(model, card)
    if with_teacher and teacher is None:
        teacher = run_teacher(model, card, config)
    device = resolve_device(device)
    scale = config.teacher.guidance_scale if guidance is None else guidance
    if out is None:  # named by everything that changes the picture (the model by its run folder)
        settings = {"steps": steps, "guidance": float(scale), "device": device.partition(":")[0],
                    "teacher": None if teacher is None else str(Path(teacher).expanduser().resolve())}
        out, image_format = check_out(default_out(given, prompts, seed, settings))
    use_cpu_threads(config.backend.cpu_threads)  # the run's setting
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
    decode = _decoder(model, config, device)
    columns = [to_uint8(decode(ddim_sample(m, context, uncond, noise, steps, scale, card["scheduler"])))
               for m in models]
    image = labelled_grid(columns, prompts, ["student", "teacher"][:len(models)])
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
    """(``out``, its image format): an image file name whose folder is, or can be made, writable
    (``aria.files.check_output_file``)."""
    from PIL import Image

    out = Path(out)
    suffixes = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    check_output_file(out, "--out", suffixes, kind="image", example="grid.png", advice="use .png")
    return out, Image.registered_extensions()[out.suffix.lower()]


def _decoder(model: Path, config, device):
    """Latents -> pixels with the VAE beside the student (a pipeline folder) or in the teacher's
    Stable Diffusion folder (identity for pixel-space models)."""
    if not config.teacher.subfolder:
        return lambda x: x
    from diffusers import AutoencoderKL

    folder = Path(model) / "vae"
    if not (folder / "config.json").is_file():
        folder = Path(config.teacher.path) / "vae"
    if not folder.is_dir():
        raise UserError(f"the student is a latent model but its teacher's VAE folder {folder} is missing")
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True,
                                        low_cpu_mem_usage=_accelerate()).to(device).eval()

    @torch.no_grad()
    def decode(z):
        return vae.decode(z.to(device, vae.dtype) / vae.config.scaling_factor).sample.float()
    return decode
