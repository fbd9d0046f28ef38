"""A world's judge: a small CNN that reads every attribute of an item back from an image.

Trained here on rendered images with augmentation (noise, blur, brightness/contrast, colour cast) so
that it also reads generated samples; shipped as fp16 safetensors in the world's ``judge_dir``
(``aria.world.worlds``). Train with ``python -m aria.world.judge --world shapes --train`` (a few
minutes on 2 CPU cores; the concepts world's 64-way concept head wants a GPU or more steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from aria.world import shapes
from aria.world.worlds import WORLDS, World

ASSETS = Path(__file__).parent / "assets"
WEIGHTS_FILE, CONFIG_FILE = "judge.safetensors", "judge.json"
DEFAULT_ARCH = {"stages": [[16], [32], [64, 64]], "features": 128}


class JudgeNet(nn.Module):
    """Conv stages (each ends in a 2x2 max-pool: 32 -> 16 -> 8 -> 4), a linear feature layer, 4 heads."""

    def __init__(self, stages=((16,), (32,), (64, 64)), features=128, classes=shapes.NUM_VALUES):
        super().__init__()
        layers, cin = [], 3
        for stage in stages:
            for cout in stage:
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        side = shapes.IMAGE_SIZE >> len(stages)  # every world draws 32x32 images
        layers += [nn.Flatten(), nn.Linear(cin * side * side, features), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in classes)

    def forward(self, x):
        feats = self.trunk(x.contiguous(memory_format=torch.channels_last))
        return feats, [head(feats) for head in self.heads]


class Judge:
    """Inference wrapper around the shipped weights."""

    def __init__(self, net: JudgeNet, config: dict, device="cpu"):
        self.net, self.config, self.device = net.to(device).eval(), config, torch.device(device)
        self.world = WORLDS[config.get("world", "shapes")]
        self.attributes = tuple(config.get("attributes", shapes.ATTRIBUTES))

    @classmethod
    def load(cls, path: Path | str | None = None, device="cpu") -> "Judge":
        """Load ``judge.safetensors`` + ``judge.json`` from ``path`` (default: the shipped assets)."""
        from safetensors.torch import load_file

        folder = Path(path) if path is not None else ASSETS
        config = json.loads((folder / CONFIG_FILE).read_text())
        net = JudgeNet(**config["arch"], classes=tuple(config.get("classes", shapes.NUM_VALUES)))
        state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
        net.load_state_dict(state, strict=False)  # BatchNorm step counters are not shipped
        return cls(net, config, device)

    def _batches(self, images, batch_size):
        for start in range(0, len(images), batch_size):
            yield as_model_input(images[start:start + batch_size], self.device)

    @torch.no_grad()
    def _run(self, images, batch_size=1024):
        feats, logits = [], [[] for _ in self.attributes]
        for x in self._batches(images, batch_size):
            f, outs = self.net(x)
            feats.append(f.float().cpu())
            for store, out in zip(logits, outs):
                store.append(out.float().cpu())
        return torch.cat(feats).numpy(), [torch.cat(s).numpy() for s in logits]

    def predict(self, images, batch_size=1024) -> dict[str, np.ndarray]:
        """uint8 (N, 32, 32, 3) or float (N, 3, 32, 32) in [-1, 1] -> {attribute: int64 (N,)}."""
        _, logits = self._run(images, batch_size)
        return {a: head_logits.argmax(1) for a, head_logits in zip(self.attributes, logits)}

    def features(self, images, batch_size=1024) -> np.ndarray:
        """Penultimate features float32 (N, F), e.g. for a KID-style distance."""
        return self._run(images, batch_size)[0]

    def correct(self, images, items) -> dict[str, np.ndarray]:
        """{attribute: bool (N,)} plus ``all`` (every attribute right) against the intended items."""
        predicted = self.predict(images)
        truth = self.world.attributes_of(items)
        result = {a: predicted[a] == t for a, t in zip(self.attributes, truth)}
        result["all"] = np.logical_and.reduce([result[a] for a in self.attributes])
        return result


def as_model_input(images, device="cpu") -> torch.Tensor:
    """uint8 NHWC (numpy/torch) or float NCHW in [-1, 1] -> float32 NCHW tensor on ``device``."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    elif x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
    return x.to(device=device, dtype=torch.float32).contiguous()


# ---------------------------------------------------------------- training

