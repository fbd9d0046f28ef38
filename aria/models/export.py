"""Parameter counts, UNets from JSON configs, the random test UNet, and the student export."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from aria.errors import UserError
from aria.models.features import unwrap_module
from aria.models.students import _clean_config


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in unwrap_module(module).parameters())


def unet_from_config_file(path, device: str | torch.device | None = None) -> nn.Module:
    """A randomly initialised ``UNet2DConditionModel`` from a JSON config (``device="meta"``: no memory)."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    if not path.is_file():
        raise UserError(f"UNet config {path} does not exist")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"UNet config {path} is not valid JSON ({err})") from err
    if not isinstance(cfg, dict) or cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise UserError(f"UNet config {path} does not describe a UNet2DConditionModel")
    if device is None:
        return UNet2DConditionModel.from_config(_clean_config(cfg))
    with torch.device(device):
        return UNet2DConditionModel.from_config(_clean_config(cfg))


def random_world_unet(cross_attention_dim: int = 384, sample_size: int = 32, seed: int = 0) -> nn.Module:
    """A tiny random pixel-space (3-channel) SD-shaped UNet with 4 stages, for tests."""
    from diffusers import UNet2DConditionModel

    cfg = dict(sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=[32, 64, 64, 64],
               layers_per_block=2, norm_num_groups=8, attention_head_dim=4, cross_attention_dim=cross_attention_dim,
               down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
               up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config(cfg)


CARD_KEYS = ("teacher", "variant", "teacher_parameters", "strategy", "steps", "data")


def _card_cell(value) -> str:
    if isinstance(value, (dict, list)):
        return "see `aria.json`"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _model_card(facts: dict) -> str:
    rows = "\n".join(f"| {k} | {_card_cell(v)} |" for k, v in facts.items())
    return (f"---\nlibrary_name: diffusers\ntags: [aria, bk-sdm, distillation]\n---\n\n"
            f"# aria student UNet ({facts['variant']})\n\n"
            f"A BK-SDM `{facts['variant']}` student distilled by aria from `{facts['teacher']}` with the "
            f"`{facts['strategy']}` strategy for {facts['steps']} steps. Load it with "
            f"`UNet2DConditionModel.from_pretrained(folder)`.\n\n| fact | value |\n|---|---|\n{rows}\n")


def export_student(student: nn.Module, out_dir, card: dict) -> Path:
    """Write the student (safetensors), ``README.md`` and ``aria.json`` atomically to ``out_dir``."""
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"export_student: card lacks {', '.join(missing)}")
    student, out_dir = unwrap_module(student), Path(out_dir)
    facts = {**{k: card[k] for k in CARD_KEYS}, "student_parameters": parameter_count(student),
             **{k: v for k, v in card.items() if k not in CARD_KEYS}}
    facts = json.loads(json.dumps(facts, default=str))  # Paths etc. as text, same in both files
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        student.save_pretrained(tmp, safe_serialization=True)
        (tmp / "aria.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(facts), encoding="utf-8")
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        try:
            if out_dir.exists():
                out_dir.replace(old / "previous")
            tmp.replace(out_dir)
        except OSError:
            if (old / "previous").exists() and not out_dir.exists():
                (old / "previous").replace(out_dir)  # put the previous export back
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
