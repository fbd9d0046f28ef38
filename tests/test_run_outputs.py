"""What ``aria run`` leaves and says: setup lines, the plots in the run folder, the next commands,
TensorBoard's per-region curves (on when installed, silent when not), and ``--dry-run`` rejecting
what can be checked without training (placeholder paths, regions.k above the pool, a pipeline
folder without its subfolder, memory) with exit 2 and one line."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from aria.cli.main import main
from aria.errors import UserError
from aria.training import checks, metrics

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "concepts-quick.yaml"


def aria(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "aria.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def one_line_error(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    return lines[0]


# -- the end of a run ---------------------------------------------------------------------------

def test_run_writes_its_plots_and_prints_the_next_commands(tmp_path, world_cache, capsys):
    """The quickstart's config, 4 steps on a small pool: setup lines come first, the plots land in the
    run folder, the closing lines name them and the eval / sample / compare commands. The session's data
    cache: test_data's concepts bundle encodes the same pool of 1,000 prompts; the 4 steps encode their
    captions' contexts as they go, not the whole paired set's up front (distillation.context_cache_mb)."""
    out_dir = tmp_path / "run"
    sets = [f"output_dir={out_dir}", f"data.cache_dir={world_cache}", "distillation.steps=4",
            "logging.every=2", "logging.progress=true", "data.concepts.num_prompts=1000",
            "regions.k=8", "eval.probe_images=4", "eval.probe_timesteps=1", "distillation.context_cache_mb=0"]
    main(["run", "-s", "aria", "--config", str(QUICK), *[a for s in sets for a in ("--set", s)]])
    stdout = capsys.readouterr().out
    lines = stdout.splitlines()
    setup = [line for line in lines if line.startswith("[setup] ")]
    assert [line.split()[1] for line in setup] == ["teacher:", "data:", "student:"]
    assert lines.index(setup[-1]) < next(i for i, line in enumerate(lines) if line.startswith("Run summary"))

    plots = out_dir / "plots"
    names = ("training.png", "allocation.png", "tracking.png")
    for name in names:
        with Image.open(plots / name) as image:
            assert image.size[0] > 600 and image.size[1] > 300
    assert f"plots: {plots} ({', '.join(names)})" in lines
    nxt = lines[lines.index("next:") + 1:lines.index("next:") + 4]
    argv = [shlex.split(line) for line in nxt]
    assert argv[0][:6] == ["aria", "eval", "--student", str(out_dir), "--config", str(QUICK)]
    assert "distillation.steps=4" in argv[0] and f"output_dir={out_dir}" in argv[0]  # the same config
    assert argv[1][:4] == ["aria", "sample", "--model", str(out_dir)] and argv[1][4] == "--prompt"
    assert argv[2][:4] == ["aria", "compare", "--strategies", "rc,aria"]
    assert f"output_dir={out_dir}" not in argv[2]  # compare places its runs itself

    # the sample command's first prompt is a seen caption of the world (from the data line)
    from aria.world import captions

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    data = next(r for r in records if r.get("event") == "data")
    assert argv[1][5] == data["examples"]["seen"] and min(captions.parse_caption(argv[1][5]).values()) >= 0
    assert data["regions"] == 8 and sum(data["sizes"]) == 1000
    for key, count in (("regime", 4), ("family", 8)):
        fractions = np.asarray(data["groups"][key]["fractions"])
        assert fractions.shape == (8, count) and np.allclose(fractions.sum(1), 1, atol=1e-5)


def test_the_data_line_shares_regions_among_regimes_and_prompts_file_groups():
    from conftest import make_bundle

    bundle = make_bundle(num_prompts=60, num_regions=6)  # regime = region % 3
    ids = np.arange(60)
    bundle.group_of_prompt = np.where(ids % 4 == 3, -1, ids % 2)  # a prompts file's groups, -1: none
    bundle.group_names = ("cats", "dogs")
    record = metrics.data_record(bundle)
    regime = np.asarray(record["groups"]["regime"]["fractions"])
    assert regime.shape == (6, 4) and np.array_equal(regime[[0, 3, 1, 2]].argmax(1), [0, 0, 1, 2])
    group = record["groups"]["group"]
    assert group["names"] == ["cats", "dogs", "(no group)"]
    fractions = np.asarray(group["fractions"])
    assert fractions.shape == (6, 3) and np.allclose(fractions.sum(1), 1)
    assert record["sizes"] == np.bincount(bundle.region_of_prompt, minlength=6).tolist()
    assert record["examples"]["seen"] in bundle.pool.texts(np.flatnonzero(bundle.regime_of_prompt == 0))


def log_lines(strategy_switches: bool = True, estimates: bool = True) -> list[dict]:
    lines = [{"event": "data", "regions": 3, "sizes": [10, 20, 30], "examples": {"seen": "a red apple"},
              "groups": {"regime": {"names": ["seen", "under", "unseen", "compositional"],
                                    "fractions": [[1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0]]}}}]
    for step in range(1, 7):
        record = {"step": step, "loss": 1.0 / step, "task": 0.1, "out": 0.2, "feat": 0.3, "switched_fraction": 0.5}
        if step % 2 == 0:
            record["probabilities"] = [0.2, 0.3, 0.5] if strategy_switches else None
            record["estimates"] = [0.1 * step, 0.2, None] if estimates else None
            record["region_discrepancy"] = [0.01, None, 0.03]
        lines.append(record)
    return lines


def test_plots_leave_out_what_the_run_does_not_have(tmp_path):
    from aria.experiment import plots

    def draw(name, lines):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 7, "lo')
        return {Path(p).name for p in plots.run_plots(folder).values()}

    assert draw("aria", log_lines()) == {"training.png", "allocation.png", "tracking.png"}
    assert draw("none", log_lines(strategy_switches=False, estimates=False)) == {"training.png"}
    assert draw("rc", log_lines(estimates=False)) == {"training.png", "allocation.png"}
    assert draw("no-data-line", log_lines()[1:]) == {"training.png", "allocation.png", "tracking.png"}
    assert plots.example_prompts(tmp_path / "aria") == ["a red apple"]
    assert plots.run_plots(tmp_path / "missing") == {}


# -- TensorBoard ----------------------------------------------------------------------------------

class FakeWriter:
    def __init__(self, log_dir, purge_step):
        self.scalars, self.histograms = {}, []

    def add_scalar(self, tag, value, step):
        self.scalars[(tag, step)] = value

    def add_histogram(self, tag, values, step):
        self.histograms.append((tag, step))

    def close(self):
        pass


def test_tensorboard_is_on_when_installed_and_silent_when_not(monkeypatch):
    import importlib.util

    assert metrics.tensorboard_writer_class(False) is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert metrics.tensorboard_writer_class(None) is None  # the default: off, silently
    monkeypatch.setattr(metrics, "summary_writer_class", lambda: pytest.fail("needs the package"))
    assert metrics.tensorboard_writer_class(None) is None


def test_tensorboard_required_names_the_missing_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UserError, match="tensorboard package is not installed"):
        metrics.tensorboard_writer_class(True)


def test_tensorboard_gets_loss_terms_and_per_region_curves(tmp_path, monkeypatch):
    from aria.config import LoggingConfig

    monkeypatch.setattr(metrics, "tensorboard_writer_class", lambda setting: FakeWriter)
    logger = metrics.RunLogger(tmp_path, LoggingConfig(progress=False), 4, 0, 8)
    logger.step({"step": 1, "loss": 0.5, "task": 0.1, "out": 0.2, "feat": 0.2, "switched_fraction": 0.25, "lr": 1e-3})
    logger.step({"step": 2, "loss": 0.4, "task": 0.1, "out": 0.1, "feat": 0.2, "switched_fraction": 0.25, "lr": 1e-3,
                 "probabilities": [0.25, 0.75], "estimates": [1.5, None], "region_discrepancy": [None, 0.02],
                 "feat_blocks": [0.3, 0.1]})
    tb = logger.tb
    logger.close()
    assert {tag for tag, step in tb.scalars if step == 1} >= {"train/loss", "train/task", "train/out", "train/feat"}
    assert tb.scalars[("probability/region_001", 2)] == 0.75 and tb.scalars[("estimate/region_000", 2)] == 1.5
    assert tb.scalars[("observed/region_001", 2)] == 0.02 and ("estimate/region_001", 2) not in tb.scalars
    assert tb.scalars[("feat_blocks/1", 2)] == 0.1 and tb.histograms == [("allocation/probabilities", 2)]


# -- --dry-run ----------------------------------------------------------------------------------

def test_dry_run_rejects_the_placeholder_paths_of_sd_bk_small():
    line = one_line_error(aria("run", "--config", "configs/sd-bk-small.yaml", "--dry-run"))
    assert line.startswith("error: data.prompts_file /path/to/prompt-pool.txt does not exist")
    assert "placeholder" in line


def test_dry_run_names_the_first_bad_path_in_config_order(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    paired = tmp_path / "paired"
    paired.mkdir()
    line = one_line_error(aria("run", "--config", "configs/sd-bk-small.yaml", "--dry-run", "--set",
                               f"data.prompts_file={prompts}", "--set", f"data.paired_dir={paired}",
                               "--set", f"output_dir={tmp_path / 'out'}"))
    assert "encoder.path /path/to/stable-diffusion-v1-4 does not exist" in line
    line = one_line_error(aria("run", "--config", "configs/sd-bk-small.yaml", "--dry-run", "--set",
                               f"data.prompts_file={paired}", "--set", f"output_dir={tmp_path / 'out'}"))
    assert f"data.prompts_file {paired} is not a file" in line


def test_dry_run_rejects_k_above_the_pool(tmp_path):
    base = ["run", "--config", str(QUICK), "--dry-run", "--set", f"output_dir={tmp_path / 'out'}",
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    line = one_line_error(aria(*base, "--set", "regions.k=2001"))
    assert "regions.k=2001 exceeds the number of prompts" in line
    # a files source: the pool is counted from the prompts file and the paired captions
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(10)))
    paired = tmp_path / "paired"
    paired.mkdir()
    (paired / "captions.txt").write_text("prompt 0\nsomething else\n")
    line = one_line_error(aria(*base, "--set", "data.source=files", "--set", f"data.prompts_file={prompts}",
                               "--set", f"data.paired_dir={paired}", "--set", "regions.k=12"))
    assert "regions.k=12 exceeds the number of prompts (11)" in line
    assert not (tmp_path / "out").exists()


def test_dry_run_passes_a_good_config_and_prints_it_with_the_memory_bound(tmp_path):
    out = aria("run", "--config", str(QUICK), "--dry-run", "--set", f"output_dir={tmp_path / 'out'}")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert yaml.safe_load(out.stdout)["output_dir"] == str(tmp_path / "out")
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("# dry run:") and "GiB" in last and "cpu" in last
    assert not (tmp_path / "out").exists()


def test_dry_run_checks_the_teacher_folder_layout(tmp_path):
    pipeline = tmp_path / "sd"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "unet" / "config.json").write_text("{}")
    base = ["run", "--config", str(QUICK), "--dry-run", "--set", f"output_dir={tmp_path / 'out'}",
            "--set", f"teacher.path={pipeline}"]
    assert "is a diffusers pipeline folder (model_index.json) (its UNet is in unet/): set teacher.subfolder: unet" \
        in one_line_error(aria(*base))
    line = one_line_error(aria(*base, "--set", "teacher.subfolder=transformer"))
    assert "without transformer/config.json" in line


def test_memory_bound_above_the_device_is_a_user_error(monkeypatch):
    from aria.config import load_config
    from aria.models.students import student_unet_config

    config = load_config(QUICK)
    teacher = json.loads((ROOT / "aria" / "world" / "assets" / "concepts-teacher" / "config.json").read_text())
    student = student_unet_config(teacher, "tiny")
    report = checks.check_memory(config, teacher, student)
    assert report["teacher_parameters"] > report["student_parameters"] > 0
    monkeypatch.setattr(checks, "_device_memory", lambda backend: ("cpu", 2**20))
    with pytest.raises(UserError, match=r"memory: .* need at least .* GiB on cpu .* but it has 0.0 GiB"):
        checks.check_memory(config, teacher, student)
