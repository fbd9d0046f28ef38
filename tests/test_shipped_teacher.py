"""The shipped world teacher loads offline from the package and denoises fresh renders."""

import itertools

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
