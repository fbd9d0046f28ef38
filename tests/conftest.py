"""Shared fixtures: a skip hook for GPU tests, one CPU thread per process, and a small synthetic world
(bundle + random teacher) that the engine tests and their subprocesses (``python -c`` with this folder on
sys.path) build identically from a seed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# One intra-op thread in this process and, through the environment, in every subprocess a test starts
# (aria run, torchrun ranks, benchmarks): the models of the tests are tiny, and on 2 shared cores a second
# OpenMP thread waits at every barrier for a core that another process holds (test_models took 68 s with
# two threads under load, 15 s with one). A value set outside pytest wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

TESTS = Path(__file__).resolve().parent
THREADS = max(1, int(os.environ["OMP_NUM_THREADS"])) if os.environ["OMP_NUM_THREADS"].isdigit() else 1
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts with THREADS intra-op threads, whatever an earlier one left (a module fixture
    that sets two, a run with backend.cpu_threads)."""
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class FakePool:
    def __init__(self, texts):
        self._texts = list(texts)

    def __len__(self):
        return len(self._texts)

    def texts(self, ids):
        return [self._texts[i] for i in np.asarray(ids, dtype=np.int64)]


class FakeEncoder:
    """Deterministic token states from a hash of the text (shape (n, L, D)), like ``TextEncoder``."""

    batch_size, max_length, dim = 64, 4, 16

    def token_states(self, texts):
        out = np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:15], 16))
                        .standard_normal((self.max_length, self.dim)) for t in texts]) if texts else \
            np.zeros((0, self.max_length, self.dim))
        return torch.from_numpy(out.astype(np.float32))

    def encode_tokens(self, texts):
        return self.token_states(texts).numpy()


@dataclass
class Bundle:
    pool: FakePool
    region_of_prompt: np.ndarray
    region_offsets: np.ndarray
    region_members: np.ndarray
    region_info: object
    paired_images: np.ndarray
    paired_prompt_ids: np.ndarray
    regime_of_prompt: np.ndarray
    encoder: FakeEncoder


def make_bundle(num_prompts=60, num_regions=6, paired=24, size=16, seed=0) -> Bundle:
    from aria.strategies import RegionInfo

    rng = np.random.default_rng(seed)
    region = rng.integers(num_regions, size=num_prompts)
    region[:num_regions] = np.arange(num_regions)  # no empty region
    members = np.argsort(region, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(region, minlength=num_regions))])
    regime = (region % 3).astype(np.int8)  # regions 0,3 seen; 1,4 under; 2,5 unseen
    paired_ids = rng.choice(np.flatnonzero(regime == 0), size=paired)
    images = np.tanh(rng.standard_normal((paired, 3, size, size))).astype(np.float32)
    return Bundle(FakePool([f"prompt {i} of region {region[i]}" for i in range(num_prompts)]), region, offsets,
                  members, RegionInfo(np.bincount(region, minlength=num_regions)), images, paired_ids, regime,
                  FakeEncoder())


def make_teacher(size=16, seed=0):
    """A random 3-stage pixel-space UNet (layers_per_block 2, so every BK-SDM variant applies)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from aria.models import Teacher

    cfg = dict(sample_size=size, in_channels=3, out_channels=3, block_out_channels=[8, 16, 16], layers_per_block=2,
               norm_num_groups=4, attention_head_dim=4, cross_attention_dim=FakeEncoder.dim,
               down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(cfg).eval().requires_grad_(False)
    sched = dict(DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").config)
    return Teacher(unet=unet, vae=None, latent=False, sample_size=size, in_channels=3, scheduler_config=sched,
                   path=Path("random-test-teacher"), subfolder=None)


def tiny_config(tmp_path, **sections):
    """A RunConfig from configs/tiny-test.yaml with ``output_dir`` under ``tmp_path`` and overrides
    given as ``section={key: value}``."""
    from aria.config import load_config

    overrides = [f"output_dir={tmp_path / 'run'}"]
    for section, values in sections.items():
        overrides += [f"{section}.{k}={v}" for k, v in values.items()]
    return load_config(TESTS.parent / "configs" / "tiny-test.yaml", overrides)


@pytest.fixture
def world():
    return make_bundle(), make_teacher()


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory):
    """One data cache (data.cache_dir) for the session's tests that prepare the shapes world of 2,000 prompts
    (test_data in this process, test_kill_resume's runs, test_bad_inputs' cases) or the concepts world of 1,000
    (test_data, test_run_outputs' run): a pool's MiniLM embeddings, 7-15 s on a CPU, are computed once; regions
    and paired sets are cached per config beside them."""
    return tmp_path_factory.mktemp("world-cache-2000")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on 2 shared cores, OpenMP barriers cost more than the second core gives."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
