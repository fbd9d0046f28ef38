"""Teacher loading: the shipped world teacher, a diffusers UNet folder or a Stable Diffusion folder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from aria.errors import UserError

# the teacher each embedded world ships (by ``data.source``; a path, not an import: models and world are sibling
# stages). A run's teacher follows its world (``teacher_root``): callers pass ``source=config.data.source``;
# SHIPPED_TEACHER (the shapes world's, v1) is read by a caller that names no world and sets no teacher.path.
_ASSETS = Path(__file__).resolve().parents[1] / "world" / "assets"
SHIPPED_TEACHERS = {"shapes": _ASSETS / "teacher", "concepts": _ASSETS / "concepts-teacher"}
SHIPPED_TEACHER = SHIPPED_TEACHERS["shapes"]


def shipped_teacher(source: str | None) -> Path:
    """The teacher folder the world ``source`` (a ``data.source``) ships (``SHIPPED_TEACHERS``): ``shapes`` ->
    assets/teacher, ``concepts`` -> assets/concepts-teacher; ``None`` (a caller that names no world):
    ``SHIPPED_TEACHER``. ``files`` ships none: a one-line UserError naming teacher.path."""
    if source is None:
        return SHIPPED_TEACHER
    if source not in SHIPPED_TEACHERS:
        raise UserError(f"teacher.path is not set and data.source {source!r} ships no teacher: set teacher.path to "
                        f"a diffusers UNet folder (or a Stable Diffusion folder with teacher.subfolder: unet)")
    return SHIPPED_TEACHERS[source]


def teacher_root(teacher_config, source: str | None = None) -> Path:
    """The folder the teacher is read from: ``teacher.path``, else the teacher of the world ``source``
    (``shipped_teacher``)."""
    if teacher_config.path is not None:
        return Path(teacher_config.path).expanduser()
    return shipped_teacher(source)


def describe_teacher(teacher_config, source: str | None = None) -> str:
    """What a setup line names: ``teacher.path``, or which world's shipped teacher and its folder."""
    if teacher_config.path is not None:
        return str(teacher_config.path)
    return f"the shipped {source or 'shapes'} world teacher ({shipped_teacher(source)})"


@dataclass
class Teacher:
    """The frozen teacher UNet with what training needs around it (``vae`` only for latent teachers)."""

    unet: Any  # UNet2DConditionModel, eval, frozen
    vae: Any  # AutoencoderKL or None (pixel-space teacher)
    latent: bool
    sample_size: int
    in_channels: int
    scheduler_config: dict
    path: Path  # the folder given (SD root when subfolder is set)
    subfolder: str | None = None

    def pixel_codec(self):
        """(encode, decode) between pixels in [-1, 1] and the teacher's space: (None, identity) for a
        pixel-space teacher, the VAE (latent mean x scaling factor) for a latent one; numpy in, numpy out."""
        if not self.latent:
            return None, lambda x: x
        vae, sf = self.vae, self.vae.config.scaling_factor

        @torch.no_grad()
        def encode(x):
            dev = next(vae.parameters())
            return np.concatenate([(vae.encode(torch.from_numpy(x[i:i + 16]).to(dev)).latent_dist.mean * sf)
                                   .float().cpu().numpy() for i in range(0, len(x), 16)])

        @torch.no_grad()
        def decode(z):
            dev = next(vae.parameters())
            return np.concatenate([vae.decode(torch.from_numpy(z[i:i + 16]).to(dev) / sf).sample.float().cpu().numpy()
                                   for i in range(0, len(z), 16)])
        return encode, decode


def teacher_identity(teacher_config, source: str | None = None, loaded: Teacher | None = None) -> dict:
    """What a run records of the teacher it distils from (its checkpoints, the student's card): ``teacher``, as
    the setup line names it (``describe_teacher``; a teacher handed in, ``loaded``: its folder), and ``weights``,
    the sha256 (16 hex) of the weight files in the folder its UNet is read from (file bytes:
    ``aria.files.folder_weights_digest``), None where that folder holds none (a teacher built in memory)."""
    from aria.files import folder_weights_digest

    if loaded is not None:
        name, root, sub = str(loaded.path), Path(loaded.path), loaded.subfolder
    else:
        name, root = describe_teacher(teacher_config, source), teacher_root(teacher_config, source)
        sub = teacher_config.subfolder
    return {"teacher": name, "weights": folder_weights_digest(root / sub if sub else root)}


