"""The CLI: one-line errors with exit status 2, --debug tracebacks, --dry-run."""

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
