"""Forward hooks on (wrapped) modules and the BK-SDM feature-KD pairs derived from two UNets."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)


def unwrap_module(module: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / a DeepSpeed engine / ``torch.compile``."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif type(module).__name__ in ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine",
                                       "PipelineEngine") and isinstance(getattr(module, "module", None), nn.Module):
            module = module.module
        else:
            return module


def primary_tensor(output):
    """The hidden state of a block output: tensors as is, first element of tuples / ModelOutputs."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, Mapping):
            output = next(iter(output.values()))
        elif isinstance(output, (tuple, list)):
            output = output[0]
        else:
            raise TypeError(f"cannot take a tensor from a {type(output).__name__} output")
    return output


class FeatureCapture:
    """``with FeatureCapture(unet, names) as cap: unet(...); cap.outputs[name]`` (primary tensors).

    Hooks live on the unwrapped module's named submodules; outputs are cleared at each forward of the
    module and kept attached to the graph; every hook is removed on exit, exceptions included.
    """

    def __init__(self, module: nn.Module, names: Iterable[str]):
        self.module = unwrap_module(module)
        self.names = list(dict.fromkeys(names))
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "FeatureCapture":
        modules = dict(self.module.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ValueError(f"no submodule named {', '.join(missing)} in {type(self.module).__name__}")
        try:
            self._handles.append(self.module.register_forward_pre_hook(lambda *_: self.outputs.clear()))
            for name in self.names:
                self._handles.append(modules[name].register_forward_hook(self._store(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def _store(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = primary_tensor(output)
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc) -> None:
        self.remove()
        self.outputs.clear()


@dataclass(frozen=True)
class FeaturePair:
    """Submodule names whose outputs the feature-KD loss compares (see ``FeatureCapture``)."""

    teacher_name: str
    student_name: str
    shape_hint: tuple[int, int, int]  # (C, H, W) of one sample at the teacher's sample_size


def _last_layer(unet: nn.Module, stage: int) -> str:
    block = unet.down_blocks[stage]
    kind = "attentions" if len(getattr(block, "attentions", ())) else "resnets"
    return f"down_blocks.{stage}.{kind}.{len(getattr(block, kind)) - 1}"


def _candidates(unet: nn.Module) -> list[str]:
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    names += [_last_layer(unet, i) for i in range(len(unet.down_blocks))]
    names += ["mid_block"] if unet.mid_block is not None else []
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


@torch.no_grad()
def _probe_shapes(unet: nn.Module, size: int, channels: int, context_dim: int) -> dict[str, tuple]:
    param = next(unet.parameters())
    sample = torch.zeros(1, channels, size, size, device=param.device, dtype=param.dtype)  # no RNG draws
    context = torch.zeros(1, 4, context_dim, device=param.device, dtype=param.dtype)
    with FeatureCapture(unet, _candidates(unet)) as capture:
        unet(sample, torch.tensor([10], device=param.device), encoder_hidden_states=context)
        return {name: tuple(t.shape[1:]) for name, t in capture.outputs.items()}


def feature_pairs(teacher_unet: nn.Module, student_unet: nn.Module) -> list[FeaturePair]:
    """BK-SDM feature-KD pairs: down blocks (from the input side), mid (if the student has one), up blocks
    (from the output side). A down stage whose output resolutions differ (the student's last stage has
    no downsampler) pairs the outputs of its last layers instead (BK-SDM-Tiny). Pairs are verified by a
    forward pass on a small input; pairs of unequal shape (e.g. the ``channels`` variant) are dropped.
    """
    teacher, student = unwrap_module(teacher_unet), unwrap_module(student_unet)
    cfg = teacher.config
    size = 2 ** len(teacher.down_blocks)
    cross = cfg.cross_attention_dim
    context_dim = cfg.encoder_hid_dim or (cross if isinstance(cross, int) else cross[0])
    shapes_t = _probe_shapes(teacher, size, cfg.in_channels, context_dim)
    shapes_s = _probe_shapes(student, size, student.config.in_channels, context_dim)
    n_t, n_s = len(teacher.down_blocks), len(student.down_blocks)
    candidates = [[(f"down_blocks.{j}", f"down_blocks.{j}"), (_last_layer(teacher, j), _last_layer(student, j))]
                  for j in range(min(n_t, n_s))]
    if teacher.mid_block is not None and student.mid_block is not None:
        candidates.append([("mid_block", "mid_block")])
    shift = len(teacher.up_blocks) - len(student.up_blocks)
    candidates += [[(f"up_blocks.{j + shift}", f"up_blocks.{j}")]
                   for j in range(len(student.up_blocks)) if 0 <= j + shift < len(teacher.up_blocks)]
    height, width = _height_width(cfg.sample_size or size)
    pairs, dropped = [], []
    for options in candidates:
        match = next(((t, s) for t, s in options if shapes_t[t] == shapes_s[s]), None)
        if match is None:
            t, s = options[0]
            dropped.append(f"{t} {shapes_t[t]} vs {s} {shapes_s[s]}")
            continue
        c, h, w = shapes_t[match[0]]
        pairs.append(FeaturePair(match[0], match[1], (c, height * h // size, width * w // size)))
    if dropped:
        log.warning("feature KD: %d block pair(s) of unequal shape dropped (probe at %dx%d): %s",
                    len(dropped), size, size, "; ".join(dropped))
    return pairs


def _height_width(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