def _check_model_folder(folder: Path, class_name: str) -> dict:
    """Validate a diffusers model folder; return from_pretrained keyword arguments for its weights."""
    if not folder.is_dir():
        raise UserError(f"{class_name} folder {folder} does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = " (a Stable Diffusion folder? set teacher.subfolder: unet)" if (folder / "unet").is_dir() else ""
        raise UserError(f"{folder} is not a diffusers model folder (no config.json){hint}")
    try:
        found = json.loads(config_file.read_text(encoding="utf-8")).get("_class_name")
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise UserError(f"{config_file} is not a valid JSON config ({err})") from err
    if found != class_name:
        raise UserError(f"{folder} holds a {found!r} model, expected {class_name}")
    for ext, safe in ((".safetensors", True), (".bin", False)):  # plain weights before variants (fp16, ...)
        for weights in sorted(folder.glob(f"diffusion_pytorch_model*{ext}*"),
                              key=lambda f: (f.name.count("."), f.name)):
            variant = re.fullmatch(rf"diffusion_pytorch_model(?:\.(\w+))?{re.escape(ext)}(?:\.index\.json)?",
                                   weights.name)
            if variant:  # .bin is read by diffusers with torch.load(weights_only=True): no code runs
                return {"use_safetensors": safe, "variant": variant.group(1)}
    raise UserError(f"{folder} has no weights (diffusion_pytorch_model.safetensors)")


def _load_pretrained(cls, folder: Path, dtype) -> nn.Module:
    from diffusers.utils import is_accelerate_available

    kwargs = _check_model_folder(folder, cls.__name__)
    # without accelerate, diffusers' default low_cpu_mem_usage=True only logs a multi-line warning
    # on stderr (breaking one-line errors) and falls back to False: ask for what it will do
    kwargs["low_cpu_mem_usage"] = is_accelerate_available()
    try:
        model = cls.from_pretrained(folder, local_files_only=True, torch_dtype=dtype, **kwargs)
    except Exception as err:  # corrupt or mismatched weights: one line naming the folder
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"could not load {cls.__name__} from {folder}: {first}") from err
    return model.eval().requires_grad_(False)


def _scheduler_config(candidates: Iterable[Path]) -> dict:
    """DDPMScheduler config from the first scheduler_config.json found, else DDPM defaults."""
    from diffusers import DDPMScheduler

    for file in candidates:
        if file.is_file():
            try:
                raw = json.loads(file.read_text(encoding="utf-8"))
            except ValueError as err:
                raise UserError(f"{file} is not valid JSON ({err})") from err
            return dict(DDPMScheduler.from_config(raw).config)
    return dict(DDPMScheduler().config)


def check_teacher(teacher_config, source: str | None = None) -> dict:
    """Validate the folders ``load_teacher`` reads, without loading any weights (a fail-fast check
    before heavy work); returns the UNet's ``config.json`` as a dict. ``source``: the run's
    ``data.source``, whose world's teacher is read when ``teacher.path`` is unset (``teacher_root``)."""
    root = teacher_root(teacher_config, source)
    if teacher_config.path is None and not root.is_dir():
        raise UserError(f"the shipped world teacher is missing at {root} (data.source {source or 'shapes'!r})")
    if not root.is_dir():
        raise UserError(f"teacher.path {root} {'is not a folder' if root.exists() else 'does not exist'}")
    sub = teacher_config.subfolder
    unet_dir = root / sub if sub else root
    try:
        _check_model_folder(unet_dir, "UNet2DConditionModel")
        if sub:
            if not (root / "vae").is_dir():
                raise UserError(f"teacher {root} (subfolder {sub!r}) has no sibling vae folder")
            if not (root / "scheduler" / "scheduler_config.json").is_file():
                raise UserError(f"teacher {root} (subfolder {sub!r}) has no scheduler/scheduler_config.json")
            _check_model_folder(root / "vae", "AutoencoderKL")
    except UserError as err:
        raise UserError(f"teacher.path: {err}") from None
    config = json.loads((unet_dir / "config.json").read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise UserError(f"teacher.path: {unet_dir / 'config.json'} is not a JSON object")
    return config


def load_teacher(teacher_config, device="cpu", dtype=torch.float32, source: str | None = None) -> Teacher:
    """Load the frozen teacher: shipped world teacher, a diffusers UNet folder or an SD folder's UNet.
    Without ``teacher.path`` the teacher is the one the world ``source`` (the run's ``data.source``)
    ships: pass it, or the shapes world's is read (``shipped_teacher``); ``files`` needs teacher.path.

    With ``subfolder`` set (Stable Diffusion layout) the sibling ``vae`` and
    ``scheduler/scheduler_config.json`` are required; a plain UNet folder may carry its own
    ``scheduler_config.json`` (DDPM defaults otherwise).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    check_teacher(teacher_config, source)
    root = teacher_root(teacher_config, source)
    sub = teacher_config.subfolder
    unet = _load_pretrained(UNet2DConditionModel, root / sub if sub else root, dtype).to(device)
    vae, schedulers = None, [root / "scheduler_config.json"]
    if sub:
        if not (root / "vae").is_dir():
            raise UserError(f"teacher {root} (subfolder {sub!r}) has no sibling vae folder")
        if not (root / "scheduler" / "scheduler_config.json").is_file():
            raise UserError(f"teacher {root} (subfolder {sub!r}) has no scheduler/scheduler_config.json")
        vae = _load_pretrained(AutoencoderKL, root / "vae", dtype).to(device)
        schedulers = [root / "scheduler" / "scheduler_config.json"]
    size = unet.config.sample_size
    return Teacher(unet=unet, vae=vae, latent=vae is not None,
                   sample_size=int(size if isinstance(size, int) else size[0]),
                   in_channels=int(unet.config.in_channels), scheduler_config=_scheduler_config(schedulers),
                   path=root, subfolder=sub)
