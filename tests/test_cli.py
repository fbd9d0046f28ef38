"""The CLI: one-line errors with exit status 2, --debug tracebacks, --dry-run."""

import json
import subprocess
import sys

import yaml


def aria(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "aria.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_strategies_lists_builtins_with_parameters():
    out = aria("strategies")
    assert out.returncode == 0, out.stderr
    for name in ("none", "rc", "uniform", "exp3", "ducb", "swucb", "dts", "aria"):
        assert f"\n{name}  [built-in]" in "\n" + out.stdout
    assert "alpha: float = 0.05" in out.stdout


def test_user_mistake_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"distillation": {"lr": -1}}))
    out = aria("run", "--config", str(cfg), "--dry-run")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "distillation.lr" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_shows_traceback(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("bogus: 1\n")
    out = aria("--debug", "run", "--config", str(cfg), "--dry-run")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_dry_run_prints_resolved_config(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("{}\n")
    out = aria("run", "-s", "rc", "--config", str(cfg), "--dry-run", "--set", "regions.k=9")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["strategy"]["name"] == "rc" and resolved["regions"]["k"] == 9


def test_unknown_option_exit_2():
    out = aria("run", "--no-such-flag")
    assert out.returncode == 2 and "no-such-flag" in out.stderr


def test_diffusers_notices_that_say_nothing_about_a_run_are_dropped_and_only_they(caplog):
    """The CLI drops diffusers' accelerate notice and its torchao-import notice (where torchao is installed for
    backend.fp8) by logger and message start: they would print on every model load or import and break the
    one-line errors. Other messages of the same loggers still pass."""
    import logging

    from aria.cli.main import _IRRELEVANT_NOTICES, quiet_diffusers_notices

    quiet_diffusers_notices()
    quiet_diffusers_notices()  # once per logger however often it is called
    for name, start in _IRRELEVANT_NOTICES.items():
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_DropNotice" for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            caplog.clear()
            logger.warning(start + " and the rest of the notice")
            logger.warning("a checkpoint is missing keys")
        assert [r.getMessage() for r in caplog.records] == ["a checkpoint is missing keys"]


def test_world_show_draws_the_configured_world(tmp_path):
    """``aria world show`` renders the world the config names (here concepts) and builds only its pool: no
    shapes pool of 100,000 prompts in the cache; the grid is written through a renamed temporary file."""
    cache, png = tmp_path / "cache", tmp_path / "grid.png"
    out = aria("world", "show", "--set", "data.source=concepts", "--set", "data.concepts.num_prompts=1000",
               "--set", f"data.cache_dir={cache}", "--n", "6", "--out", str(png))
    assert out.returncode == 0, out.stderr
    assert "6 renders of the concepts world" in out.stdout
    assert [p.name.split("-")[0] for p in (cache / "pools").iterdir()] == ["concepts"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["cache", "grid.png"]


def _teacher_report() -> dict:
    return {"world": "shapes", "steps": 1, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.999, "seed": 0,
            "train_wall_s": 0.1, "steps_per_s": 10.0, "device": "cpu", "parameters": 1, "encoder": "minilm",
            "unet_config": {}}


def test_teacher_save_is_atomic_and_a_bad_out_fails_before_training(tmp_path, monkeypatch):
    """``train_teacher`` checks its folder (writable, and empty: the save replaces it whole) and device before any
    work (a folder under a file used to be found by the save, after training); ``save_teacher`` writes beside
    the folder and renames: an interrupted save leaves nothing, a finished one replaces a previous teacher whole."""
    import pytest

    from aria.config import load_config
    from aria.errors import UserError
    from aria.models.export import random_world_unet
    from aria.training import world_teacher

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(world_teacher, "_setup", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(UserError, match="teacher folder .*file/teacher: cannot be created"):
        world_teacher.train_teacher(load_config(None, []), tmp_path / "file" / "teacher", steps=1, device="cpu")
    with pytest.raises(UserError, match="device 'gpu'"):
        world_teacher.train_teacher(load_config(None, []), tmp_path / "teacher", steps=1, device="gpu")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("kept")  # the save would replace the folder whole
    with pytest.raises(UserError, match="^teacher folder .*used: is not empty"):
        world_teacher.train_teacher(load_config(None, []), tmp_path / "used", steps=1, device="cpu")
    # the names the errors give: the CLI's options (``aria teacher train`` leaves these checks to train_teacher)
    with pytest.raises(UserError, match="^--out .*used: is not empty"):
        world_teacher.train_teacher(load_config(None, []), tmp_path / "used", steps=1, device="cpu",
                                    out_name="--out", device_name="--device")
    with pytest.raises(UserError, match="^--device 'gpu'"):
        world_teacher.train_teacher(load_config(None, []), tmp_path / "teacher", steps=1, device="gpu",
                                    out_name="--out", device_name="--device")
    assert (tmp_path / "used" / "notes.txt").read_text() == "kept"

    unet, out = random_world_unet(), tmp_path / "teacher"

    def interrupted(report):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(world_teacher, "model_card", interrupted)
        with pytest.raises(KeyboardInterrupt):
            world_teacher.save_teacher(unet, out, _teacher_report())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "used"]  # no teacher/, no temporary folder

    report = world_teacher.save_teacher(unet, out, _teacher_report())
    assert report["weights_mb"] > 0 and sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "training.json"]
    world_teacher.save_teacher(unet, out, {**_teacher_report(), "steps": 2})  # replaces the previous one whole
    assert json.loads((out / "training.json").read_text())["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "teacher", "used"]
