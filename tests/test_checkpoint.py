"""Atomic checkpoints: manifest checks, damaged checkpoints, pruning, resume-config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aria.training import checkpoint as ckpt
from aria.config import DistillConfig, RunConfig, config_to_dict
from aria.errors import UserError


class OneRank:
    """The TorchBackend's save/load on one process, with a real optimizer (of ``distill``'s settings)."""

    is_main, rank, world_size = True, 0, 1

    def __init__(self, model, distill=None):
        from aria.training.backends import distill_lr_factor

        self.distill = distill or DistillConfig(lr=0.1, weight_decay=0.01, warmup_steps=3)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.distill.lr,
                                           weight_decay=self.distill.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, distill_lr_factor(self.distill))
        self.device = torch.device("cpu")

    def barrier(self):
        pass

    def save(self, folder):
        from aria.training.backends import TorchBackend

        return TorchBackend.save(self, folder)

    def load(self, folder, step=None):
        from aria.training.backends import TorchBackend

        return TorchBackend.load(self, folder) if step is None else TorchBackend.load(self, folder, step)


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


def test_load_applies_this_runs_lr_weight_decay_and_schedule(tmp_path):
    """A resume's load restores the saved optimizer and LR schedule, then this run's distillation.lr (the
    schedule's base LR), weight_decay and schedule apply from the checkpoint's step on; unchanged settings give
    the saved state back bit for bit."""
    from aria.training.backends import lr_factor

    model, backend = trained()  # lr 0.1, weight_decay 0.01, warmup 3: one step done
    folder = save(tmp_path, 1, model, backend)
    same = OneRank(torch.nn.Linear(3, 2))
    same.load(folder)
    assert same.optimizer.state_dict()["param_groups"] == backend.optimizer.state_dict()["param_groups"]
    assert same.scheduler.state_dict() == backend.scheduler.state_dict()

    changed = OneRank(torch.nn.Linear(3, 2), DistillConfig(lr=0.01, weight_decay=0.2, warmup_steps=4,
                                                           lr_schedule="cosine", lr_final=0.5, steps=6))
    changed.load(folder)
    factor = lr_factor(4, "cosine", 6, 0.5)
    group = changed.optimizer.param_groups[0]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (0.01 * factor(1), 0.01, 0.2)
    assert changed.scheduler.base_lrs == [0.01] and changed.scheduler.get_last_lr() == [0.01 * factor(1)]
    for step in (2, 3, 4, 5):  # the new schedule continues from the checkpoint's step
        changed.optimizer.step()
        changed.scheduler.step()
        assert changed.optimizer.param_groups[0]["lr"] == 0.01 * factor(step)
    s1, s2 = backend.optimizer.state_dict()["state"][0], changed.optimizer.state_dict()["state"][0]
    torch.testing.assert_close(s1["exp_avg"], s2["exp_avg"])  # the moments are the checkpoint's

    behind = OneRank(torch.nn.Linear(3, 2))
    # the schedule stands at the checkpoint's step (a function of the step index); load says where it stood
    assert behind.load(folder, step=3) == 1 and same.load(folder) == 1
    assert behind.scheduler.last_epoch == 3 and behind.optimizer.param_groups[0]["lr"] == 0.1 * lr_factor(3)(3)


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
    # the optimizer's and the LR schedule's settings, and the EMA, are applied from the resumed step on
    ckpt.check_resume_config(config_dict(), config_dict(distillation__weight_decay=0.1, distillation__warmup_steps=9,
                                                        distillation__lr_schedule="cosine", distillation__lr_final=0.2,
                                                        distillation__ema_decay=0.99), {}, {})
    with pytest.raises(UserError, match="strategy.params.aria.eps is 0.2 in the checkpoint but 0.3"):
        ckpt.check_resume_config(config_dict(), config_dict(), {"eps": 0.2}, {"eps": 0.3})


def test_resume_allows_moving_the_data_cache():
    """data.cache_dir only says where caches live: moving it is no other config (data.* else is)."""
    ckpt.check_resume_config(config_dict(), config_dict(data__cache_dir="/moved/cache"), {}, {})
    with pytest.raises(UserError, match="data.source"):
        ckpt.check_resume_config(config_dict(), config_dict(data__source="files"), {}, {})


def test_resume_checkpoint_names_the_folder_and_what_it_holds(tmp_path):
    root = tmp_path / "checkpoints"
    with pytest.raises(UserError, match=r"--resume: no checkpoint in .*checkpoints \(the folder does not exist\)"):
        ckpt.resume_checkpoint(root)
    root.mkdir()
    with pytest.raises(UserError, match=r"no checkpoint in .*\(the folder holds no step-\* checkpoint\)"):
        ckpt.resume_checkpoint(root)
    (root / "step-00000002.tmp").mkdir()  # killed during the first write
    with pytest.raises(UserError, match=r"no checkpoint in .*\(only an unfinished write: step-00000002.tmp\)"):
        ckpt.resume_checkpoint(root)
    model, backend = trained()
    save(root, 2, model, backend)
    latest = save(root, 4, model, backend)
    (latest / "manifest.json").unlink()
    reports = []
    assert ckpt.resume_checkpoint(root, reports.append).name == "step-00000002"
    assert len(reports) == 1 and "step-00000004 is damaged (no manifest)" in reports[0]
    (root / "step-00000002" / "state.json").write_text("{}")
    with pytest.raises(UserError, match=r"--resume: no usable checkpoint in .*checkpoints: 2 damaged "
                                        r"\(step-00000004: no manifest; step-00000002: state.json has 2 bytes"):
        ckpt.resume_checkpoint(root, reports.append)
    assert len(reports) == 1  # nothing reported when nothing is used: the error says it all


def files_under(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_failed_write_removes_the_partial_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
    """A full disk while the student's weights are written: one CheckpointWriteError naming the folder and
    the system's reason; no step-*.tmp left, the previous checkpoint untouched and still verified."""
    import errno

    model, backend = trained()
    save(tmp_path, 2, model, backend)
    before = files_under(tmp_path)

    def full_disk(tensors, path):
        Path(path).write_bytes(b"\0" * 100)  # a partial file, as a real full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"cannot write checkpoint .*step-00000004.tmp: \[Errno 28\] "
                                                        r"No space left on device; .*step-00000002 is intact") as err:
        save(tmp_path, 4, model, backend)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    assert files_under(tmp_path) == before and not list(tmp_path.glob("*.tmp"))
    assert ckpt.latest_good(tmp_path).name == "step-00000002"


def test_a_full_disk_in_torch_save_is_named(tmp_path):
    """torch.save under a file-size limit (a full disk) raises RuntimeError('... unexpected pos ...'): the
    OSError behind it is what the message names. Run in a subprocess, the limit set for it alone."""
    import resource
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_checkpoint import OneRank
        from aria.training import checkpoint as ckpt
        model = torch.nn.Linear(512, 512)
        backend = OneRank(model)
        model(torch.randn(4, 512)).pow(2).mean().backward()
        backend.optimizer.step()  # optimizer state: 2 x 1 MiB, over the limit
        try:
            ckpt.save_checkpoint({str(tmp_path / "checkpoints")!r}, 1, backend, student=model, training_state={{}},
                                 config={{}})
        except ckpt.CheckpointWriteError as err:
            print("error:", err)
    """)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=limit,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step-00000001.tmp: [Errno 27] File too large" in proc.stdout, proc.stdout
    assert "there is no earlier checkpoint" in proc.stdout
    assert not (tmp_path / "checkpoints").exists()  # the partial checkpoint is gone, and the folder it made
