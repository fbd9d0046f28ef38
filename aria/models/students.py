"""BK-SDM student configs and builders, and the teacher -> student weight transfer (see package doc)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from aria.errors import UserError
from aria.models.features import unwrap_module

DOWN_TYPES = {"CrossAttnDownBlock2D", "DownBlock2D"}
UP_TYPES = {"CrossAttnUpBlock2D", "UpBlock2D"}
MID_TYPES = {"UNetMidBlock2DCrossAttn", None}
VARIANTS = ("base", "small", "tiny", "channels")
# per-stage config entries that may be lists (one value per down stage)
PER_STAGE_KEYS = ("block_out_channels", "down_block_types", "layers_per_block", "attention_head_dim",
                  "cross_attention_dim", "only_cross_attention", "transformer_layers_per_block")


def _clean_config(config: Mapping) -> dict:
    """A plain config dict without diffusers' private keys (``_use_default_values`` would drop edits)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def _stage_list(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _require_sd_family(cfg: dict, variant: str) -> None:
    downs, ups = cfg["down_block_types"], cfg["up_block_types"]
    problems = []
    if not set(downs) <= DOWN_TYPES or not set(ups) <= UP_TYPES or cfg.get("mid_block_type") not in MID_TYPES:
        problems.append(f"blocks {list(downs)} / {cfg.get('mid_block_type')} / {list(ups)}")
    if "CrossAttnDownBlock2D" not in downs:
        problems.append("no cross-attention down block")
    for key in ("class_embed_type", "addition_embed_type", "num_class_embeds", "reverse_transformer_layers_per_block"):
        if cfg.get(key) is not None:
            problems.append(f"{key}={cfg[key]!r}")
    if problems:
        raise UserError(f"student.variant {variant!r} needs a Stable-Diffusion-family UNet2DConditionModel "
                        f"(CrossAttnDownBlock2D/DownBlock2D, UNetMidBlock2DCrossAttn, "
                        f"CrossAttnUpBlock2D/UpBlock2D); the teacher has {'; '.join(problems)}")


def student_unet_config(teacher_config: Mapping, variant: str, channel_scale: float = 0.5) -> dict:
    """The student's ``UNet2DConditionModel`` config derived from the teacher's (see module doc)."""
    if variant not in VARIANTS:
        raise UserError(f"student.variant {variant!r} is unknown; choose one of {', '.join(VARIANTS)}")
    cfg = _clean_config(teacher_config)
    _require_sd_family(cfg, variant)
    n = len(cfg["block_out_channels"])
    layers = _stage_list(cfg["layers_per_block"], n)
    # BK-SDM removes one layer pair from every stage; a stage with a single layer keeps it (small
    # teachers such as the world's have one layer a block: their students shrink by the mid block,
    # the innermost stage or the width instead).
    reduced = [max(1, x - 1) for x in layers]
    if variant == "base" and reduced == layers:
        raise UserError(f"student.variant 'base' would equal the teacher (layers_per_block="
                        f"{cfg['layers_per_block']}: nothing to remove); use small, tiny or channels")
    cfg["layers_per_block"] = reduced if isinstance(cfg["layers_per_block"], list) else reduced[0]
    if variant in ("small", "tiny"):
        cfg["mid_block_type"] = None
    if variant == "tiny":
        if n < 3:
            raise UserError(f"student.variant 'tiny' removes the innermost stage and needs a teacher with at "
                            f"least 3 down stages; the teacher has {n}")
        for key in PER_STAGE_KEYS:
            if isinstance(cfg.get(key), list):
                cfg[key] = cfg[key][:-1]
        cfg["up_block_types"] = cfg["up_block_types"][1:]
        _require_sd_family(cfg, variant)  # the stages left must still cross-attend
    if variant == "channels":
        groups = cfg.get("norm_num_groups") or 1
        heads = _stage_list(cfg.get("num_attention_heads") or cfg["attention_head_dim"], n)
        quanta = [math.lcm(groups, int(h)) for h in heads]
        cfg["block_out_channels"] = [max(q, round(c * channel_scale / q) * q)
                                     for c, q in zip(cfg["block_out_channels"], quanta)]
    return cfg


