"""Atomic checkpoints: manifest checks, damaged checkpoints, pruning, resume-config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aria import checkpoint as ckpt
from aria.config import RunConfig, config_to_dict
from aria.errors import UserError


class OneRank:
    """The TorchBackend's save/load on one process, with a real optimizer."""

    is_main, rank, world_size = True, 0, 1

    def __init__(self, model):
        from aria.backends import warmup_factor

        self.optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_factor(3))
        self.device = torch.device("cpu")

    def barrier(self):
        pass

    def save(self, folder):
        from aria.backends import TorchBackend

        return TorchBackend.save(self, folder)

    def load(self, folder):
        from aria.backends import TorchBackend

        return TorchBackend.load(self, folder)


def trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    backend = OneRank(model)
    model(torch.randn(4, 3)).pow(2).mean().backward()
    backend.optimizer.step()
    backend.scheduler.step()
    return model, backend


def save(root, step, model, backend, keep=5):
    return ckpt.save_checkpoint(root, step, backend, student=model, training_state={"step": step},
                                config={"seed": 0}, ema={"w": torch.ones(2)}, keep=keep)


def test_save_verify_load_roundtrip(tmp_path):
    model, backend = trained()
    folder = save(tmp_path, 7, model, backend)
    assert folder.name == "step-00000007" and ckpt.verify(folder) is None
    assert not list(tmp_path.glob("*.tmp"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"student.safetensors", "ema.safetensors", "training.pt", "state.json",
                                      "config.json"}
    torch.load(folder / "training.pt", weights_only=True)  # tensors and primitives only
    fresh, other = trained(seed=1)
    fresh.load_state_dict(ckpt.load_weights(folder))
    other.load(folder)
    torch.testing.assert_close(fresh.weight, model.weight)
    assert other.scheduler.last_epoch == backend.scheduler.last_epoch
    s1, s2 = backend.optimizer.state_dict()["state"][0], other.optimizer.state_dict()["state"][0]
    torch.testing.assert_close(s1["exp_avg"], s2["exp_avg"])
    assert ckpt.read_state(folder) == ({"step": 7}, {"seed": 0})


def test_damaged_latest_falls_back_to_the_previous(tmp_path):
    model, backend = trained()
    save(tmp_path, 2, model, backend)
    latest = save(tmp_path, 4, model, backend)
    data = (latest / "student.safetensors").read_bytes()
    (latest / "student.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    reports = []
    assert ckpt.latest_good(tmp_path, reports.append).name == "step-00000002"
    assert "step-00000004" in reports[0] and "bytes" in reports[0]
    (latest / "student.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, flipped bit
    assert "checksum" in ckpt.verify(latest)
    (latest / "manifest.json").unlink()
    assert ckpt.verify(latest) == "no manifest"


def test_keep_prunes_old_checkpoints_and_temp_folders(tmp_path):
    model, backend = trained()
    (tmp_path / "step-00000001.tmp").mkdir()  # a crash mid-write
    for step in (2, 4, 6):
        save(tmp_path, step, model, backend, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000006", "step-00000004"]
    assert not list(tmp_path.glob("*.tmp"))


def config_dict(**changes):
    data = config_to_dict(RunConfig())
    for dotted, value in changes.items():
        node = data
        *parts, last = dotted.split("__")
        for p in parts:
            node = node[p]
        node[last] = value
    return data


@pytest.mark.parametrize("field, value", [
    ("seed", 3), ("distillation__batch_size", 32), ("student__variant", "tiny"), ("strategy__name", "rc"),
    ("data__world__skew", 2.0), ("teacher__path", "/elsewhere"), ("regions__k", 8),
])
def test_resume_refuses_a_changed_field(field, value):
    with pytest.raises(UserError, match=field.replace("__", ".")):
        ckpt.check_resume_config(config_dict(), config_dict(**{field: value}), {"eps": 0.2}, {"eps": 0.2})


def test_resume_allows_harmless_changes_and_compares_resolved_strategy_params():
    ckpt.check_resume_config(config_dict(), config_dict(distillation__steps=99, distillation__lr=1.0,
                                                        logging__every=3), {"eps": 0.2}, {"eps": 0.2})
    with pytest.raises(UserError, match="strategy.params.aria.eps is 0.2 in the checkpoint but 0.3"):
        ckpt.check_resume_config(config_dict(), config_dict(), {"eps": 0.2}, {"eps": 0.3})
