"""A ``data.source: files`` run end to end (tiny random Stable-Diffusion-shaped folder, CPU): prompts
files with groups and regimes, ``aria run`` to exit 0, the exported pipeline loaded by plain diffusers
in a process without aria, ``aria eval`` per group and region; the export's layout, modes and
atomicity; the probe's noising by the scheduler's ``add_noise``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aria.data.corpus import PROMPT_REGIMES, PromptPool
from aria.errors import UserError
from test_models import write_tiny_sd_folder

GROUPS = {"cats": "unseen", "dogs": "seen", "boats": "under"}  # group -> regime of its prompts
COLOURS = ("red", "blue", "green", "black", "white", "grey")


def cli(*args: str) -> int:
    from aria.cli import main

    try:
        main(list(args))
    except SystemExit as err:
        return err.code
    return 0


def prompts_jsonl(folder: Path) -> Path:
    """18 prompts, 6 per group, each with its group's regime."""
    rows = [{"prompt": f"a {c} {g[:-1]}", "group": g, "regime": r} for g, r in GROUPS.items() for c in COLOURS]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def paired_folder(folder: Path, captions: list[str], size: int = 16) -> Path:
    folder.mkdir()
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")
    rng = np.random.default_rng(0)
    for i in range(len(captions)):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def run_config(tmp: Path, prompts: Path) -> Path:
    """A files run of the tiny SD folder in ``tmp/sd``: 2 steps on the CPU, a small probe and sampler."""
    config = {
        "seed": 0, "output_dir": str(tmp / "run"),
        "data": {"source": "files", "prompts_file": str(prompts), "paired_dir": str(tmp / "paired"),
                 "cache_dir": str(tmp / "cache")},
        "encoder": {"kind": "clip", "path": str(tmp / "sd"), "device": "cpu", "max_length": 16},
        "regions": {"k": 3, "iterations": 5},
        "teacher": {"path": str(tmp / "sd"), "subfolder": "unet"},
        "student": {"variant": "small"},
        "distillation": {"steps": 2, "batch_size": 4},
        "backend": {"kind": "torch", "device": "cpu", "precision": "fp32"},
        "logging": {"every": 1, "checkpoint_every": 2, "progress": False},
        "eval": {"probe_images": 12, "probe_timesteps": 2, "sample_prompts": 6, "sample_steps": 2, "batch_size": 16},
    }
    path = tmp / "run.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def files_run(tmp_path_factory):
    """``aria run`` of a files source (JSONL prompts with groups and regimes), once for the module."""
    tmp = tmp_path_factory.mktemp("files-run")
    write_tiny_sd_folder(tmp / "sd")
    prompts = prompts_jsonl(tmp)
    paired_folder(tmp / "paired", ["a red dog", "a blue dog", "a green dog", "a red boat", "a dog on a sofa"])
    config = run_config(tmp, prompts)
    old, out = os.umask(0o022), io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = cli("run", "--config", str(config))
    finally:
        os.umask(old)
    return {"tmp": tmp, "config": config, "code": code, "stdout": out.getvalue()}