def build_student(teacher_unet: nn.Module, student_config) -> tuple[nn.Module, "TransferReport | None"]:
    """Build the student of ``student_config`` (StudentConfig); copy teacher weights if asked, or load
    ``init_path``'s (``load_student_weights``)."""
    from diffusers import UNet2DConditionModel

    teacher_unet = unwrap_module(teacher_unet)
    cfg = student_unet_config(teacher_unet.config, student_config.variant, student_config.channel_scale)
    student = UNet2DConditionModel.from_config(cfg)
    report = None
    if student_config.init_from_teacher:
        report = transfer_weights(teacher_unet, student)
    elif student_config.init_path is not None:
        report = load_student_weights(student, Path(student_config.init_path).expanduser())
    return student, report


@torch.no_grad()
def load_student_weights(student: nn.Module, folder: Path) -> "TransferReport":
    """Start ``student`` from the weights of the UNet folder ``folder`` (e.g. an exported student):
    every tensor, each of the student's shape, or a UserError naming the first that differs."""
    from diffusers import UNet2DConditionModel

    try:
        source = UNet2DConditionModel.from_pretrained(folder, local_files_only=True).state_dict()
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"student.init_path {folder} is not a readable diffusers UNet folder: "
                        f"{str(err).splitlines()[0]}") from None
    target = student.state_dict()
    for key, tensor in target.items():
        if key not in source or source[key].shape != tensor.shape:
            found = "missing" if key not in source else f"of shape {tuple(source[key].shape)}"
            raise UserError(f"student.init_path {folder} does not fit student.variant: {key} is {found}, the "
                            f"student needs {tuple(tensor.shape)}")
    extra = sorted(set(source) - set(target))
    if extra:
        raise UserError(f"student.init_path {folder} has tensors the student lacks ({extra[0]}, ...): "
                        f"another student.variant or channel_scale?")
    student.load_state_dict({k: source[k] for k in target})  # copied into the student's dtype
    return TransferReport(copied=[(k, k) for k in target], copied_elements=sum(t.numel() for t in target.values()),
                          origin=str(folder))


@dataclass
class TransferReport:
    """What ``transfer_weights`` copied (student key, teacher key) and skipped (student key, reason)."""

    copied: list[tuple[str, str]] = field(default_factory=list)  # (student key, teacher key)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (student key, reason)
    copied_elements: int = 0
    origin: str = "the teacher"

    def summary(self) -> str:
        return (f"copied {len(self.copied)} tensors ({self.copied_elements:,} values) from {self.origin}, "
                f"skipped {len(self.skipped)}")


_LAYER_KEY = re.compile(r"(down|up)_blocks\.(\d+)\.(?:(resnets|attentions)\.(\d+)|(\w+))\.(.+)")


def teacher_key_for(student_key: str, teacher: nn.Module, student: nn.Module) -> str | None:
    """The teacher state-dict key whose tensor initialises ``student_key`` (module doc: the mapping)."""
    match = _LAYER_KEY.fullmatch(student_key)
    if not match:
        return student_key
    side, stage, kind, layer, other, rest = match.groups()
    stage = int(stage)
    if side == "up":
        stage += len(teacher.up_blocks) - len(student.up_blocks)
        if not 0 <= stage < len(teacher.up_blocks):
            return None
    if kind is None:
        return f"{side}_blocks.{stage}.{other}.{rest}"
    layer = int(layer)
    if side == "up":
        n_student = len(getattr(student.up_blocks[int(match.group(2))], kind))
        n_teacher = len(getattr(teacher.up_blocks[stage], kind, ()))
        if layer == n_student - 1:
            layer = n_teacher - 1
    return f"{side}_blocks.{stage}.{kind}.{layer}.{rest}"


@torch.no_grad()
def transfer_weights(teacher: nn.Module, student: nn.Module) -> TransferReport:
    """Copy teacher tensors into the student wherever the mapping finds one of the same shape."""
    teacher, student = unwrap_module(teacher), unwrap_module(student)
    source = teacher.state_dict()
    report = TransferReport()
    for key, target in student.state_dict().items():
        origin = teacher_key_for(key, teacher, student)
        if origin is None or origin not in source:
            report.skipped.append((key, "no teacher counterpart"))
        elif source[origin].shape != target.shape:
            report.skipped.append((key, f"shape {tuple(target.shape)} != teacher {origin} "
                                        f"{tuple(source[origin].shape)}"))
        else:
            target.copy_(source[origin].to(device=target.device, dtype=target.dtype))
            report.copied.append((key, origin))
            report.copied_elements += target.numel()
    return report
