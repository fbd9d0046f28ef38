"""The shipped world teacher loads offline from the package and denoises fresh renders."""

import itertools
import json

import numpy as np
import torch

from aria.config import EncoderConfig, TeacherConfig
from aria.data.encoders import build_encoder
from aria.models import load_teacher
from aria.world import shapes
from aria.world.prompts import generate


def eps_error(unet, x0, context, t, noise, scheduler_alphas):
    a = scheduler_alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.inference_mode():
        eps = unet(x_t, t, encoder_hidden_states=context).sample
    return float(((eps - noise) ** 2).mean())


def test_shipped_teacher_denoises_far_better_than_a_random_unet():
    torch.manual_seed(0)
    teacher = load_teacher(TeacherConfig())  # path None: the shipped folder, no network
    assert teacher.path.name == "teacher" and not teacher.latent
    combos, texts = generate(1800, 1.0, 0)
    texts = list(itertools.islice(texts, 16))
    images = shapes.to_tensor_range(shapes.render(np.asarray(combos[:16]), seed=12345))
    x0 = torch.as_tensor(images)
    encoder = build_encoder(EncoderConfig(device="cpu"), "cpu")
    context = torch.as_tensor(encoder.encode_tokens(texts))
    from diffusers import DDPMScheduler, UNet2DConditionModel

    alphas = DDPMScheduler.from_config(teacher.scheduler_config).alphas_cumprod
    t = torch.full((16,), 300, dtype=torch.long)
    noise = torch.randn_like(x0)
    trained = eps_error(teacher.unet.float(), x0, context, t, noise, alphas)
    random = eps_error(UNet2DConditionModel.from_config(teacher.unet.config).eval(), x0, context, t, noise, alphas)
    assert trained < 0.2 * random, (trained, random)


def test_the_default_teacher_follows_the_world(tmp_path):
    """Without teacher.path a run distils from the teacher its world (data.source) ships: concepts reads
    assets/concepts-teacher, not the shapes teacher (same encoder width and image shape: no check would
    catch the swap); the setup line names which one. data.source files ships none: one line naming teacher.path."""
    import pytest

    from aria.config import load_config
    from aria.errors import UserError
    from aria.models.teacher import SHIPPED_TEACHER, SHIPPED_TEACHERS, check_teacher, describe_teacher, teacher_root
    from aria.world.worlds import ASSETS, WORLDS

    assert set(SHIPPED_TEACHERS) == set(WORLDS)  # every embedded world ships a teacher
    assert SHIPPED_TEACHER == SHIPPED_TEACHERS["shapes"] == ASSETS / "teacher"
    assert SHIPPED_TEACHERS["concepts"] == ASSETS / "concepts-teacher"
    config = load_config(None, ["data.source=concepts", f"output_dir={tmp_path / 'run'}"])
    assert config.teacher.path is None
    teacher = load_teacher(config.teacher, source=config.data.source)
    assert teacher.path == ASSETS / "concepts-teacher"
    concepts = json.loads((ASSETS / "concepts-teacher" / "config.json").read_text())
    assert check_teacher(config.teacher, config.data.source) == concepts
    assert describe_teacher(config.teacher, "concepts") == f"the shipped concepts world teacher ({teacher.path})"
    assert teacher_root(TeacherConfig(), "shapes") == ASSETS / "teacher"
    assert teacher_root(TeacherConfig(path=tmp_path), "files") == tmp_path  # teacher.path wins in every world
    for call in (lambda: check_teacher(TeacherConfig(), "files"),
                 lambda: load_teacher(TeacherConfig(), source="files")):
        with pytest.raises(UserError) as err:
            call()
        assert "teacher.path" in str(err.value) and "'files'" in str(err.value) and "\n" not in str(err.value)