def test_files_run_exits_0_and_exports_a_pipeline_with_normal_modes(files_run, capsys):
    tmp = files_run["tmp"]
    assert files_run["code"] == 0
    student = tmp / "run" / "student"
    index = json.loads((student / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"] and index["tokenizer"][1] == "CLIPTokenizer"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (student / part).is_dir(), part
    assert ((student / "aria.json").is_file()
            and "StableDiffusionPipeline.from_pretrained" in (student / "README.md").read_text())
    modes = {p.relative_to(student).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [student, *student.rglob("*")]}
    assert modes["."] == 0o755 and modes["unet/diffusion_pytorch_model.safetensors"] == 0o644
    assert {m for p, m in modes.items() if (student / p).is_dir()} == {0o755}
    assert {m for p, m in modes.items() if (student / p).is_file()} == {0o644}
    assert not [p for p in (tmp / "run").iterdir() if p.name.startswith(".")]  # no temp folder left
    # the weights copied are the teacher's, the UNet is the student's (smaller)
    assert (student / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (tmp / "sd" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (student / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < \
        (tmp / "sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size


SAMPLE_WITHOUT_ARIA = """
import sys
import numpy as np
import torch
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1])
image = pipe("a red cat", num_inference_steps=2, height=16, width=16, output_type="np",
             generator=torch.Generator().manual_seed(0)).images
assert "aria" not in sys.modules, "aria was imported"
print(type(pipe.unet).__name__, image.shape, bool(np.isfinite(image).all()), float(image.std()))
"""


def test_exported_pipeline_samples_in_a_process_without_aria(files_run):
    student = files_run["tmp"] / "run" / "student"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", SAMPLE_WITHOUT_ARIA, str(student)], cwd=files_run["tmp"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    words = last.split()
    assert words[0] == "UNet2DConditionModel" and "(1, 16, 16, 3)" in last
    assert words[-2] == "True" and float(words[-1]) > 0  # finite, not a constant image


def test_end_of_run_names_the_export_and_how_to_load_it(files_run):
    student = files_run["tmp"] / "run" / "student"
    line = (f"student exported to {student}; load it with: from diffusers import StableDiffusionPipeline; "
            f"StableDiffusionPipeline.from_pretrained({str(student)!r})")
    assert line in files_run["stdout"].splitlines()


def test_eval_of_a_files_student_reports_groups_regimes_and_regions(files_run, capsys):
    tmp = files_run["tmp"]
    assert cli("eval", "--student", str(tmp / "run"), "--config", str(files_run["config"]),
               "--set", "logging.progress=true") == 0
    # the bar counts every image through either model: probe 12 x 2 timesteps with and without the
    # prompt, sampler 6 prompts x 2 steps x 2 (guidance), twice
    assert "144/144" in capsys.readouterr().err
    result = json.loads((tmp / "run" / "eval" / "eval.json").read_text())
    rows = list(result["metrics"])
    assert {"seen", "under", "unseen"} <= set(rows) and rows[-1] == "all"
    assert {f"group:{g}" for g in GROUPS} <= set(rows)
    counts = result["counts"]
    assert counts["group:cats"]["probes"] == counts["unseen"]["probes"] == 4  # cats are the unseen regime
    assert sum(counts[f"group:{g}"]["probes"] for g in GROUPS) == counts["all"]["probes"] == 12
    for row in rows:
        assert np.isfinite(result["metrics"][row]["discrepancy"]) and result["metrics"][row]["discrepancy"] > 0
    assert len(result["regions"]["discrepancy"]) == 3 and sum(result["regions"]["probes"]) == 12
    assert "| group:cats |" in (tmp / "run" / "eval" / "eval.md").read_text()


def test_malformed_prompts_file_fails_before_training_with_one_line(tmp_path, capsys):
    write_tiny_sd_folder(tmp_path / "sd")
    paired_folder(tmp_path / "paired", ["a red dog", "a blue dog"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red dog", "group": "dogs"}\n{"prompt": "a cat", "colour": "red"}\n')
    capsys.readouterr()  # what writing the folder printed
    assert cli("run", "--config", str(run_config(tmp_path, prompts))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(prompts) in err and "line 2" in err and "'colour'" in err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- prompts files

@pytest.mark.parametrize("name, text, expected", [
    ("p.jsonl", '{"prompt": "a cat", "group": "pets", "regime": "unseen"}\n{"prompt": " a car ", "group": 7, '
                '"regime": "seen"}\n{"prompt": "a cat", "group": "pets", "regime": "unseen"}\n',
     (["a cat", "a car"], ["pets", "7"], [0, 1], [2, 0])),
    ("p.csv", '\ufeffprompt,group\n"a cat, sitting",pets\na car,\n',
     (["a cat, sitting", "a car"], ["pets"], [0, -1], None)),
    ("p.csv", 'regime,prompt\nunder,a cat\nseen,"a ""quoted"" car"\n', (["a cat", 'a "quoted" car'], [], None, [1, 0])),
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "a car"}\n', (["a cat", "a car"], [], None, None)),
])
def test_prompts_files_with_groups_and_regimes(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    pool = PromptPool.from_text_file(path, tmp_path / "pool")
    texts, groups, group_ids, regimes = expected
    assert list(pool) == texts and pool.group_names == groups
    assert (pool.meta("group").tolist() if "group" in pool.meta_names else None) == group_ids
    assert (pool.meta("regime").tolist() if "regime" in pool.meta_names else None) == regimes
    assert PROMPT_REGIMES == ("seen", "under", "unseen")


@pytest.mark.parametrize("name, text, message", [
    ("p.jsonl", '{"prompt": "a cat"}\n{"prompt": "a car", "colour": 1}\n', "line 2: unknown key 'colour'"),
    ("p.jsonl", '{"prompt": "a cat", "regime": "seen"}\n{"prompt": "a car"}\n', "line 2 has no regime, line 1 gives"),
    ("p.jsonl", '{"prompt": "a cat", "regime": "held out"}\n',
     "line 1: regime 'held out' is not one of seen, under, unseen"),
    ("p.jsonl", '{"prompt": "a cat"\n', "line 1: invalid JSON"),
    ("p.jsonl", '["a cat"]\n', "line 1: expected an object"),
    ("p.jsonl", '{"prompt": 3}\n', "line 1: prompt must be text"),
    ("p.jsonl", '{"group": "x"}\n', 'line 1: no "prompt" key'),
    ("p.jsonl", '{"prompt": "a cat", "group": "x"}\n{"prompt": "a cat", "group": "y"}\n',
     "line 2 repeats the prompt of line 1 with another group or regime"),
    ("p.jsonl", '{"prompt": "a cat", "group": true}\n', "line 1: group must be text"),
    ("p.csv", 'text,group\na,b\n', "line 1: unknown column 'text'"),
    ("p.csv", 'group\nb\n', "line 1: no 'prompt' column"),
    ("p.csv", 'prompt,group\na cat,pets,x\n', "line 2 has 3 fields, the header 2"),
    ("p.csv", 'prompt\na cat\n"a car\n', "line 3: invalid CSV"),
    ("p.csv", 'prompt,prompt\na,b\n', "column 'prompt' appears twice"),
    ("p.json", '[{"prompt": "a cat"}]', ".json file is not a prompts file"),
])
def test_malformed_prompts_files_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        PromptPool.from_text_file(path, tmp_path / "pool")
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "pool").exists()


def test_unseen_prompt_with_a_paired_image_is_refused(tmp_path):
    from aria.config import load_config
    from aria.data.bundle import files_pool, paired_captions

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,regime\na red cat,unseen\na blue cat,unseen\na red dog,seen\n")
    paired_folder(tmp_path / "paired", ["a red dog", "a blue cat"])
    config = load_config(None, ["data.source=files", f"data.prompts_file={prompts}",
                                f"data.paired_dir={tmp_path / 'paired'}", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(UserError, match=r"marks 'a blue cat' unseen, but .*captions.txt line 2 pairs an image"):
        files_pool(config, paired_captions(config))
    prompts.write_text("prompt,regime,group\na red cat,unseen,cats\na blue cat,unseen,cats\na red dog,seen,dogs\n")
    (tmp_path / "paired" / "captions.txt").write_text("a red dog\na dog on a sofa\n")
    pool, ids = files_pool(config, paired_captions(config))  # a caption the file lacks joins as seen, no group
    assert list(pool) == ["a red cat", "a blue cat", "a red dog", "a dog on a sofa"] and ids.tolist() == [2, 3]
    assert pool.meta("regime").tolist() == [2, 2, 0, 0] and pool.meta("group").tolist() == [0, 0, 1, -1]
    assert pool.group_names == ["cats", "dogs"]


# ---------------------------------------------------------------- export

def test_world_student_stays_a_unet_folder_that_diffusers_loads(tmp_path):
    from diffusers import UNet2DConditionModel

    from aria.models import export_student, random_world_unet
    from aria.models.export import loading_snippet

    unet = random_world_unet(sample_size=16)
    card = {"teacher": "world", "variant": "small", "teacher_parameters": 1, "strategy": "rc", "steps": 1,
            "data": "concepts"}
    old = os.umask(0o022)
    try:
        out = export_student(unet, tmp_path / "student", card)
    finally:
        os.umask(old)
    assert not (out / "model_index.json").exists() and (out / "config.json").is_file()
    loaded = UNet2DConditionModel.from_pretrained(out)
    assert torch.equal(loaded.conv_in.weight, unet.conv_in.weight)
    assert loading_snippet(out) == ("from diffusers import UNet2DConditionModel; "
                                    f"UNet2DConditionModel.from_pretrained({str(out)!r})")
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_pipeline_export_is_atomic_and_follows_the_teacher_index(tmp_path):
    from aria.config import load_config
    from aria.models import export_student, random_world_unet
    from aria.models.export import model_index, pipeline_components

    sd = tmp_path / "sd"
    write_tiny_sd_folder(sd)
    (sd / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0", "requires_safety_checker": True,
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"], "feature_extractor": [None, None],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "PNDMScheduler"]}))
    (sd / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"variant")  # not copied
    (sd / "vae" / "diffusion_flax_model.msgpack").write_bytes(b"flax")  # not copied
    config = load_config(None, [f"teacher.path={sd}", "teacher.subfolder=unet", "encoder.kind=clip",
                                f"encoder.path={sd}"])
    parts = pipeline_components(config)
    assert sorted(parts) == ["scheduler", "text_encoder", "tokenizer", "vae"]  # no safety_checker folder
    index = model_index(parts, sd)
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["_diffusers_version"] != "0.6.0"
    assert pipeline_components(load_config(None, [f"teacher.path={sd / 'unet'}"])) is None  # a plain UNet teacher

    card = {"teacher": str(sd), "variant": "small", "teacher_parameters": 1, "strategy": "rc", "steps": 1,
            "data": "files"}
    unet = random_world_unet(sample_size=8)
    out = export_student(unet, tmp_path / "student", card, pipeline=parts, teacher_root=sd)
    assert sorted(p.name for p in (out / "vae").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    broken = {**parts, "vae": tmp_path / "missing"}
    with pytest.raises(UserError, match="missing"):
        export_student(unet, out, card, pipeline=broken, teacher_root=sd)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # the previous export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd", "student"]  # no temp folder left


# ---------------------------------------------------------------- noising

def test_probe_noising_by_add_noise_matches_the_closed_form():
    from diffusers import DDPMScheduler

    from aria.training.probe import ProbeSet, probe_eps
    from conftest import make_teacher

    unet = make_teacher(size=16).unet
    rng = np.random.default_rng(0)
    n, j = 5, 3
    probe = ProbeSet(np.arange(n), rng.standard_normal((n, 3, 16, 16)).astype(np.float32),
                     np.array([10, 500, 990]), rng.standard_normal((n, j, 3, 16, 16)).astype(np.float32))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    x0, noise, t = torch.from_numpy(probe.x0[:, None].repeat(j, 1)), torch.from_numpy(probe.noise), probe.timesteps
    a = sched.alphas_cumprod[t].view(1, j, 1, 1, 1)
    closed = a.sqrt() * x0 + (1 - a).sqrt() * noise  # the hand-written formula add_noise replaces
    by_scheduler = sched.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), torch.from_numpy(t).repeat(n)).view_as(closed)
    torch.testing.assert_close(by_scheduler, closed, rtol=1e-6, atol=1e-6)

    ctx = torch.randn(n, 4, 16)
    uncond = torch.randn(1, 4, 16)
    new = probe_eps(unet, probe, {"c": ctx, "u": uncond}, sched, batch=4)
    with torch.no_grad():  # one (probe, timestep) at a time, noised by the closed form
        for name, c in (("c", ctx), ("u", uncond.expand(n, -1, -1))):
            ref = np.stack([np.stack([unet(closed[i, k][None], torch.tensor([t[k]]), encoder_hidden_states=c[i][None])
                                      .sample[0].numpy() for k in range(j)]) for i in range(n)])
            np.testing.assert_allclose(new[name], ref, rtol=1e-4, atol=1e-5)
    assert np.abs(new["c"] - new["u"]).max() > 1e-3  # the two contexts are not mixed up