def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random contrast/brightness/colour cast, blur and Gaussian noise (per image) in [-1, 1] space."""
    n = x.shape[0]

    def rand(*shape):
        return torch.rand(*shape, generator=gen, device=x.device)

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 0.75 + 0.5 * rand(n, 1, 1, 1)
    shift = (rand(n, 1, 1, 1) - 0.5) * 0.3 + (rand(n, 3, 1, 1) - 0.5) * 0.1
    x = (x - mean) * contrast + mean + shift
    blurred = torch.nonzero(rand(n) < 0.4).flatten()
    if len(blurred):
        x[blurred] = _gaussian_blur(x[blurred], 0.3 + 0.7 * rand(len(blurred)))
    noisy = (rand(n, 1, 1, 1) < 0.7).float()
    x = x + noisy * 0.2 * rand(n, 1, 1, 1) * torch.randn(x.shape, generator=gen, device=x.device)
    return x.clamp(-1.5, 1.5)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap Gaussian blur with one sigma per image (replicate padding)."""
    taps = torch.arange(-2, 3, dtype=torch.float32, device=x.device)
    weights = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    weights = (weights / weights.sum(1, keepdim=True))[:, :, None, None, None]  # (m, 5, 1, 1, 1)
    side = x.shape[-1]
    padded = F.pad(x, (2, 2, 0, 0), mode="replicate")
    x = sum(weights[:, k] * padded[..., k:k + side] for k in range(5))
    padded = F.pad(x, (0, 0, 2, 2), mode="replicate")
    return sum(weights[:, k] * padded[..., k:k + side, :] for k in range(5))


def training_batch(world: World, step: int, batch_size: int, seed: int, gen: torch.Generator, device="cpu"):
    rng = np.random.default_rng([seed, step])
    items = rng.integers(0, world.num_items, batch_size)
    images = world.render(items, seed, indices=step * batch_size + np.arange(batch_size))
    x = augment(torch.from_numpy(shapes.to_tensor_range(images)).to(device), gen)
    targets = [torch.from_numpy(t).to(device) for t in world.attributes_of(items)]
    return x, targets


def train(steps=1500, batch_size=128, lr=3e-3, seed=0, arch=None, log_every=100, world: World = WORLDS["shapes"],
          device="cpu") -> JudgeNet:
    """Train a judge from scratch on freshly rendered, augmented images (one-cycle AdamW)."""
    torch.manual_seed(seed)
    net = JudgeNet(**(arch or DEFAULT_ARCH), classes=world.num_values).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator(device).manual_seed(seed)
    net.train()
    start = time.perf_counter()
    for step in range(steps):
        x, targets = training_batch(world, step, batch_size, seed, gen, device)
        _, logits = net(x)
        loss = sum(F.cross_entropy(head_logits, t) for head_logits, t in zip(logits, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    return net.eval()


def accuracy(judge: Judge, seed: int, per_combo: int = 4, noise: float = 0.0) -> dict[str, float]:
    """Per-attribute accuracy on fresh renders of every item of the judge's world (``per_combo`` each)."""
    combos = np.repeat(np.arange(judge.world.num_items), per_combo)
    x = torch.from_numpy(shapes.to_tensor_range(judge.world.render(combos, seed)))
    if noise:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    ok = judge.correct(x, combos)
    return {k: float(v.mean()) for k, v in ok.items()}


def save(net: JudgeNet, folder: Path, config: dict) -> None:
    """fp16 safetensors (BatchNorm counters dropped) + json config."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m aria.world.judge", description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train and write the weights")
    parser.add_argument("--evaluate", action="store_true", help="measure the accuracy of saved weights")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=20_240_601, help="render seed of the accuracy check")
    parser.add_argument("--arch", type=json.loads, default=DEFAULT_ARCH, help="JSON, e.g. %(default)s")
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-item", type=int, default=4, help="renders per item of the accuracy check")
    parser.add_argument("--out", type=Path, default=None, help="default: the world's judge folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.train or args.evaluate):
        parser.error("pass --train and/or --evaluate")
    torch.set_num_threads(args.threads)
    world = WORLDS[args.world]
    args.out = args.out or world.judge_dir
    if args.train:
        start = time.perf_counter()
        net = train(args.steps, args.batch_size, args.lr, args.seed, args.arch, world=world, device=args.device)
        minutes = (time.perf_counter() - start) / 60
        config = {
            "world": world.name, "arch": args.arch, "attributes": list(world.attributes),
            "classes": list(world.num_values),
            "training": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                         "minutes": round(minutes, 1), "torch_threads": args.threads},
        }
        save(net.cpu(), args.out, config)
    judge = Judge.load(args.out, device=args.device)
    config = judge.config
    config["accuracy"] = {
        "eval_seed": args.eval_seed, "images_per_item": args.per_item, "weights": "fp16 as shipped",
        "clean": {k: round(v, 5) for k, v in accuracy(judge, args.eval_seed, args.per_item).items()},
        "noise_0.1": {k: round(v, 5) for k, v in accuracy(judge, args.eval_seed, args.per_item, noise=0.1).items()},
    }
    (args.out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps(config["accuracy"], indent=2))


if __name__ == "__main__":
    main()
