"""Parameter counts, UNets from JSON configs, the random test UNet, and the student export.

The export (``export_student``) is a folder any diffusers user loads without aria: a student of a
Stable Diffusion teacher is a complete pipeline folder (``model_index.json``, the student in
``unet/``, the teacher's VAE and scheduler and the run's text encoder and tokenizer, copied), loaded by
``StableDiffusionPipeline.from_pretrained(folder)``; a world's student, or one of a plain UNet teacher,
is a UNet folder, loaded by ``UNet2DConditionModel.from_pretrained(folder)``. ``aria.json`` (the run's
facts) and ``README.md`` sit at the top of both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from aria.errors import UserError
from aria.files import folder_written_whole
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


def _model_card(facts: dict, pipeline: str | None) -> str:
    rows = "\n".join(f"| {k} | {_card_cell(v)} |" for k, v in facts.items())
    what = "pipeline" if pipeline else "UNet"
    load = (f"`{pipeline}.from_pretrained(folder)` (the student UNet is `unet/`)" if pipeline
            else "`UNet2DConditionModel.from_pretrained(folder)`")
    return (f"---\nlibrary_name: diffusers\ntags: [aria, bk-sdm, distillation]\n---\n\n"
            f"# aria student {what} ({facts['variant']})\n\n"
            f"A BK-SDM `{facts['variant']}` student distilled by aria from `{facts['teacher']}` with the "
            f"`{facts['strategy']}` strategy for {facts['steps']} steps. Load it with {load}.\n\n"
            f"| fact | value |\n|---|---|\n{rows}\n")


# -- the pipeline around a student -----------------------------------------------------------------

# what a text-to-image pipeline needs besides the UNet
REQUIRED_PARTS = ("vae", "text_encoder", "tokenizer", "scheduler")
# weights diffusers' torch path never reads
_OTHER_FRAMEWORKS = (".msgpack", ".h5", ".onnx", ".onnx_data", ".pb", ".ckpt")


def pipeline_components(config) -> dict[str, Path] | None:
    """Component name -> source folder of the pipeline a student of ``config`` is exported in: every
    component of the teacher's Stable Diffusion folder but ``unet`` (``vae``, ``scheduler``, and any
    other its ``model_index.json`` names), with ``text_encoder`` and ``tokenizer`` from the folder the
    run encoded its prompts with (``encoder.path``). None without one: the worlds' teachers, a plain
    UNet folder, or an encoder that is not the CLIP of a pipeline folder."""
    t, e = config.teacher, config.encoder
    if t.path is None or not t.subfolder or e.kind != "clip" or e.path is None:
        return None
    root, text = Path(t.path).expanduser(), Path(e.path).expanduser()
    named = [k for k, v in _read_index(root).items() if _is_component(v) and k != t.subfolder]
    parts = {name: root / name for name in dict.fromkeys([*named, *REQUIRED_PARTS])}
    parts.update(text_encoder=text / "text_encoder", tokenizer=text / "tokenizer")
    return {name: folder for name, folder in parts.items() if folder.is_dir() or name in REQUIRED_PARTS}


def _read_index(root: Path) -> dict:
    """The ``model_index.json`` of a pipeline folder as a dict ({} where it is missing or unreadable)."""
    try:
        index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _is_component(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _component_class(name: str, folder: Path) -> list[str]:
    """[library, class] of a component folder, read from its own config."""
    def read(file):
        try:
            data = json.loads((folder / file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    if (folder / "scheduler_config.json").is_file():
        return ["diffusers", read("scheduler_config.json").get("_class_name", "PNDMScheduler")]
    if (folder / "tokenizer_config.json").is_file() or name.startswith("tokenizer"):
        return ["transformers", read("tokenizer_config.json").get("tokenizer_class") or "CLIPTokenizer"]
    config = read("config.json")
    if "_class_name" in config:
        return ["diffusers", config["_class_name"]]
    return ["transformers", (config.get("architectures") or ["CLIPTextModel"])[0]]


def model_index(parts: Mapping[str, Path], teacher_root: Path) -> dict:
    """``model_index.json`` of the exported pipeline: the teacher's (a StableDiffusionPipeline where it
    has none), its components replaced by the copied ones (class from the teacher's index when copied
    from the teacher, else from the component's config) and the student's UNet; a component the
    export lacks is null, and a null safety checker is not required."""
    import diffusers

    teacher = _read_index(teacher_root)
    index = {"_class_name": teacher.get("_class_name", "StableDiffusionPipeline"),
             "_diffusers_version": diffusers.__version__}
    for name, value in teacher.items():
        if not name.startswith("_"):
            index[name] = [None, None] if isinstance(value, list) and len(value) == 2 else value
    if index["_class_name"] == "StableDiffusionPipeline":
        index.setdefault("safety_checker", [None, None])
        index.setdefault("feature_extractor", [None, None])
    for name, folder in parts.items():
        own = _is_component(teacher.get(name)) and Path(folder) == Path(teacher_root) / name
        index[name] = list(teacher[name]) if own else _component_class(name, Path(folder))
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    if index.get("safety_checker") == [None, None]:
        index["requires_safety_checker"] = False
    return index


def _copy_component(src: Path, dst: Path) -> None:
    """Copy a component folder (symlinks followed), the files a torch load reads: no other framework's
    weights, no ``.bin`` beside safetensors, no ``X.<variant>.ext`` beside ``X.ext``. New files get
    the default modes (umask), not the source's."""
    for folder, dirs, files in os.walk(src, followlinks=True):
        here = Path(folder)
        target = dst / here.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        names = set(files)
        safetensors = any(n.endswith(".safetensors") for n in names)
        for name in sorted(names):
            variant = re.fullmatch(r"(.+)\.[A-Za-z0-9_-]+\.(safetensors|bin)(\.index\.json)?", name)
            if (name.endswith(_OTHER_FRAMEWORKS) or (safetensors and re.search(r"\.bin(\.index\.json)?$", name))
                    or (variant and f"{variant.group(1)}.{variant.group(2)}{variant.group(3) or ''}" in names)):
                continue
            shutil.copyfile(here / name, target / name)


def _write_pipeline(student: nn.Module, folder: Path, parts: Mapping[str, Path], teacher_root: Path) -> str:
    """The pipeline in ``folder`` (empty); returns its class name."""
    missing = [f"{name} ({src})" for name, src in parts.items() if not src.is_dir()]
    if missing:
        raise UserError(f"export: the pipeline's {missing[0]} folder is missing")
    student.save_pretrained(folder / "unet", safe_serialization=True)
    for name, src in parts.items():
        _copy_component(src, folder / name)
    index = model_index(parts, teacher_root)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index["_class_name"]


def _normal_modes(root: Path) -> None:
    """Give every file under ``root`` the mode a new file gets here (0644 under umask 022) and every
    folder that of ``root`` (made by ``mkdir``): savers that write through private temp files leave 0600."""
    dir_mode = root.stat().st_mode & 0o777
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(folder) / name, dir_mode)
        for name in files:
            os.chmod(Path(folder) / name, dir_mode & 0o666)


