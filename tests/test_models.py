"""Teacher loading, BK-SDM students, weight transfer, feature-KD pairs, hooks and export (tiny UNets, CPU)."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

from aria.config import StudentConfig, TeacherConfig, load_config
from aria.errors import UserError
from aria.models import (
    VARIANTS,
    FeatureCapture,
    build_student,
    export_student,
    feature_pairs,
    load_teacher,
    parameter_count,
    random_world_unet,
    student_unet_config,
    transfer_weights,
    unet_from_config_file,
)
from aria.models import teacher as teacher_module

UNETS = Path(__file__).resolve().parents[1] / "configs" / "unets"
TEACHERS = {
    "tiny-sd": lambda: unet_from_config_file(UNETS / "tiny-sd.json"),
    "world": lambda: random_world_unet(sample_size=16),
}


@pytest.fixture(scope="module", params=sorted(TEACHERS))
def teacher(request):
    torch.manual_seed(0)
    return TEACHERS[request.param]().eval().requires_grad_(False)


def student_of(teacher, variant, init=True):
    return build_student(teacher, StudentConfig(variant=variant, init_from_teacher=init))


def unet_inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    sample = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    context = torch.randn(batch, 5, cfg.cross_attention_dim, generator=g)
    return sample, torch.tensor([3, 700][:batch]), context


def all_hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ---------------------------------------------------------------------------- configs and builders
def test_sd_v1_4_config_and_bk_sdm_parameter_counts():
    sd = unet_from_config_file(UNETS / "sd-v1-4-unet.json", device="meta")
    assert parameter_count(sd) == 859_520_964
    counts = {}
    for variant in ("base", "small", "tiny"):
        cfg = student_unet_config(sd.config, variant)
        with torch.device("meta"):
            counts[variant] = parameter_count(UNet2DConditionModel.from_config(cfg))
    # BK-SDM (Kim et al. 2023) U-Nets: Base 0.58B, Small 0.48B, Tiny 0.32B
    assert counts == {"base": 579_384_964, "small": 482_346_884, "tiny": 323_384_964}
    tiny = student_unet_config(sd.config, "tiny")  # BK-SDM's src/unet_config/bk_tiny
    assert tiny["block_out_channels"] == [320, 640, 1280] and tiny["layers_per_block"] == 1
    assert tiny["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 and tiny["mid_block_type"] is None
    assert tiny["up_block_types"] == ["CrossAttnUpBlock2D"] * 3


@pytest.mark.parametrize("variant", VARIANTS)
def test_student_config_round_trips_with_identical_outputs(teacher, variant, tmp_path):
    student, _ = student_of(teacher, variant)
    student.save_pretrained(tmp_path, safe_serialization=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "UNet2DConditionModel"
    assert saved["block_out_channels"] == list(student.config.block_out_channels)
    assert saved["mid_block_type"] == (None if variant in ("small", "tiny") else "UNetMidBlock2DCrossAttn")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path, local_files_only=True).eval()
    student.eval()
    reloaded, built = loaded.state_dict(), student.state_dict()
    assert reloaded.keys() == built.keys() and all(torch.equal(reloaded[k], built[k]) for k in built)
    # safetensors leaves some tensors off the 64-byte alignment by which oneDNN picks a kernel (its sums
    # then differ in the last bit at one thread): the weights move to fresh memory before outputs are compared
    for p in loaded.parameters():
        p.data = p.data.clone()
    with torch.no_grad():
        sample, t, context = unet_inputs(teacher)
        assert torch.equal(student(sample, t, context).sample, loaded(sample, t, context).sample)


def test_parameter_counts_are_ordered(teacher):
    counts = {v: parameter_count(student_of(teacher, v, init=False)[0]) for v in VARIANTS}
    assert parameter_count(teacher) > counts["base"] > counts["small"] > counts["tiny"]
    assert counts["channels"] < counts["base"]


def test_channels_variant_scales_widths_to_group_multiples():
    teacher = unet_from_config_file(UNETS / "tiny-sd.json")
    cfg = student_unet_config(teacher.config, "channels", channel_scale=0.3)
    assert cfg["block_out_channels"] == [8, 16, 16, 16]  # 9.6 / 19.2 rounded to multiples of 8 groups
    assert cfg["layers_per_block"] == 1 and cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn"


def test_incompatible_teachers_name_the_variant():
    base = dict(unet_from_config_file(UNETS / "tiny-sd.json", device="meta").config)
    two_stages = {**base, "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
    with pytest.raises(UserError, match="student.variant 'tiny'.*3 down stages"):
        student_unet_config(two_stages, "tiny")
    student_unet_config(two_stages, "small")  # two stages are enough for the others
    no_attention = {**base, "down_block_types": ["DownBlock2D"] * 4, "up_block_types": ["UpBlock2D"] * 4}
    with pytest.raises(UserError, match="student.variant 'base'.*no cross-attention"):
        student_unet_config(no_attention, "base")
    one_layer = {**base, "layers_per_block": 1}
    with pytest.raises(UserError, match="student.variant 'base' would equal the teacher"):
        student_unet_config(one_layer, "base")
    small = student_unet_config(one_layer, "small")  # keeps its single layers, drops the mid block
    assert small["layers_per_block"] == 1 and small["mid_block_type"] is None
    with pytest.raises(UserError, match="student.variant 'huge'"):
        student_unet_config(base, "huge")


# ---------------------------------------------------------------------------- weight transfer
@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_transfer_follows_the_bk_sdm_mapping(teacher, variant):
    student, report = student_of(teacher, variant)
    assert report.skipped == [] and len(report.copied) == len(student.state_dict())
    t, s = teacher.state_dict(), student.state_dict()
    for j, block in enumerate(student.down_blocks):  # first layer of each down stage kept
        assert torch.equal(s[f"down_blocks.{j}.resnets.0.conv1.weight"], t[f"down_blocks.{j}.resnets.0.conv1.weight"])
        if hasattr(block, "attentions"):
            key = f"down_blocks.{j}.attentions.0.proj_in.weight"
            assert torch.equal(s[key], t[key])
    shift = len(teacher.up_blocks) - len(student.up_blocks)
    assert shift == (1 if variant == "tiny" else 0)
    for j in range(len(student.up_blocks)):  # up stage: 0 <- 0, 1 <- 2 (the teacher's middle layer dropped)
        tj = j + shift
        for kind in ("resnets.{}.conv1.weight", "attentions.{}.proj_out.weight"):
            if kind.startswith("attentions") and not hasattr(student.up_blocks[j], "attentions"):
                continue
            assert torch.equal(s[f"up_blocks.{j}." + kind.format(0)], t[f"up_blocks.{tj}." + kind.format(0)])
            last_s, last_t, middle_t = (s[f"up_blocks.{j}." + kind.format(1)], t[f"up_blocks.{tj}." + kind.format(2)],
                                        t[f"up_blocks.{tj}." + kind.format(1)])
            assert torch.equal(last_s, last_t)
            assert last_s.shape != middle_t.shape or not torch.equal(last_s, middle_t)
    for key in ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight"):
        assert torch.equal(s[key], t[key])
    if variant == "base":
        key = "mid_block.attentions.0.proj_in.weight"
        assert torch.equal(s[key], t[key])
    if variant == "tiny":  # the student's last stage lost its downsampler; the teacher's up 0 is unused
        assert not any(k.startswith(f"down_blocks.{len(student.down_blocks) - 1}.downsamplers") for k in s)
        assert not any(origin.startswith("up_blocks.0.") for _, origin in report.copied)


def test_transfer_reports_shape_mismatches_for_channels(teacher):
    student, _ = student_of(teacher, "channels", init=False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = transfer_weights(teacher, student)
    assert len(report.skipped) > 0 and len(report.copied) + len(report.skipped) == len(before)
    assert all("shape" in reason for _, reason in report.skipped)
    after = student.state_dict()
    assert all(torch.equal(after[key], before[key]) for key, _ in report.skipped)


def test_init_path_starts_the_student_from_an_exported_one(teacher, tmp_path):
    torch.manual_seed(1)
    first, _ = student_of(teacher, "channels", init=False)
    first.save_pretrained(tmp_path / "first")
    torch.manual_seed(2)  # a different random init, which the loaded weights must replace entirely
    config = StudentConfig(variant="channels", init_from_teacher=False, init_path=tmp_path / "first")
    second, report = build_student(teacher, config)
    expected = first.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in second.state_dict().items())
    assert report.copied_elements == parameter_count(second) and str(tmp_path / "first") in report.summary()
    with pytest.raises(UserError, match=r"student.init_path .* does not fit student.variant: .* of shape"):
        build_student(teacher, config.model_copy(update={"channel_scale": 0.25}))
    with pytest.raises(UserError, match=r"student.init_path .* is not a readable diffusers UNet folder"):
        build_student(teacher, config.model_copy(update={"init_path": tmp_path}))


def test_init_path_excludes_the_teacher_copy():
    with pytest.raises(ValueError, match="init_path and student.init_from_teacher both"):
        StudentConfig(variant="channels", init_path="somewhere")


@pytest.mark.parametrize("split", [0, 1])
def test_the_shipped_stage1_students_start_the_concepts_main_arm(split):
    """aria/world/assets/concepts-student-splitN fits the student that configs/concepts-gpu.yaml builds from the
    concepts teacher, and its record says what it is: no switching, split N."""
    assets = Path(__file__).resolve().parents[1] / "aria" / "world" / "assets"
    teacher = load_teacher(TeacherConfig(path=assets / "concepts-teacher")).unet
    config = StudentConfig(variant="channels", channel_scale=0.5, init_from_teacher=False,
                           init_path=assets / f"concepts-student-split{split}")
    student, report = build_student(teacher, config)
    assert report.copied_elements == parameter_count(student) == 2_428_355
    record = json.loads((assets / f"concepts-student-split{split}" / "aria.json").read_text())
    assert (record["strategy"], record["config"]["data"]["concepts"]["seed"]) == ("none", split)


def test_the_control_arm_student_is_the_teacher_less_its_removed_blocks():
    """configs/concepts-control.yaml's student (BK-SDM-Tiny of the concepts teacher) takes its tensors from the
    teacher, all but the input side of the first up-block resnet (whose skip input narrows with the removed
    stage), so it starts knowing every concept, unseen families included: its output is near the teacher's,
    unlike that of the same student from random init."""
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "concepts-control.yaml")
    teacher = load_teacher(config.teacher).unet.float().eval()
    student, report = build_student(teacher, config.student)
    assert {key for key, _ in report.skipped} == {f"up_blocks.0.resnets.0.{name}" for name in (
        "norm1.weight", "norm1.bias", "conv1.weight", "conv_shortcut.weight")}
    assert 0.9 * parameter_count(student) < report.copied_elements < parameter_count(teacher) / 2
    fresh, _ = build_student(teacher, config.student.model_copy(update={"init_from_teacher": False}))
    sample, t, context = unet_inputs(teacher)
    with torch.no_grad():
        eps_t = teacher(sample, t, context).sample
        gap_copied = (student.eval()(sample, t, context).sample - eps_t).pow(2).mean()
        gap_fresh = (fresh.eval()(sample, t, context).sample - eps_t).pow(2).mean()
    assert gap_copied < 0.5 * gap_fresh


# ---------------------------------------------------------------------------- feature pairs and hooks
@pytest.mark.parametrize("variant", ["base", "small", "tiny"])
def test_feature_pairs_match_on_a_forward_pass(teacher, variant):
    student, _ = student_of(teacher, variant)
    pairs = feature_pairs(teacher, student)
    n = len(teacher.down_blocks)
    expected = {"base": 2 * n + 1, "small": 2 * n, "tiny": 2 * n - 2}[variant]
    assert len(pairs) == expected
    teacher_names = {p.teacher_name for p in pairs}
    assert ("mid_block" in teacher_names) == (variant == "base")
    if variant == "tiny":  # the innermost stage has no pair; the last kept stage pairs pre-downsample outputs
        assert f"down_blocks.{n - 1}" not in teacher_names and "up_blocks.0" not in teacher_names
        assert f"down_blocks.{n - 2}" not in teacher_names
        assert any(p.teacher_name.startswith(f"down_blocks.{n - 2}.")
                   and p.student_name.startswith(f"down_blocks.{n - 2}.") for p in pairs)
    sample, t, context = unet_inputs(teacher)
    with FeatureCapture(teacher, [p.teacher_name for p in pairs]) as cap_t, \
            FeatureCapture(student, [p.student_name for p in pairs]) as cap_s:
        with torch.no_grad():
            teacher(sample, t, context)
        student(sample, t, context)
        for p in pairs:
            assert cap_t.outputs[p.teacher_name].shape == cap_s.outputs[p.student_name].shape
            assert tuple(cap_t.outputs[p.teacher_name].shape[1:]) == p.shape_hint
            assert cap_s.outputs[p.student_name].requires_grad  # the student's features stay in the graph


def test_channels_variant_has_no_equal_shape_pairs(teacher):
    student, _ = student_of(teacher, "channels", init=False)
    assert feature_pairs(teacher, student) == []


def test_feature_capture_unwraps_clears_per_forward_and_removes_hooks():
    unet = random_world_unet()
    names = ["down_blocks.0", "mid_block", "up_blocks.3"]
    before = all_hooks(unet)
    wrapped = torch.compile(torch.nn.DataParallel(unet))  # compiled(DataParallel(unet)): not run, just wrapped
    with FeatureCapture(wrapped, names) as capture:
        assert capture.module is unet and all_hooks(unet) == before + len(names) + 1
        with torch.no_grad():
            unet(*unet_inputs(unet, batch=2))
            assert set(capture.outputs) == set(names) and capture.outputs["down_blocks.0"].shape[0] == 2
            assert isinstance(capture.outputs["down_blocks.0"], torch.Tensor)  # hidden state of (hidden, res)
            sample, t, context = unet_inputs(unet, batch=1)
            with pytest.raises(Exception):  # fails in the first cross-attention: nothing new is stored
                unet(sample, t, context[..., :7])
            assert capture.outputs == {}  # cleared when the forward started
    assert all_hooks(unet) == before
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCapture(unet, names):
            raise RuntimeError("boom")
    assert all_hooks(unet) == before
    with pytest.raises(ValueError, match="no_such_block"):
        with FeatureCapture(unet, ["down_blocks.0", "no_such_block"]):
            pass
    assert all_hooks(unet) == before


# ---------------------------------------------------------------------------- teacher folders
def test_bad_teacher_folders_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher_module, "SHIPPED_TEACHER", tmp_path / "absent")
    with pytest.raises(UserError, match="shipped world teacher is missing"):
        load_teacher(TeacherConfig())
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(TeacherConfig(path=tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="not a diffusers model folder"):
        load_teacher(TeacherConfig(path=empty))
    (empty / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="'AutoencoderKL' model, expected UNet2DConditionModel"):
        load_teacher(TeacherConfig(path=empty))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid JSON config"):
        load_teacher(TeacherConfig(path=empty))
    unet_dir = tmp_path / "unet_only"
    random_world_unet().save_pretrained(unet_dir)
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights"):
        load_teacher(TeacherConfig(path=unet_dir))
    (unet_dir / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="could not load UNet2DConditionModel"):
        load_teacher(TeacherConfig(path=unet_dir))
    sd_root = tmp_path / "sd"
    random_world_unet().save_pretrained(sd_root / "unet")
    with pytest.raises(UserError, match="set teacher.subfolder: unet"):
        load_teacher(TeacherConfig(path=sd_root))
    with pytest.raises(UserError, match="no sibling vae"):
        load_teacher(TeacherConfig(path=sd_root, subfolder="unet"))


def test_plain_unet_folder_loads_as_pixel_teacher(tmp_path):
    source = random_world_unet(cross_attention_dim=16, sample_size=16)
    source.save_pretrained(tmp_path)
    teacher = load_teacher(TeacherConfig(path=tmp_path))
    assert not teacher.latent and teacher.vae is None
    assert (teacher.in_channels, teacher.sample_size) == (3, 16)
    assert not teacher.unet.training and not any(p.requires_grad for p in teacher.unet.parameters())
    assert teacher.scheduler_config["num_train_timesteps"] == 1000
    assert torch.equal(teacher.unet.conv_in.weight, source.conv_in.weight)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "squaredcos_cap_v2"}))
    assert load_teacher(TeacherConfig(path=tmp_path)).scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    half = tmp_path / "fp16_variant"  # only variant weights: found and loaded from safetensors
    source.save_pretrained(half, variant="fp16")
    assert torch.equal(load_teacher(TeacherConfig(path=half)).unet.conv_in.weight, source.conv_in.weight)


def write_tiny_sd_folder(root: Path) -> None:
    """A tiny random Stable-Diffusion-shaped folder: unet, vae, text_encoder, tokenizer, scheduler."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet_from_config_file(UNETS / "tiny-sd.json").save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 16], layers_per_block=1,
                  norm_num_groups=8, sample_size=16, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=60, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=16)).save_pretrained(root / "text_encoder")
    letters = "abcdefghijklmnopqrstuvwxyz "
    vocab = {c: i for i, c in enumerate(letters.strip())}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate(letters.strip())})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16)
    tokenizer.save_pretrained(root / "tokenizer")
    PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  skip_prk_steps=True).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def test_stable_diffusion_folder_loads_with_subfolder_and_builds_students(tmp_path):
    write_tiny_sd_folder(tmp_path)
    teacher = load_teacher(TeacherConfig(path=tmp_path, subfolder="unet"))
    assert teacher.latent and isinstance(teacher.vae, AutoencoderKL)
    assert (teacher.in_channels, teacher.sample_size, teacher.subfolder) == (4, 8, "unet")
    assert teacher.scheduler_config["beta_schedule"] == "scaled_linear"
    assert teacher.scheduler_config["beta_end"] == pytest.approx(0.012)
    assert not any(p.requires_grad for p in teacher.vae.parameters())
    student, report = build_student(teacher.unet, StudentConfig(variant="small"))
    assert report.skipped == [] and parameter_count(student) < parameter_count(teacher.unet)
    assert len(feature_pairs(teacher.unet, student)) == 8
    (tmp_path / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(UserError, match="scheduler_config.json"):
        load_teacher(TeacherConfig(path=tmp_path, subfolder="unet"))


# ---------------------------------------------------------------------------- export and helpers
def test_export_student_is_complete_and_replaces_atomically(tmp_path):
    teacher = random_world_unet()
    student, _ = student_of(teacher, "tiny")
    card = {"teacher": "world", "variant": "tiny", "teacher_parameters": parameter_count(teacher),
            "strategy": "aria", "steps": 10, "data": "shapes", "seed": 3, "config": {"seed": 3, "path": tmp_path}}
    out = tmp_path / "student"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    assert export_student(torch.nn.DataParallel(student), out, card) == out
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temp folders left
    facts = json.loads((out / "aria.json").read_text())
    assert facts == {**card, "student_parameters": parameter_count(student),
                     "config": {"seed": 3, "path": str(tmp_path)}}
    readme = (out / "README.md").read_text()
    assert "tiny" in readme and f"| student_parameters | {parameter_count(student):,} |" in readme
    assert "| config | see `aria.json` |" in readme and "| teacher | world |" in readme
    loaded = UNet2DConditionModel.from_pretrained(out, local_files_only=True)
    assert parameter_count(loaded) == parameter_count(student)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ValueError, match="steps"):
        export_student(student, tmp_path / "other", {k: v for k, v in card.items() if k != "steps"})
    assert not (tmp_path / "other").exists()


def test_unet_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        unet_from_config_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1,")
    with pytest.raises(UserError, match="not valid JSON"):
        unet_from_config_file(tmp_path / "bad.json")
    (tmp_path / "vae.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="UNet2DConditionModel"):
        unet_from_config_file(tmp_path / "vae.json")


def test_random_world_unet_is_pixel_space_and_seeded():
    unet = random_world_unet(cross_attention_dim=384, sample_size=32)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (3, 3, 32)
    assert len(unet.down_blocks) == 4 and unet.config.cross_attention_dim == 384
    state = torch.get_rng_state()
    again = random_world_unet()
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(unet.conv_in.weight, again.conv_in.weight)
    assert not torch.equal(unet.conv_in.weight, random_world_unet(seed=1).conv_in.weight)
