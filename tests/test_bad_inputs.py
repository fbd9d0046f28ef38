"""The bad-input corpus: every user mistake is one line on stderr naming the field or file, exit status 2,
no traceback, and nothing left behind that a later run could take for a result.

Each case runs ``python -m aria.cli ...`` in a subprocess. The inputs are data in ``tests/bad_inputs/``
(configs, prompt files; see its README.md), plus small folders the fixtures build when they must be
binary, large or stateful (teacher folders, checkpoints, a student). Placeholders in a case's arguments:

    {bad}     tests/bad_inputs              {tiny}   configs/tiny-test.yaml
    {case}    this case's empty folder      {out}    {case}/out (never created by the test)
    {cache}   a data cache shared by cases  {file}   a regular file in {case}
    {shared}  session folder of fixtures (paired dirs, teachers, student; see ``shared``)

"Unwritable": the tests run as root, for whom chmod 0o500 does not stop writes, so an unwritable
folder is a path under a regular file (``{file}/sub``), which nobody can create.

After each case the files under {case} (and the shared student folder) must be exactly as before:
no output_dir, no student/, metrics.jsonl, checkpoint, eval or grid left behind.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BAD = TESTS / "bad_inputs"
TINY = REPO / "configs" / "tiny-test.yaml"
SHIPPED_TEACHER = REPO / "aria" / "world" / "assets" / "teacher"
TIMEOUT_S = 120  # a case that neither fails nor ends by then started real work: it did not reject the input


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[str]  # substrings of the one stderr line (the field or file, and the problem)
    setup: str | None = None  # name of a function below that prepares {case}
    fsize_limit: int | None = None  # RLIMIT_FSIZE of the subprocess (a full disk)
    timeout: float = TIMEOUT_S
    xfail: str | None = None  # exact bug, for cases failing in modules this corpus may not fix
    slow: bool = False
    marks: list = field(default_factory=list)


def run_(config: str, *extra: str) -> list[str]:
    """``aria run`` writing under {case} and the shared cache."""
    return ["run", "--config", config, "--set", "output_dir={out}", "--set", "data.cache_dir={cache}", *extra]


def files_run(*extra: str, prompts: str = "{bad}/prompts/three_prompts.txt", paired: str = "{shared}/paired") -> list[str]:
    return run_("{bad}/configs/files_source.yaml", "--set", f"data.prompts_file={prompts}",
                "--set", f"data.paired_dir={paired}", *extra)


def cfg(name: str) -> str:
    return f"{{bad}}/configs/{name}.yaml"


TINY_RUN = ("--set", "data.world.num_prompts=2000")

CASES = [
    # ---------------------------------------------------------------- config keys, types and values
    Case("unknown-top-key", run_(cfg("unknown_top_key")), ["bogus_key", "unknown key"]),
    Case("misspelt-top-key", run_(cfg("misspelt_top_key")), ["sed", "unknown key"]),
    Case("misspelt-nested-key", run_(cfg("misspelt_nested_key")), ["distillation.learning_rate", "unknown key"]),
    Case("misspelt-deep-key", run_(cfg("misspelt_deep_key")), ["data.world.num_prompt", "unknown key"]),
    Case("misspelt-key-via-set", run_(str(TINY), "--set", "distillation.lrr=1e-3"), ["distillation.lrr", "unknown key"]),
    Case("wrong-type-int", run_(cfg("wrong_type_int")), ["distillation.steps", "'ten'"]),
    Case("wrong-type-section", run_(cfg("wrong_type_section")), ["logging"]),
    Case("wrong-type-list", run_(cfg("wrong_type_list")), ["regions.metadata_keys"]),
    Case("wrong-type-bool", run_(cfg("wrong_type_bool")), ["student.init_from_teacher", "'maybe'"]),
    Case("wrong-type-via-set", run_(str(TINY), "--set", "distillation.batch_size=eight"),
         ["distillation.batch_size", "'eight'"]),
    Case("lr-negative", run_(cfg("lr_negative")), ["distillation.lr", "greater than 0"]),
    Case("lr-zero", run_(cfg("lr_zero")), ["distillation.lr", "greater than 0"]),
    Case("lr-infinite", run_(cfg("lr_infinite")), ["distillation.lr", "finite"]),
    Case("k-zero", run_(cfg("k_zero")), ["regions.k", "greater than or equal to 1"]),
    Case("k-above-pool", run_(cfg("k_above_pool")), ["regions.k=5000", "2000"]),
    Case("k-above-pool-files", files_run("--set", "regions.k=50"), ["regions.k=50", "(3)"]),
    Case("unknown-variant", run_(cfg("unknown_variant")), ["student.variant", "'huge'"]),
    Case("world-fractions", run_(cfg("fractions_sum")), ["data.world", "unseen_fraction + under_fraction"]),
    Case("world-too-small", run_(cfg("world_too_small")), ["data.world.num_prompts"]),
    Case("world-below-combinations", run_(cfg("world_below_combinations")), ["world.num_prompts=200", "1728"]),
    Case("world-paired-size", run_(cfg("paired_size_too_small")), ["world.paired_size=100", "too small"]),
    Case("files-without-prompts", run_(cfg("files_without_prompts")), ["data", "prompts_file"]),
    Case("backend-device", run_(cfg("backend_device")), ["backend.device", "'tpu'"]),
    Case("encoder-device", run_(cfg("encoder_device")), ["encoder.device", "'gpu'"]),
    # ---------------------------------------------------------------- config files
    Case("duplicate-key", run_(cfg("duplicate_key")), ["duplicate_key.yaml", "line 5", "duplicate key 'lr'"]),
    Case("yaml-list", run_(cfg("non_mapping")), ["non_mapping.yaml", "must be a mapping", "list"]),
    Case("yaml-scalar", run_(cfg("scalar")), ["scalar.yaml", "must be a mapping", "str"]),
    Case("yaml-invalid", run_(cfg("invalid_yaml")), ["invalid_yaml.yaml", "invalid YAML"]),
    Case("yaml-invalid-utf8", run_(cfg("invalid_utf8")), ["invalid_utf8.yaml", "not valid UTF-8"]),
    Case("config-missing", run_("{case}/no-such.yaml"), ["no-such.yaml", "does not exist"]),
    Case("config-is-folder", run_("{bad}/configs"), ["configs", "is not a file"]),
    # ---------------------------------------------------------------- strategies
    Case("strategy-unknown-flag", run_(str(TINY), "-s", "thompson"), ["unknown strategy 'thompson'"]),
    Case("strategy-misspelt-flag", run_(str(TINY), "-s", "arai"), ["unknown strategy 'arai'", "did you mean 'aria'"]),
    Case("strategy-unknown-config", run_(cfg("strategy_unknown")), ["unknown strategy 'thompson'"]),
    Case("strategy-misspelt-config", run_(cfg("strategy_misspelt")), ["unknown strategy 'ducp'", "ducb"]),
    Case("strategy-param-type", run_(cfg("strategy_param_type")), ["aria", "eps", "'lots'"]),
    Case("strategy-param-range", run_(cfg("strategy_param_range")), ["aria", "alpha", "1.5"]),
    Case("strategy-param-unknown", run_(cfg("strategy_param_unknown")), ["aria", "epsilon", "unknown key"]),
    Case("strategy-param-via-set", run_(str(TINY), "--set", "strategy.params.dts.gamma=-2"), ["dts", "gamma"]),
    Case("strategy-other-params", run_(cfg("strategy_other_params")), ["exp3", "eps"]),
    Case("strategy-not-mapping", run_(cfg("strategy_not_mapping"), "-s", "rc"), ["strategy must be a mapping"]),
    Case("strategy-params-not-mapping", run_(cfg("strategy_params_not_mapping")), ["strategy.params.aria"]),
    # ---------------------------------------------------------------- command line
    Case("set-without-equals", run_(str(TINY), "--set", "distillation.lr"), ["--set 'distillation.lr'", "key.path=value"]),
    Case("set-empty-key", run_(str(TINY), "--set", "distillation..lr=1"), ["distillation..lr", "empty key"]),
    Case("set-into-value", run_(str(TINY), "--set", "distillation.lr.warm=1"), ["'lr' is not a section"]),
    Case("run-without-config", ["run", "-s", "rc"], ["--config"]),
    Case("run-unknown-flag", run_(str(TINY), "--no-such-flag"), ["--no-such-flag"]),
    # ---------------------------------------------------------------- teacher and student
    Case("teacher-missing", run_(str(TINY), *TINY_RUN, "--set", "teacher.path={case}/no-teacher"),
         ["teacher.path", "no-teacher", "does not exist"]),
    Case("teacher-is-file", run_(str(TINY), *TINY_RUN, "--set", "teacher.path={file}"),
         ["teacher.path", "is not a folder"]),
    Case("teacher-not-diffusers", run_(str(TINY), *TINY_RUN, "--set", "teacher.path={shared}/not-a-model"),
         ["teacher.path", "not-a-model", "not a diffusers model folder"]),
    Case("teacher-wrong-class", run_(str(TINY), *TINY_RUN, "--set", "teacher.path={shared}/a-vae"),
         ["teacher.path", "a-vae", "'AutoencoderKL'", "expected UNet2DConditionModel"]),
    Case("teacher-sd-without-vae", run_(str(TINY), *TINY_RUN, "--set", "teacher.path={shared}/sd-no-vae",
                                        "--set", "teacher.subfolder=unet"),
         ["teacher.path", "sd-no-vae", "no sibling vae"]),
    Case("teacher-sd-without-subfolder", run_(str(TINY), *TINY_RUN, "--set", "teacher.path={shared}/sd-no-vae"),
         ["teacher.path", "sd-no-vae", "teacher.subfolder"]),
    Case("student-base-world-teacher", run_(cfg("student_base_world_teacher")),
         ["student.variant 'base'", "layers_per_block=1"]),
    # ---------------------------------------------------------------- output and cache folders
    Case("output-dir-under-file", run_(str(TINY), *TINY_RUN, "--set", "output_dir={file}/sub"),
         ["output_dir", "is a file"]),
    Case("output-dir-is-file", run_(str(TINY), *TINY_RUN, "--set", "output_dir={file}"),
         ["output_dir", "cannot be a folder"]),
    Case("cache-dir-under-file", files_run("--set", "data.cache_dir={file}/cache"),
         ["data.cache_dir", "Not a directory"]),
    Case("disk-full-cache", files_run("--set", "data.cache_dir={case}/cache",
                                      prompts="{shared}/big_prompts.txt"),
         ["data.cache_dir", "File too large"], fsize_limit=64 * 1024),
    Case("disk-full-checkpoint", run_(str(TINY), "--set", "distillation.steps=2", "--set", "distillation.batch_size=2",
                                      "--set", "distillation.context_cache_mb=0", "--set", "logging.checkpoint_every=1",
                                      "--set", "logging.progress=false"),
         # the data cache fits; the first checkpoint does not: its temporary folder is removed, and the
         # output_dir this run made (metrics.jsonl, an empty checkpoints/) too, as nothing can resume from it
         ["output_dir", "File too large", "step-00000001.tmp", "no earlier checkpoint", "removed"],
         fsize_limit=12 << 20, timeout=600, slow=True),
    # ---------------------------------------------------------------- prompt files and paired folders
    Case("prompts-empty", files_run(prompts="{bad}/prompts/empty.txt"), ["empty.txt", "is empty"]),
    Case("prompts-duplicates-only", files_run(prompts="{bad}/prompts/duplicates_only.txt"),
         ["duplicates_only.txt", "only 1 distinct prompt in 4 lines"]),
    Case("prompts-invalid-utf8", files_run(prompts="{bad}/prompts/invalid_utf8.txt"),
         ["invalid_utf8.txt", "line 3", "invalid UTF-8"]),
    Case("prompts-long-line", files_run(prompts="{bad}/prompts/long_line.txt"),
         ["long_line.txt", "line 2", "too long"]),
    Case("prompts-blank-line", files_run(prompts="{bad}/prompts/blank_line.txt"),
         ["blank_line.txt", "line 2", "blank"]),
    Case("prompts-missing", files_run(prompts="{case}/nope.txt"), ["data.prompts_file", "nope.txt", "does not exist"]),
    Case("prompts-is-folder", files_run(prompts="{bad}/prompts"), ["data.prompts_file", "is not a file"]),
    Case("paired-dir-missing", files_run(paired="{case}/no-paired"), ["data.paired_dir", "no-paired", "does not exist"]),
    Case("paired-dir-no-captions", files_run(paired="{shared}/paired-no-captions"),
         ["data.paired_dir", "has no captions.txt"]),
    # ---------------------------------------------------------------- resume
    Case("resume-other-seed", run_(str(TINY), *TINY_RUN, "--set", "seed=1", "--resume"),
         ["cannot resume", "seed is 0 in the checkpoint but 1"], setup="checkpoint"),
    Case("resume-other-batch-size", run_(str(TINY), *TINY_RUN, "--set", "distillation.batch_size=4", "--resume"),
         ["cannot resume", "distillation.batch_size is 8 in the checkpoint but 4"], setup="checkpoint"),
    Case("resume-other-strategy", run_(str(TINY), *TINY_RUN, "-s", "exp3", "--resume"),
         ["cannot resume", "strategy.name is 'aria' in the checkpoint but 'exp3'"], setup="checkpoint"),
    Case("checkpoints-without-resume", run_(str(TINY), *TINY_RUN),
         ["output_dir", "already holds checkpoints", "--resume"], setup="checkpoint"),
    Case("resume-without-checkpoint", run_(str(TINY), *TINY_RUN, "--resume"),
         ["--resume", "no checkpoint", "out/checkpoints", "does not exist"], timeout=30, slow=True),
    Case("resume-corrupted-only", run_(str(TINY), *TINY_RUN, "--resume"),
         ["--resume", "no usable checkpoint", "1 damaged", "step-00000002: student.safetensors does not match"],
         setup="corrupted_checkpoint", timeout=30, slow=True),
    Case("resume-unfinished-write-only", run_(str(TINY), *TINY_RUN, "--resume"),
         ["--resume", "no checkpoint", "only an unfinished write: step-00000002.tmp"],
         setup="unfinished_checkpoint", timeout=30, slow=True),
    # ---------------------------------------------------------------- eval, sample, theory-sim
    Case("eval-student-missing", ["eval", "--student", "{case}/no-student", "--config", str(TINY)],
         ["--student", "no-student"]),
    Case("eval-config-missing", ["eval", "--student", "{shared}/student", "--config", "{case}/none.yaml"],
         ["none.yaml", "does not exist"]),
    Case("eval-out-unwritable", ["eval", "--student", "{shared}/student", "--config", str(TINY),
                                 "--set", "data.cache_dir={cache}", "--set", "eval.sample_prompts=3",
                                 "--out", "{file}/eval"], ["--out", "eval", "a-file is a file"], timeout=30),
    Case("sample-model-missing", ["sample", "--model", "{case}/no-model", "--prompt", "a red circle",
                                  "--out", "{case}/grid.png"], ["--model", "no-model"]),
    Case("sample-steps-zero", ["sample", "--model", "{shared}/student", "--prompt", "a red circle", "--steps", "0",
                               "--out", "{case}/grid.png"], ["--steps 0"]),
    Case("sample-out-unwritable", ["sample", "--model", "{shared}/student", "--prompt", "a red circle",
                                   "--steps", "1", "--out", "{file}/grid.png"],
         ["--out", "grid.png", "a-file is a file"], timeout=30),
    Case("sample-out-is-folder", ["sample", "--model", "{shared}/student", "--prompt", "a red circle",
                                  "--out", "{case}"], ["--out", "is a folder"]),
    Case("sample-out-unknown-type", ["sample", "--model", "{shared}/student", "--prompt", "a red circle",
                                     "--out", "{case}/grid.xyz"], ["--out", "grid.xyz", "unknown image type"]),
    Case("eval-reference-unwritable", ["eval", "--student", "{shared}/student", "--config", str(TINY),
                                       "--reference", "{file}/ref", "--out", "{case}/eval"],
         ["--reference", "ref", "a-file is a file"]),
    Case("theory-out-unwritable", ["theory-sim", "--quick", "--out", "{file}/theory"], ["--out", "not writable"]),
    Case("theory-config-missing", ["theory-sim", "--quick", "--config", "{case}/none.yaml", "--out", "{case}/t"],
         ["none.yaml"]),
    Case("theory-config-unknown-key", ["theory-sim", "--quick", "--config", "{bad}/theory/unknown_key.yaml",
                                       "--out", "{case}/t"], ["every.seedz", "unknown key"]),
    Case("theory-given-run-config", ["theory-sim", "--quick", "--config", "{bad}/theory/run_config.yaml",
                                     "--out", "{case}/t"], ["run_config.yaml", "unknown key"]),
]


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """Folders shared by the cases (never written by them): paired dirs, teacher look-alikes, a student."""
    root = tmp_path_factory.mktemp("bad-inputs-shared")
    (root / "cache").mkdir()
    paired = root / "paired"
    paired.mkdir()
    (paired / "captions.txt").write_text("a red circle\na blue square\n")
    (root / "paired-no-captions").mkdir()
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "README.md").write_text("just notes\n")
    vae = root / "a-vae"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    sd = root / "sd-no-vae" / "unet"  # a Stable Diffusion layout without its vae/ (weights never read)
    sd.mkdir(parents=True)
    shutil.copy(SHIPPED_TEACHER / "config.json", sd / "config.json")
    (sd / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with open(root / "big_prompts.txt", "w") as f:  # > 64 KiB of distinct prompts
        f.writelines(f"a red circle number {i} in the upper left corner\n" for i in range(4000))
    return root


@pytest.fixture(scope="session")
def student(shared):
    """An exported student (random weights, shapes of the world teacher) for eval / sample cases."""
    import torch

    from aria.config import config_to_dict, load_config
    from aria.models import export_student
    from aria.models.export import random_world_unet

    config = load_config(TINY, [f"data.cache_dir={shared / 'cache'}"])
    torch.manual_seed(0)
    unet = random_world_unet(cross_attention_dim=384, sample_size=32)
    card = {"teacher": "shipped", "variant": "small", "teacher_parameters": 0, "strategy": "aria", "steps": 1,
            "data": "shapes", "config": config_to_dict(config),
            "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}}
    return export_student(unet, shared / "student", card)


def _write_checkpoint(out: Path, cache: Path, corrupt: bool = False) -> None:
    """A checkpoint as the engine writes it for configs/tiny-test.yaml (seed 0, batch 8, aria)."""
    import torch

    from aria.training import checkpoint as ckpt
    from aria.config import config_to_dict, load_config
    from aria.strategies import create_strategy

    class OneRank:
        is_main, rank, world_size = True, 0, 1

        def barrier(self):
            pass

        def save(self, folder):
            torch.save({"optimizer": {}}, Path(folder) / "training.pt")

    config = load_config(TINY, [f"output_dir={out}", f"data.cache_dir={cache}", "data.world.num_prompts=2000"])
    strategy = create_strategy(config.strategy.name, config.strategy.params_for())
    state = {"step": 2, "world_size": 1, "backend": "torch",
             "strategy": {"name": "aria", "config": strategy.config.model_dump(mode="json"), "state": "{}"},
             "distiller": {}, "nonfinite": {"consecutive": 0, "total": 0}, "window": {"sums": [], "counts": []}}
    folder = ckpt.save_checkpoint(ckpt.checkpoint_dir(out), 2, OneRank(), student=torch.nn.Linear(2, 2),
                                  training_state=state, config=config_to_dict(config))
    if corrupt:
        data = bytearray((folder / "student.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (folder / "student.safetensors").write_bytes(bytes(data))


SETUPS = {
    "checkpoint": lambda case, cache: _write_checkpoint(case / "out", cache),
    "corrupted_checkpoint": lambda case, cache: _write_checkpoint(case / "out", cache, corrupt=True),
    # killed during its first checkpoint write: checkpoints/ holds only the temporary folder
    "unfinished_checkpoint": lambda case, cache: (case / "out" / "checkpoints" / "step-00000002.tmp").mkdir(parents=True),
}


def snapshot(*roots: Path) -> dict:
    """Every file (size, mtime) and folder under ``roots``; folders of a case's own data cache
    (``{case}/cache``) may appear, files there may not."""
    found = {}
    for root in roots:
        found[str(root)] = "dir" if root.is_dir() else root.exists()
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_dir() and (root / "cache" == p or root / "cache" in p.parents):
                    continue
                st = p.lstat()
                found[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else "dir"
    return found


def _params():
    for c in CASES:
        marks = list(c.marks)
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        if c.slow:
            marks.append(pytest.mark.slow)
        yield pytest.param(c, id=c.id, marks=marks)


def test_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    text = "\n".join(" ".join(c.args) for c in CASES)
    unused = [str(p.relative_to(BAD)) for p in sorted(BAD.rglob("*"))
              if p.is_file() and p.suffix in (".yaml", ".txt") and p.name not in text]
    assert not unused, f"corpus files no case uses: {unused}"


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case: Case, tmp_path, shared, request):
    if any(a.startswith("{shared}/student") for a in case.args):
        request.getfixturevalue("student")
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    (case_dir / "a-file").write_text("a regular file: nothing can be created under it\n")
    cache = shared / "cache"
    if case.setup:
        SETUPS[case.setup](case_dir, cache)
    values = {"bad": str(BAD), "tiny": str(TINY), "case": str(case_dir), "out": str(case_dir / "out"),
              "cache": str(cache), "file": str(case_dir / "a-file"), "shared": str(shared)}
    args = [a.format(**values) for a in case.args]
    watched = [case_dir, shared / "student", shared / "eval"]  # eval's default --out: next to the student
    before = snapshot(*watched)

    def limits():  # a full disk: writes past fsize_limit fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize_limit, case.fsize_limit))

    env = {k: v for k, v in os.environ.items() if k not in ("ARIA_DEBUG", "PYTHONWARNINGS")}  # a user's shell
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "aria.cli", *args], cwd=case_dir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=limits if case.fsize_limit else None)
    try:
        stdout, stderr = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running after {case.timeout:.0f} s: the input was not rejected before real work")
    elapsed = time.perf_counter() - t0
    request.node.user_properties.append(("seconds", round(elapsed, 2)))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr: {stderr[-2000:]}"
    assert len(lines) == 1, f"{len(lines)} stderr lines: {lines[:8]}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in case.expect:
        assert needle in line, f"{needle!r} not in {line!r}"
    after = snapshot(*watched)
    assert after == before, f"left behind: {sorted(set(after) - set(before))[:10]}; changed: " \
                            f"{sorted(k for k in before if k in after and after[k] != before[k])[:10]}"