def loading_snippet(folder: Path | str) -> str:
    """The one plain diffusers line that loads an exported student folder."""
    folder = Path(folder)
    index = _read_index(folder)
    name = index.get("_class_name") if (folder / "model_index.json").is_file() else None
    return f"from diffusers import {name or 'UNet2DConditionModel'}; " \
           f"{name or 'UNet2DConditionModel'}.from_pretrained({str(folder)!r})"


def export_student(student: nn.Module, out_dir, card: dict, pipeline: Mapping[str, Path] | None = None,
                   teacher_root: Path | None = None) -> Path:
    """Write the student (safetensors), ``README.md`` and ``aria.json`` atomically to ``out_dir``: a
    UNet folder, or with ``pipeline`` (``pipeline_components``) a pipeline folder around it whose
    model_index.json follows the one in ``teacher_root``. Written in a sibling temp folder (normal
    modes) renamed into place; a previous export is replaced only once the new one is complete."""
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"export_student: card lacks {', '.join(missing)}")
    if pipeline and teacher_root is None:
        raise ValueError("export_student: a pipeline export needs teacher_root (its model_index.json)")
    student, out_dir = unwrap_module(student), Path(out_dir)
    facts = {**{k: card[k] for k in CARD_KEYS}, "student_parameters": parameter_count(student),
             **{k: v for k, v in card.items() if k not in CARD_KEYS}}
    facts = json.loads(json.dumps(facts, default=str))  # Paths etc. as text, same in both files
    with folder_written_whole(out_dir) as tmp:
        if pipeline:
            kind = _write_pipeline(student, tmp, pipeline, Path(teacher_root))
        else:
            kind = None
            student.save_pretrained(tmp, safe_serialization=True)
        (tmp / "aria.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_model_card(facts, kind), encoding="utf-8")
        _normal_modes(tmp)
    return out_dir
