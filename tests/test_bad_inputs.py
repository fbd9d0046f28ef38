"""The bad-input corpus: every user mistake is one line on stderr naming the field or file, exit status 2,
no traceback, and nothing left behind that a later run could take for a result.

Each case runs the ``aria`` entry point (``aria.cli.main.main``, what the console script calls) on its
arguments: in this process by default (fast; stdout/stderr captured at the file descriptors, a warning or
a logged warning counts as a stderr line, torch's global settings and the environment restored after),
or in a fresh ``python -m aria.cli`` process (``proc``) where a case needs one: a hard timeout (inputs that
used to hang), a file-size limit (a full disk), plugins on PYTHONPATH, or a real training run. The inputs
are data in ``tests/bad_inputs/`` (configs, prompt files; see its README.md), plus small folders the
fixtures build when they must be binary, large or stateful (teacher folders, checkpoints, a student,
strategy plugins). Placeholders in a case's arguments:

    {bad}     tests/bad_inputs              {tiny}   configs/tiny-test.yaml
    {case}    this case's empty folder      {out}    {case}/out (never created by the test)
    {cache}   a data cache shared by cases  {file}   a regular file in {case}
              (the session's ``world_cache``: the 2,000-prompt world's embeddings are computed once)
    {shared}  session folder of fixtures (paired dirs, teachers, student, plugins; see ``shared``)

"Unwritable": the tests run as root, for whom chmod 0o500 does not stop writes, so an unwritable
folder is a path under a regular file (``{file}/sub``), which nobody can create.

After each case the files under {case} (and the shared student folder) must be exactly as before:
no output_dir, no student/, metrics.jsonl, checkpoint, eval or grid left behind.

Every case has a class (``kind``): the original corpus (``original``), and the classes of issue #18:
``hang`` (work bounded whatever the input: alias bombs, deep nesting), ``yaml`` (malformed YAML that
parses: non-string keys, empty files, several documents), ``later`` (values the schema used to accept
that failed later or were ignored: negative or huge seeds, sizes, ``true`` for a number, empty paths),
``nonfinite`` (inf / nan where a finite number is meant), ``checkpoint`` (tampered checkpoints),
``cli`` (``aria sample`` / ``eval`` / ``theory-sim`` inputs) and ``plugin`` (a strategy plugin that
breaks the contract or fails to load).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BAD = TESTS / "bad_inputs"
TINY = REPO / "configs" / "tiny-test.yaml"
SHIPPED_TEACHER = REPO / "aria" / "world" / "assets" / "teacher"
TIMEOUT_S = 120  # a case that neither fails nor ends by then started real work: it did not reject the input
KINDS = ("original", "hang", "yaml", "later", "nonfinite", "checkpoint", "cli", "plugin")


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
    kind: str = "original"  # the class of bad input (see the module docstring)
    proc: bool = False  # run in a fresh process (implied by fsize_limit and plugins)
    plugins: str | None = None  # a folder of {shared}/plugins put on PYTHONPATH (its entry points load)


def run_(config: str, *extra: str) -> list[str]:
    """``aria run`` writing under {case} and the shared cache."""
    return ["run", "--config", config, "--set", "output_dir={out}", "--set", "data.cache_dir={cache}", *extra]


def dry(config: str, *sets: str) -> list[str]:
    """``aria run --dry-run`` of ``config`` with ``--set`` overrides."""
    return run_(config, "--dry-run", *[a for s in sets for a in ("--set", s)])


def files_run(*extra: str, prompts: str = "{bad}/prompts/three_prompts.txt",
              paired: str = "{shared}/paired") -> list[str]:
    return run_("{bad}/configs/files_source.yaml", "--set", f"data.prompts_file={prompts}",
                "--set", f"data.paired_dir={paired}", *extra)


def cfg(name: str) -> str:
    return f"{{bad}}/configs/{name}.yaml"


def theory(name: str | None, *extra: str) -> list[str]:
    """``aria theory-sim --quick`` with ``tests/bad_inputs/theory/<name>.yaml`` (or a path) and --out {out}."""
    config = [] if name is None else ["--config", name if "/" in name else f"{{bad}}/theory/{name}.yaml"]
    return ["theory-sim", "--quick", *config, "--out", "{out}", *extra]


def sample(*extra: str, model: str = "{shared}/student") -> list[str]:
    return ["sample", "--model", model, "--out", "{case}/grid.png", *extra]


def eval_(*sets: str) -> list[str]:
    return ["eval", "--student", "{shared}/student", "--config", str(TINY), "--set", "data.cache_dir={cache}",
            *[a for s in sets for a in ("--set", s)]]


TINY_RUN = ("--set", "data.world.num_prompts=2000")
# a real run's setup encodes the contexts of the world's 2,600 paired captions up front
# (distillation.context_cache_mb; ~12 s on a CPU): a case that stops at its first step or at the
# restore after setup encodes per step instead, which changes no check of the input
NO_CONTEXT_CACHE = ("--set", "distillation.context_cache_mb=0")
# a case that names backend.device cuda (its only CUDA name) holds only where no CUDA device is visible
NO_CUDA = pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="a CUDA device is visible here")
T = str(TINY)
# an alias bomb on the command line: 5 levels of 9 aliases, 9^6 = 531,441 values once expanded
SET_BOMB = ("seed=[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
            "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
            "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d], *e, *e, *e, *e, *e, *e, *e, *e, *e]")
# below the expansion bound (9^5 = 59,049 values): reaches validation, whose message stays short
SET_BIG = ("seed=[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
           "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
           "*d, *d, *d, *d, *d, *d, *d, *d]")

ORIGINAL = [
    # ---------------------------------------------------------------- config keys, types and values
    Case("unknown-top-key", run_(cfg("unknown_top_key")), ["bogus_key", "unknown key"]),
    Case("misspelt-top-key", run_(cfg("misspelt_top_key")), ["sed", "unknown key"]),
    Case("misspelt-nested-key", run_(cfg("misspelt_nested_key")), ["distillation.learning_rate", "unknown key"]),
    Case("misspelt-deep-key", run_(cfg("misspelt_deep_key")), ["data.world.num_prompt", "unknown key"]),
    Case("misspelt-key-via-set", run_(str(TINY), "--set", "distillation.lrr=1e-3"),
         ["distillation.lrr", "unknown key"]),
    Case("wrong-type-int", run_(cfg("wrong_type_int")), ["distillation.steps", "'ten'"]),
    Case("wrong-type-section", run_(cfg("wrong_type_section")), ["logging"]),
    Case("wrong-type-list", run_(cfg("wrong_type_list")), ["regions.metadata_keys"]),
    Case("wrong-type-bool", run_(cfg("wrong_type_bool")), ["student.init_from_teacher", "'maybe'"]),
    Case("init-path-missing", run_(T, "--set", "student.init_from_teacher=false", "--set",
                                   "student.init_path={case}/nowhere"), ["student.init_path", "does not exist"]),
    Case("init-path-and-teacher-copy", run_(T, "--set", "student.init_path={case}"),
         ["student.init_path and student.init_from_teacher", "init_from_teacher: false"]),
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
    Case("set-without-equals", run_(str(TINY), "--set", "distillation.lr"),
         ["--set 'distillation.lr'", "key.path=value"]),
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
         ["output_dir", "a-file: is a file, not a folder"]),
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
    Case("paired-dir-missing", files_run(paired="{case}/no-paired"),
         ["data.paired_dir", "no-paired", "does not exist"]),
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

HANG = [  # a fresh process each, under a hard timeout: these used to hang (alias bombs) or recurse
    Case("alias-bomb-under-seed", run_(cfg("alias_bomb_seed"), "--dry-run"),
         ["alias_bomb_seed.yaml", "line 3", "more than 100,000 values"]),
    Case("alias-bomb-strategy-param", run_(cfg("alias_bomb_strategy"), "--dry-run"),
         ["alias_bomb_strategy.yaml", "more than 100,000 values"]),
    Case("alias-bomb-list", run_(cfg("alias_bomb_list"), "--dry-run"), ["alias_bomb_list.yaml", "more than 100,000"]),
    Case("alias-bomb-run", run_(cfg("alias_bomb_seed")), ["alias_bomb_seed.yaml", "more than 100,000"]),
    Case("alias-recursive", run_(cfg("alias_recursive"), "--dry-run"),
         ["alias_recursive.yaml", "refers to the value that holds it"]),
    Case("alias-deep", run_(cfg("alias_deep"), "--dry-run"), ["alias_deep.yaml", "nest deeper than 64 levels"]),
    Case("alias-bomb-via-set", dry(T, SET_BOMB), ["--set seed", "more than 100,000 values"]),
    Case("big-value-message", dry(T, SET_BIG), ["seed", "expected an integer", "(got [[1, 1, 1,", "...)"]),
    Case("theory-alias-bomb", theory("alias_bomb"), ["alias_bomb.yaml", "more than 100,000 values"]),
    Case("theory-alias-bomb-list", theory("alias_bomb_alphas"), ["alias_bomb_alphas.yaml", "more than 100,000"]),
    Case("theory-deep-nesting", theory(cfg("deep_nesting")), ["deep_nesting.yaml", "nested deeper than 64 levels"]),
]
for _c in HANG:
    _c.kind, _c.proc, _c.timeout = "hang", True, 30

YAML = [
    Case("deep-nesting", run_(cfg("deep_nesting"), "--dry-run"), ["deep_nesting.yaml", "line 2", "deeper than 64"]),
    Case("deep-nesting-via-set", dry(T, "seed=" + "[" * 2000 + "]" * 2000), ["--set seed", "deeper than 64"]),
    Case("int-key", run_(cfg("int_key"), "--dry-run"), ["int_key.yaml", "line 2", "key 1 is not a name"]),
    Case("null-key", run_(cfg("null_key"), "--dry-run"), ["null_key.yaml", "line 2", "key None is not a name"]),
    Case("nested-int-key", run_(cfg("nested_int_key"), "--dry-run"), ["nested_int_key.yaml", "line 3", "key 10"]),
    Case("bool-key", run_(cfg("bool_key"), "--dry-run"), ["bool_key.yaml", "line 3", "key True is not a name"]),
    Case("empty-file", run_(cfg("empty"), "--dry-run"), ["empty.yaml", "is empty"]),
    Case("empty-file-run", run_(cfg("empty")), ["empty.yaml", "is empty"]),
    Case("comments-only", run_(cfg("comments_only"), "--dry-run"), ["comments_only.yaml", "is empty"]),
    Case("two-documents", run_(cfg("two_documents"), "--dry-run"), ["two_documents.yaml", "another document"]),
    Case("nul-character", run_(cfg("nul_character"), "--dry-run"),
         ["nul_character.yaml", "unacceptable character #x0000"]),
    Case("utf16-file", run_(cfg("utf16"), "--dry-run"), ["utf16.yaml", "not valid UTF-8"]),
    Case("huge-integer", run_(cfg("huge_integer"), "--dry-run"), ["huge_integer.yaml", "more than 4300 digits"]),
    Case("set-not-a-mapping-key", dry(T, "distillation={{1: 2}}"), ["distillation", "{1: 2}"]),
    Case("eval-empty-config", ["eval", "--student", "{shared}/student", "--config", cfg("empty")],
         ["empty.yaml", "is empty"]),
    Case("regions-empty-config", ["regions", "build", "--config", cfg("comments_only")],
         ["comments_only.yaml", "is empty"]),
    Case("theory-int-key", theory("int_key"), ["int_key.yaml", "line 2", "key 3 is not a name"]),
    Case("theory-null-key", theory(cfg("null_key")), ["null_key.yaml", "key None"]),
    Case("theory-empty", theory("empty"), ["empty.yaml", "is empty"]),
    Case("theory-two-documents", theory(cfg("two_documents")), ["two_documents.yaml", "another document"]),
]
for _c in YAML:
    _c.kind = "yaml"

LATER = [
    Case("seed-negative", run_(cfg("seed_negative"), "--dry-run"), ["seed", "greater than or equal to 0", "-1"]),
    Case("seed-negative-run", run_(cfg("seed_negative")), ["seed", "greater than or equal to 0"]),
    Case("world-seed-negative", dry(T, "data.world.seed=-3"), ["data.world.seed", "greater than or equal to 0"]),
    Case("regions-seed-negative", dry(T, "regions.seed=-1"), ["regions.seed", "greater than or equal to 0"]),
    Case("eval-seed-negative", dry(T, "eval.seed=-7"), ["eval.seed", "greater than or equal to 0"]),
    Case("seed-above-int64", dry(T, "seed=9223372036854775808"), ["seed", "less than or equal to 9223372036854775807"]),
    Case("world-seed-above-2-64", dry(T, "data.world.seed=18446744073709551617"),
         ["data.world.seed", "less than or equal to"]),
    Case("eval-seed-huge", dry(T, "eval.seed=100000000000000000000000"), ["eval.seed", "less than or equal to"]),
    Case("batch-size-huge", dry(T, "distillation.batch_size=1000000000000"),
         ["distillation.batch_size", "less than or equal to 65536"]),
    Case("timestep-bins-huge", dry(T, "distillation.timestep_bins=1000000000"),
         ["distillation.timestep_bins", "less than or equal to 1000"]),
    Case("steps-huge", dry(T, "distillation.steps=1000000000000000000000000000000"),
         ["distillation.steps", "less than or equal to 1000000000"]),
    Case("steps-true", run_(cfg("steps_true"), "--dry-run"), ["distillation.steps", "expected an integer", "True"]),
    Case("steps-quoted", dry(T, "distillation.steps='10'"), ["distillation.steps", "expected an integer", "'10'"]),
    Case("steps-fraction", dry(T, "distillation.steps=10.5"), ["distillation.steps", "expected an integer"]),
    Case("progress-one", dry(T, "logging.progress=1"), ["logging.progress", "expected true or false"]),
    Case("compile-quoted", dry(T, "backend.compile='true'"), ["backend.compile", "expected true or false"]),
    Case("lr-true", dry(T, "distillation.lr=true"), ["distillation.lr", "expected a number", "True"]),
    Case("k-true", dry(T, "regions.k=true"), ["regions.k", "expected an integer"]),
    Case("swucb-window-true", dry(T, "strategy.params.swucb.window=true"), ["swucb", "window", "expected an integer"]),
    Case("output-dir-empty", run_(cfg("output_dir_empty"), "--set", "output_dir=''"),
         ["output_dir", "not an empty string"]),
    Case("output-dir-empty-file", ["run", "--config", cfg("output_dir_empty"), "--dry-run"],
         ["output_dir", "not an empty string"]),
    Case("output-dir-blank", dry(T, "output_dir='  '"), ["output_dir", "not an empty string"]),
    Case("cache-dir-empty", dry(T, "data.cache_dir=''"), ["data.cache_dir", "not an empty string"]),
    Case("teacher-path-empty", dry(T, "teacher.path=''"), ["teacher.path", "not an empty string"]),
    Case("prompts-file-with-shapes", run_(cfg("prompts_file_with_shapes"), "--dry-run"),
         ["data.prompts_file is read only with data.source 'files'", "'shapes'"]),
    Case("paired-dir-with-shapes", dry(T, "data.paired_dir={shared}/paired"),
         ["data.paired_dir is read only with data.source 'files'"]),
    Case("resume-with-dry-run", run_(T, "--resume", "--dry-run"), ["--resume and --dry-run cannot be combined"]),
    Case("encoder-max-length-huge", dry(T, "encoder.max_length=1000000"), ["encoder.max_length", "512"]),
    Case("encoder-batch-huge", dry(T, "encoder.batch_size=10000000000"), ["encoder.batch_size", "65536"]),
    Case("world-num-prompts-huge", dry(T, "data.world.num_prompts=1000000000000"), ["data.world.num_prompts"]),
    Case("world-skew-huge", dry(T, "data.world.skew=1000000.0"), ["data.world.skew", "less than or equal to 8"]),
    Case("world-paired-size-huge", dry(T, "data.world.paired_size=1000000000000"), ["data.world.paired_size"]),
    Case("probe-images-huge", dry(T, "eval.probe_images=1000000000000"), ["eval.probe_images"]),
    Case("probe-timesteps-huge", dry(T, "eval.probe_timesteps=100000"), ["eval.probe_timesteps", "1000"]),
    Case("regions-iterations-huge", dry(T, "regions.iterations=1000000000"), ["regions.iterations", "10000"]),
    Case("regions-k-huge", dry(T, "regions.k=1000000000000"), ["regions.k", "less than or equal to"]),
    Case("collective-timeout-huge", dry(T, "backend.collective_timeout_s=10000000000"),
         ["backend.collective_timeout_s", "604800"]),
    Case("cpu-threads-huge", dry(T, "backend.cpu_threads=1000000"), ["backend.cpu_threads", "4096"]),
    Case("warmup-huge", dry(T, "distillation.warmup_steps=1000000000000000000000000000000"),
         ["distillation.warmup_steps"]),
    Case("keep-checkpoints-huge", dry(T, "logging.keep_checkpoints=1000000000"), ["logging.keep_checkpoints", "1000"]),
    Case("context-cache-huge", dry(T, "distillation.context_cache_mb=1.0e30"), ["distillation.context_cache_mb"]),
    Case("eval-sample-steps-run", dry(T, "eval.sample_steps=100"), ["eval.sample_steps", "less than or equal to 50"]),
    Case("exp3-learning-rate-huge", dry(T, "strategy.params.exp3.learning_rate=1.0e300"),
         ["exp3", "learning_rate", "less than or equal to"]),
    Case("ducb-exploration-huge", dry(T, "strategy.params.ducb.exploration=1.0e308"), ["ducb", "exploration"]),
    Case("theory-seed-negative", theory("seed_negative"), ["seed_negative.yaml", "seed", "greater than or equal to 0"]),
    Case("theory-seed-huge", theory("seed_huge"), ["seed_huge.yaml", "seed", "less than or equal to"]),
    Case("theory-steps-true", theory("steps_true"), ["steps_true.yaml", "every.steps", "expected an integer"]),
    Case("theory-designs-bool", theory("designs_bool"),
         ["designs_bool.yaml", "sampled.designs", "expected an integer"]),
    Case("theory-workers-fraction", theory("workers_float"), ["workers_float.yaml", "workers", "expected an integer"]),
    Case("theory-draws-huge", theory("draws_huge"), ["draws_huge.yaml", "allocation.draws", "10000"]),
    Case("theory-too-many-alphas", theory("too_many_alphas"), ["too_many_alphas.yaml", "scan.alphas", "at most 64"]),
    Case("theory-sigma-huge", theory("sigma_huge"), ["sigma_huge.yaml", "scan.sigma", "less than or equal to 100"]),
]
for _c in LATER:
    _c.kind = "later"

NONFINITE = [
    Case("aria-temperature-inf", run_(cfg("temperature_infinite"), "--dry-run"), ["aria", "temperature", "finite"]),
    Case("aria-temperature-inf-run", run_(cfg("temperature_infinite")), ["aria", "temperature", "finite"]),
    Case("aria-power-inf", dry(T, "strategy.params.aria.power=.inf"), ["aria", "power", "finite"]),
    Case("aria-alpha-nan", dry(T, "strategy.params.aria.alpha=.nan"), ["aria", "alpha", "finite"]),
    Case("exp3-learning-rate-inf", dry(T, "strategy.params.exp3.learning_rate=.inf"),
         ["exp3", "learning_rate", "finite"]),
    Case("dts-noise-inf", dry(T, "strategy.params.dts.noise=.inf"), ["dts", "noise", "finite"]),
    Case("ducb-exploration-nan", dry(T, "strategy.params.ducb.exploration=.nan"), ["ducb", "exploration", "finite"]),
    Case("swucb-temperature-inf", dry(T, "strategy.params.swucb.temperature=.inf"), ["swucb", "temperature", "finite"]),
    Case("lr-nan", run_(cfg("lr_nan"), "--dry-run"), ["distillation.lr", "finite"]),
    Case("switch-lambda-nan", dry(T, "distillation.switch_lambda=.nan"), ["distillation.switch_lambda", "finite"]),
    Case("guidance-scale-inf", dry(T, "teacher.guidance_scale=.inf"), ["teacher.guidance_scale", "finite"]),
    Case("channel-scale-nan", dry(T, "student.channel_scale=.nan"), ["student.channel_scale", "finite"]),
    Case("w-out-minus-inf", dry(T, "distillation.w_out=-.inf"), ["distillation.w_out", "finite"]),
    Case("context-cache-inf", dry(T, "distillation.context_cache_mb=.inf"),
         ["distillation.context_cache_mb", "finite"]),
    Case("ema-decay-nan", dry(T, "distillation.ema_decay=.nan"), ["distillation.ema_decay", "finite"]),
    Case("theory-scan-sigma-inf", theory("scan_sigma_infinite"), ["scan_sigma_infinite.yaml", "scan.sigma", "finite"]),
    Case("theory-sigmas-nan", theory("sigmas_nan"), ["sigmas_nan.yaml", "every.sigmas", "finite"]),
    Case("theory-alphas-nan", theory("alphas_nan"), ["alphas_nan.yaml", "sampled.alphas", "finite"]),
    Case("theory-jump-inf", theory("jump_infinite"), ["jump_infinite.yaml", "outside.jump", "finite"]),
    Case("sample-guidance-nan", sample("--prompt", "a red circle", "--guidance", "nan"), ["--guidance nan", "finite"]),
    Case("sample-guidance-inf", sample("--prompt", "a red circle", "--guidance", "inf"), ["--guidance inf", "finite"]),
]
for _c in NONFINITE:
    _c.kind = "nonfinite"

CHECKPOINT = [  # a checkpoint with a re-signed manifest (it verifies) and one part tampered with
    Case("resume-state-not-json", run_(T, *TINY_RUN, "--resume"),
         ["checkpoint", "step-00000002", "state.json is unreadable"], setup="tamper_state_text"),
    Case("resume-state-not-mapping", run_(T, *TINY_RUN, "--resume"),
         ["checkpoint", "step-00000002", "state.json holds a list"], setup="tamper_state_list"),
    Case("resume-state-without-strategy", run_(T, *TINY_RUN, "--resume"),
         ["step-00000002", "state.json is not a checkpoint state", "strategy is missing"],
         setup="tamper_state_entry"),
    Case("resume-strategy-state-garbage", run_(T, *TINY_RUN, "--resume"),
         ["step-00000002", "the state of strategy 'aria'", "cannot be restored"], setup="tamper_strategy_state"),
    Case("resume-training-pickle", run_(T, *TINY_RUN, "--resume"),
         ["step-00000002", "training.pt", "cannot be restored"], setup="tamper_training_pickle"),
    Case("resume-training-garbage", run_(T, *TINY_RUN, "--resume"),
         ["step-00000002", "training.pt", "cannot be restored"], setup="tamper_training_bytes"),
    Case("resume-config-garbage", run_(T, *TINY_RUN, "--resume"),
         ["step-00000002", "config.json is unreadable"], setup="tamper_config_text"),
    Case("resume-teacher-other-weights", run_(T, *TINY_RUN, "--resume"),
         ["cannot resume: checkpoint step-00000002 distilled from teacher-of-another-run (weights 0123456789abcdef)",
          "this run's teacher is the shipped shapes world teacher"], setup="tamper_teacher_record"),
    Case("resume-steps-below-checkpoint", run_(T, *TINY_RUN, "--set", "distillation.steps=1", "--resume"),
         ["cannot resume", "step-00000002 is at step 2", "distillation.steps is 1"], setup="checkpoint"),
    Case("resume-strategy-state-shape", run_(T, *TINY_RUN, *NO_CONTEXT_CACHE, "--resume"),
         ["step-00000002", "the state of strategy 'aria'", "region sizes"], setup="tamper_strategy_shape",
         slow=True, proc=True),
]
for _c in CHECKPOINT:
    _c.kind = "checkpoint"

CLI = [
    Case("sample-card-not-json", sample("--prompt", "a red circle", model="{case}/student"),
         ["--model", "aria.json is not valid JSON"], setup="student_card_text"),
    Case("sample-card-invalid-config", sample("--prompt", "a red circle", model="{case}/student"),
         ["--model", "aria.json config", "seed", "greater than or equal to 0"], setup="student_card_config"),
    Case("sample-card-list", sample("--prompt", "a red circle", model="{case}/student"),
         ["--model", "aria.json lacks the run config"], setup="student_card_list"),
    Case("sample-device-tpu", sample("--prompt", "a red circle", "--device", "tpu"), ["--device 'tpu'"]),
    Case("sample-device-cuda-absent", sample("--prompt", "a red circle", "--device", "cuda:63"),
         ["--device cuda:63", "no such CUDA device"]),
    Case("sample-prompt-empty", sample("--prompt", ""), ["--prompt ''", "blank"]),
    Case("sample-prompt-blank", sample("--prompt", "   "), ["--prompt '", "(number 1) is blank"]),
    Case("sample-second-prompt-blank", sample("--prompt", "a red circle", "--prompt", "\t"), ["number 2", "blank"]),
    Case("sample-seed-negative", sample("--prompt", "a red circle", "--seed", "-1"),
         ["--seed", "-1 is not in the range"]),
    Case("sample-seed-huge", sample("--prompt", "a red circle", "--seed", str(2**64)), ["--seed"]),
    Case("compare-seed-negative", ["compare", "--strategies", "rc", "--seeds", "0,-1", "--config", T, "--out", "{out}"],
         ["--seeds '0,-1'", "0 to 2^63 - 1"]),
    Case("teacher-train-lr-nan", ["teacher", "train", "--config", T, "--out", "{out}", "--lr", "nan"],
         ["--lr", "not a finite number"]),
    Case("world-show-seed-negative", ["world", "show", "--config", T, "--out", "{case}/w.png", "--seed", "-3"],
         ["--seed", "-3 is not in the range"]),
    Case("sample-steps-huge", sample("--prompt", "a red circle", "--steps", "100000"), ["--steps 100000"]),
    Case("eval-sample-steps", eval_("eval.sample_steps=100"), ["eval.sample_steps", "less than or equal to 50"]),
    Case("eval-seed-negative-cli", eval_("seed=-2"), ["seed", "greater than or equal to 0"]),
    Case("eval-inf", eval_("teacher.guidance_scale=.inf"), ["teacher.guidance_scale", "finite"]),
    Case("theory-latin1", theory("latin1"), ["latin1.yaml", "not valid UTF-8"]),
    Case("theory-utf16", theory(cfg("utf16")), ["utf16.yaml", "not valid UTF-8"]),
    Case("theory-nul-character", theory(cfg("nul_character")), ["nul_character.yaml", "unacceptable character"]),
    Case("theory-config-is-folder", theory("{bad}/theory"), ["theory", "is not a file"]),
    # ---------------------------------------------------------------- output paths, checked before any work
    Case("compare-out-is-file", ["compare", "--strategies", "rc", "--seeds", "1", "--config", T, "--out", "{file}"],
         ["--out", "a-file: is a file, not a folder"]),
    Case("compare-out-under-file", ["compare", "--strategies", "rc", "--seeds", "1", "--config", T,
                                    "--out", "{file}/cmp"], ["--out", "cmp: cannot be created", "a-file is a file"]),
    Case("results-out-is-folder", ["results", "--results", "{case}/results.json", "--out", "{case}"],
         ["--out", "is a folder", "docs/RESULTS.md"]),
    Case("results-out-under-file", ["results", "--results", "{case}/results.json", "--out", "{file}/R.md"],
         ["--out", "R.md", "a-file is a file"]),
    Case("results-check-out-is-folder", ["results", "--check", "--out", "{case}"],
         ["--out", "is a folder", "docs/RESULTS.md"]),
    Case("world-show-out-not-an-image", ["world", "show", "--config", T, "--set", "data.cache_dir={cache}",
                                         "--out", "{case}/w.txt"], ["--out", "w.txt", "unknown image type '.txt'"]),
    Case("world-show-out-under-file", ["world", "show", "--config", T, "--set", "data.cache_dir={cache}",
                                       "--out", "{file}/w.png"], ["--out", "w.png", "a-file is a file"]),
    Case("world-show-files-source", ["world", "show", "--config", "{bad}/configs/files_source.yaml",
                                     "--set", "data.prompts_file={bad}/prompts/three_prompts.txt",
                                     "--set", "data.paired_dir={shared}/paired", "--out", "{case}/w.png"],
         ["data.source 'files'", "embedded world"]),
    Case("teacher-train-out-is-file", ["teacher", "train", "--config", T, "--out", "{file}"],
         ["--out", "a-file: is a file, not a folder"]),
    Case("teacher-train-out-under-file", ["teacher", "train", "--config", T, "--out", "{file}/teacher"],
         ["--out", "teacher: cannot be created", "a-file is a file"]),
    Case("teacher-train-out-not-empty", ["teacher", "train", "--config", T, "--out", "{case}"],
         ["--out", "is not empty (give a new folder)"]),
    # ---------------------------------------------------------------- devices this machine lacks (cuda:63: none has it)
    Case("run-encoder-device-absent-dry", dry(T, "encoder.device=cuda:63"),
         ["encoder.device cuda:63", "no such CUDA device"]),
    Case("run-encoder-device-absent", run_(T, *TINY_RUN, "--set", "encoder.device=cuda:63"),
         ["encoder.device cuda:63", "no such CUDA device"]),
    Case("run-backend-device-absent-dry", dry(T, "backend.device=cuda"), ["backend.device cuda", "no such CUDA device"],
         marks=[NO_CUDA]),
    Case("run-backend-device-absent", run_(T, *TINY_RUN, "--set", "backend.device=cuda"),
         ["backend.device cuda", "no such CUDA device"], marks=[NO_CUDA]),
    Case("eval-backend-device-absent", eval_("backend.device=cuda"), ["backend.device cuda", "no such CUDA device"],
         marks=[NO_CUDA]),
    Case("eval-encoder-device-absent", eval_("encoder.device=cuda:63"), ["encoder.device cuda:63", "no such CUDA"]),
    Case("regions-device-unknown", ["regions", "build", "--config", T, "--set", "data.cache_dir={cache}",
                                    "--device", "gpu"], ["--device 'gpu'", "expected auto, cpu, mps, cuda or cuda:N"]),
    Case("regions-device-absent", ["regions", "build", "--config", T, "--set", "data.cache_dir={cache}",
                                   "--device", "cuda:63"], ["--device cuda:63", "no such CUDA device"]),
    Case("regions-encoder-device-absent", ["regions", "build", "--config", T, "--set", "data.cache_dir={cache}",
                                           "--set", "encoder.device=cuda:63"],
         ["encoder.device cuda:63", "no such CUDA"]),
    Case("teacher-train-device-unknown", ["teacher", "train", "--config", T, "--out", "{out}", "--device", "gpu"],
         ["--device 'gpu'"]),
    Case("teacher-train-device-absent", ["teacher", "train", "--config", T, "--out", "{out}", "--device", "cuda:63"],
         ["--device cuda:63", "no such CUDA device"]),
    Case("compare-device-absent", ["compare", "--strategies", "rc", "--seeds", "1", "--config", T, "--out", "{out}",
                                   "--set", "encoder.device=cuda:63"], ["encoder.device cuda:63", "no such CUDA"]),
    # ---------------------------------------------------------------- a compare folder copied or written in part
    Case("compare-eval-json-truncated", ["compare", "--strategies", "rc", "--seeds", "1", "--config", T,
                                         "--out", "{case}/cmp", "--summary-only"],
         ["runs/rc/seed0/eval/eval.json: not valid JSON", "delete its eval/ folder"], setup="truncated_eval"),
    Case("compare-record-truncated", ["compare", "--strategies", "rc", "--seeds", "1", "--config", T,
                                      "--out", "{case}/cmp", "--summary-only"],
         ["runs/rc/seed0/compare.json: not valid JSON"], setup="truncated_record"),
]
for _c in CLI:
    _c.kind = "cli"

PLUGIN = [  # plugins installed by putting {shared}/plugins/<name> (modules + *.dist-info) on PYTHONPATH
    Case("plugin-broken-listing", ["strategies"], ["strategy plugin 'brokenplug'", "aria-broken",
                                                   "ModuleNotFoundError", "torch_xla"], plugins="broken"),
    Case("plugin-broken-requested", run_(T, "-s", "brokenplug", "--dry-run"),
         ["strategy plugin 'brokenplug'", "failed to load"], plugins="broken"),
    Case("plugin-broken-theory", theory(None), ["brokenplug", "failed to load", "allocation.exclude"],
         plugins="broken"),
    Case("plugin-broken-unknown-name", run_(T, "-s", "brokenplu", "--dry-run"),
         ["unknown strategy 'brokenplu'", "plugins that failed to load: 'brokenplug'"], plugins="broken"),
    Case("plugin-weird-listing", ["strategies"], ["2 strategy plugins failed to load", "notastrategy",
                                                  "not a module or an AllocationStrategy", "exitplug", "SystemExit"],
         plugins="weird"),
    Case("plugin-param-inf", dry(T, "strategy.name=sum3", "strategy.params.sum3.eps=.inf"),
         ["strategy sum3 params", "eps", "finite"], plugins="contract"),
    Case("plugin-param-true", dry(T, "strategy.name=sum3", "strategy.params.sum3.eps=true"),
         ["strategy sum3 params", "eps", "expected a number"], plugins="contract"),
    Case("plugin-start-fails", run_(T, "-s", "startfail", "--dry-run"),
         ["strategy 'startfail'", "package aria-contract", "failed to start", "needs a licence server"],
         plugins="contract"),
    Case("plugin-contract-sum3", run_(T, *TINY_RUN, *NO_CONTEXT_CACHE, "-s", "sum3", "--set", "logging.progress=false"),
         ["strategy 'sum3'", "package aria-contract", "broke the allocation contract", "sum to 3", "step 1"],
         plugins="contract", slow=True, timeout=300),
]
for _c in PLUGIN:
    _c.kind, _c.proc = "plugin", True

CASES = [*ORIGINAL, *HANG, *YAML, *LATER, *NONFINITE, *CHECKPOINT, *CLI, *PLUGIN]


# ------------------------------------------------------------------------------------------ fixtures

PLUGINS = {  # folder -> {file: text}; each folder holds modules and the *.dist-info that makes them entry points
    "broken": {
        "aria_broken_plug.py": "import torch_xla  # noqa: F401  (not installed: the import fails)\n",
        "aria_broken-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: aria-broken\nVersion: 0.1\n",
        "aria_broken-0.1.dist-info/entry_points.txt": "[aria.strategies]\nbrokenplug = aria_broken_plug\n",
    },
    "weird": {
        "aria_weird.py": "def helper():\n    return 1\n",
        "aria_weird_exit.py": "import sys\nsys.exit(3)\n",
        "aria_weird-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: aria-weird\nVersion: 0.1\n",
        "aria_weird-0.1.dist-info/entry_points.txt":
            "[aria.strategies]\nnotastrategy = aria_weird:helper\nexitplug = aria_weird_exit\n",
    },
    "contract": {
        "aria_contract.py": textwrap.dedent('''\
            """Strategies that break the contract of ``allocate`` (and one that cannot start)."""
            import numpy as np
            from pydantic import Field

            from aria.strategies import AllocationStrategy, StrategyConfig, register_strategy
            from aria.strategies.base import mix_floor


            class FloorConfig(StrategyConfig):
                eps: float = Field(0.1, ge=0, le=1, description="uniform floor")


            @register_strategy("sum3")
            class Sum3(AllocationStrategy):
                """Probabilities that sum to 3."""
                Config = FloorConfig

                def probabilities(self, state):
                    return 3 * mix_floor(np.asarray(state["sizes"], float), self.config.eps, self.active(state))


            @register_strategy("nanprob")
            class NanProb(AllocationStrategy):
                """Probabilities that are NaN."""

                def probabilities(self, state):
                    return np.full(np.asarray(state["sizes"]).size, np.nan)


            @register_strategy("startfail")
            class StartFail(AllocationStrategy):
                """Cannot start."""

                def __init__(self, config=None, **params):
                    raise RuntimeError("needs a licence server")

                def probabilities(self, state):
                    raise AssertionError("never called")
            '''),
        "aria_contract-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: aria-contract\nVersion: 0.1\n",
        "aria_contract-0.1.dist-info/entry_points.txt": "[aria.strategies]\ncontract = aria_contract\n",
    },
}


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    """Folders shared by the cases (never written by them): paired dirs, teacher look-alikes, a student,
    strategy plugins."""
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
    for folder, files in PLUGINS.items():
        for name, text in files.items():
            path = root / "plugins" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
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


def _write_checkpoint(out: Path, cache: Path, corrupt: bool = False) -> Path:
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
    return folder


class _Payload:
    """A pickle that runs a command when unpickled (``torch.load(weights_only=True)`` must refuse it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _tampered(edit):
    """A setup: the tiny checkpoint with ``edit(folder)`` applied and its manifest re-signed (it verifies)."""
    def setup(case: Path, shared: Path) -> None:
        from aria.files import file_sha256

        folder = _write_checkpoint(case / "out", shared / "cache")
        edit(folder, case)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"] = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return setup


def _edit_state(change):
    def edit(folder: Path, case: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        change(state)
        (folder / "state.json").write_text(json.dumps(state))
    return edit


def _strategy_state_of_three_regions(state: dict) -> None:
    import numpy as np

    from aria.strategies import RegionInfo, create_strategy, state_to_json

    state["strategy"]["state"] = state_to_json(create_strategy("aria").init(RegionInfo(np.ones(3)), 0))


def _student_card(change):
    """A setup: a copy of the shared student in {case}/student with its aria.json changed."""
    def setup(case: Path, shared: Path) -> None:
        target = case / "student"
        shutil.copytree(shared / "student", target)
        card = json.loads((target / "aria.json").read_text())
        (target / "aria.json").write_text(change(card))
    return setup


def _write_cut(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _with_seed(card: dict, seed) -> str:
    card["config"]["seed"] = seed
    return json.dumps(card)


SETUPS = {
    "checkpoint": lambda case, shared: _write_checkpoint(case / "out", shared / "cache"),
    "corrupted_checkpoint": lambda case, shared: _write_checkpoint(case / "out", shared / "cache", corrupt=True),
    # killed during its first checkpoint write: checkpoints/ holds only the temporary folder
    "unfinished_checkpoint":
        lambda case, shared: (case / "out" / "checkpoints" / "step-00000002.tmp").mkdir(parents=True),
    "tamper_state_text": _tampered(lambda folder, case: (folder / "state.json").write_text("{not json")),
    "tamper_state_list": _tampered(lambda folder, case: (folder / "state.json").write_text("[1, 2]")),
    "tamper_state_entry": _tampered(_edit_state(lambda state: state.pop("strategy"))),
    "tamper_teacher_record": _tampered(_edit_state(lambda state: state.update(
        teacher={"teacher": "teacher-of-another-run", "weights": "0123456789abcdef"}))),
    "tamper_strategy_state": _tampered(_edit_state(lambda state: state["strategy"].update(state="not json at all"))),
    "tamper_strategy_shape": _tampered(_edit_state(_strategy_state_of_three_regions)),
    "tamper_training_pickle": _tampered(lambda folder, case: (folder / "training.pt").write_bytes(
        pickle.dumps(_Payload(case / "pwned")))),
    "tamper_training_bytes": _tampered(lambda folder, case: (folder / "training.pt").write_bytes(b"\x80garbage" * 64)),
    "tamper_config_text": _tampered(lambda folder, case: (folder / "config.json").write_text("]]")),
    "student_card_text": _student_card(lambda card: "{'not': json"),
    "student_card_config": _student_card(lambda card: _with_seed(card, -1)),
    "student_card_list": _student_card(lambda card: "[]"),
    # a compare folder whose run holds half a file (a copy, or a write, cut short)
    "truncated_eval": lambda case, shared: _write_cut(case / "cmp" / "runs" / "rc" / "seed0" / "eval" / "eval.json",
                                                      '{"format": "aria-eval/1", "metrics": {"all": {"discr'),
    "truncated_record": lambda case, shared: _write_cut(case / "cmp" / "runs" / "rc" / "seed0" / "compare.json",
                                                        '{"config": "digest-of-the-config", "assets": {"teacher'),
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
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)
    counts = {kind: sum(c.kind == kind for c in CASES) for kind in KINDS}
    assert set(c.kind for c in CASES) <= set(KINDS) and all(n >= 8 for n in counts.values()), counts
    text = "\n".join(" ".join(c.args) for c in CASES)
    unused = [str(p.relative_to(BAD)) for p in sorted(BAD.rglob("*"))
              if p.is_file() and p.suffix in (".yaml", ".txt") and p.name not in text]
    assert not unused, f"corpus files no case uses: {unused}"


# ------------------------------------------------------------------------------------------ running a case

@contextlib.contextmanager
def _alarm(seconds: float):
    """A TimeoutError in this (main) thread after ``seconds``: an in-process case that started real work."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds:.0f} s: the input was not rejected before real work")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_in_process(args: list[str], cwd: Path, timeout: float, capfd, caplog) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``aria <args>`` run by ``aria.cli.main.main`` in this process, as
    the console script runs it: a warning (at Python's default filters) or a logged warning is a line of
    stderr, as in a fresh process. Torch's global settings, the environment and the folder are restored."""
    import torch

    from aria.cli.main import main

    env, folder = dict(os.environ), os.getcwd()
    torch_state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.get_num_threads())
    os.environ.pop("ARIA_DEBUG", None)
    os.environ.pop("PYTHONWARNINGS", None)
    os.chdir(cwd)
    capfd.readouterr()
    caplog.clear()
    code = 0
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.resetwarnings()  # Python's defaults (what a user's shell gets)
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            with _alarm(timeout):
                try:
                    main(list(args))
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(env)
        torch.use_deterministic_algorithms(torch_state[0], warn_only=torch_state[1])
        torch.set_num_threads(torch_state[2])
    out, err = capfd.readouterr()
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    err += "".join(f"{r.levelname}:{r.name}: {r.getMessage()}\n"
                   for r in caplog.records if r.levelno >= logging.WARNING)
    return code, out, err


def run_in_subprocess(case: Case, args: list[str], cwd: Path, shared: Path) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m aria.cli <args>`` in a fresh process (killed at the timeout)."""
    def limits():  # a full disk: writes past fsize_limit fail with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize_limit, case.fsize_limit))

    env = {k: v for k, v in os.environ.items() if k not in ("ARIA_DEBUG", "PYTHONWARNINGS")}  # a user's shell
    if case.plugins:
        env["PYTHONPATH"] = str(shared / "plugins" / case.plugins)
    proc = subprocess.Popen([sys.executable, "-m", "aria.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=limits if case.fsize_limit else None)
    try:
        stdout, stderr = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"still running after {case.timeout:.0f} s: the input was not rejected before real work")
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case: Case, tmp_path, shared, world_cache, request, capfd, caplog):
    if any(a.startswith("{shared}/student") for a in case.args) or (case.setup or "").startswith("student"):
        request.getfixturevalue("student")
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    (case_dir / "a-file").write_text("a regular file: nothing can be created under it\n")
    if case.setup:
        SETUPS[case.setup](case_dir, shared)
    values = {"bad": str(BAD), "tiny": str(TINY), "case": str(case_dir), "out": str(case_dir / "out"),
              "cache": str(world_cache), "file": str(case_dir / "a-file"), "shared": str(shared)}
    args = [a.format(**values) for a in case.args]
    watched = [case_dir, shared / "student", shared / "eval"]  # eval's default --out: next to the student
    before = snapshot(*watched)
    t0 = time.perf_counter()
    if case.proc or case.fsize_limit or case.plugins:
        code, stdout, stderr = run_in_subprocess(case, args, case_dir, shared)
    else:
        code, stdout, stderr = run_in_process(args, case_dir, case.timeout, capfd, caplog)
    request.node.user_properties.append(("seconds", round(time.perf_counter() - t0, 2)))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    assert code == 2, f"exit {code}; stderr: {stderr[-2000:]}"
    assert len(lines) == 1, f"{len(lines)} stderr lines: {lines[:8]}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in case.expect:
        assert needle in line, f"{needle!r} not in {line!r}"
    after = snapshot(*watched)
    assert after == before, f"left behind: {sorted(set(after) - set(before))[:10]}; changed: " \
                            f"{sorted(k for k in before if k in after and after[k] != before[k])[:10]}"


# ------------------------------------------------------------------------------------------ beyond the table

SAME_IN_A_FRESH_PROCESS = ["wrong-type-int", "int-key", "seed-negative", "aria-temperature-inf",
                           "resume-training-pickle", "sample-device-tpu", "theory-sigmas-nan", "empty-file-run"]


@pytest.mark.parametrize("case_id", SAME_IN_A_FRESH_PROCESS)
def test_in_process_cases_fail_alike_in_a_fresh_process(case_id, tmp_path, shared, world_cache, request):
    """The in-process runner is the console script: a sample of its cases (one or more per class) gives
    the same line, status and files in ``python -m aria.cli``."""
    case = next(c for c in CASES if c.id == case_id)
    assert not (case.proc or case.fsize_limit or case.plugins)
    if case.setup:
        SETUPS[case.setup](tmp_path, shared)
    values = {"bad": str(BAD), "tiny": str(TINY), "case": str(tmp_path), "out": str(tmp_path / "out"),
              "cache": str(world_cache), "file": str(tmp_path / "a-file"), "shared": str(shared)}
    before = snapshot(tmp_path)
    code, stdout, stderr = run_in_subprocess(case, [a.format(**values) for a in case.args], tmp_path, shared)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert all(needle in lines[0] for needle in case.expect), lines[0]
    assert snapshot(tmp_path) == before

def test_a_broken_plugin_leaves_every_other_strategy_usable(shared, tmp_path):
    """With a plugin that fails to import on the path, other commands work and the listing names it."""
    env = {**os.environ, "PYTHONPATH": str(shared / "plugins" / "broken")}
    env.pop("ARIA_DEBUG", None)
    ok = subprocess.run([sys.executable, "-m", "aria.cli", "run", "--config", str(TINY), "--dry-run", "-s", "rc"],
                        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stderr == "" and "name: rc" in ok.stdout, ok.stderr
    listing = subprocess.run([sys.executable, "-m", "aria.cli", "strategies"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    names = [line.split()[0] for line in listing.stdout.splitlines() if line and not line.startswith(" ")]
    assert {"aria", "rc", "exp3", "dts"} <= set(names) and "brokenplug" not in names
    assert listing.returncode == 2 and listing.stderr.count("\n") == 1 and "brokenplug" in listing.stderr
    assert list(tmp_path.iterdir()) == []


def test_error_formatting_of_a_huge_nested_value_is_fast():
    """An alias bomb's value (10^30 items when expanded, shared by reference) is formatted in microseconds:
    the message is built piece by piece and cut at its length, never from the whole repr."""
    from pydantic import BaseModel, ValidationError

    from aria.errors import format_validation_error, short_repr

    value = [1] * 9
    for _ in range(30):
        value = [value] * 9
    recursive: list = []
    recursive.append(recursive)

    class Model(BaseModel):
        seed: int

    with pytest.raises(ValidationError) as err:
        Model(seed=value)
    t0 = time.perf_counter()
    line = format_validation_error(err.value)
    for v in (value, recursive, {"k" * 10**6: value}, "x" * 10**7, 7 ** 40000, (value,) * 9):
        assert len(short_repr(v)) <= 63
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.1, elapsed
    assert line.startswith("config: seed: Input should be a valid integer (got [[[[") and line.endswith("...)")


def test_yaml_reading_is_bounded(tmp_path):
    """Nesting and alias expansion are bounded before anything is constructed; 3e-4 is a number."""
    from aria.config import YAML_MAX_DEPTH, YamlLimitError, load_yaml_text

    assert load_yaml_text("lr: 3e-4\nsteps: 10\nname: e3") == {"lr": 3e-4, "steps": 10, "name": "e3"}
    assert load_yaml_text("[" * YAML_MAX_DEPTH + "]" * YAML_MAX_DEPTH) is not None
    for text in ("[" * (YAML_MAX_DEPTH + 1) + "]" * (YAML_MAX_DEPTH + 1), "a: &a [*a]",
                 "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
                     f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(5))):
        t0 = time.perf_counter()
        with pytest.raises(YamlLimitError):
            load_yaml_text(text)
        assert time.perf_counter() - t0 < 0.5


# a contract-breaking strategy, registered for one test (the allocation it returns breaks one rule each)
def _breaking(kind: str):
    import numpy as np

    from aria.strategies import Allocation, AllocationStrategy
    from aria.strategies.base import draw_regions, mix_floor

    class Breaking(AllocationStrategy):
        """Breaks the allocation contract."""
        calls = 0

        def probabilities(self, state):
            return mix_floor(np.asarray(state["sizes"], float), 0.0, self.active(state))

        def allocate(self, state, step, n):
            type(self).calls += 1
            p = self.probabilities(state)
            regions = draw_regions(p, int(state["seed"]), int(step), int(n))
            if kind == "sum3":
                return Allocation(regions, 3 * p)
            if kind == "nan":
                return Allocation(regions, np.full_like(p, np.nan))
            if kind == "negative":
                return Allocation(regions, p - 2 * p[::-1] + p[::-1])
            if kind == "region-out-of-range":
                return Allocation(regions + p.size, p)
            if kind == "too-few-regions":
                return Allocation(regions[:-1], p)
            if kind == "weights-inf":
                return Allocation(regions, p, weights=np.full(n, np.inf))
            return (regions, p)  # "not-an-allocation"
    return Breaking


@pytest.mark.parametrize("kind, problem", [
    ("sum3", "sum to 3"), ("nan", "not finite"), ("negative", "negative"), ("region-out-of-range", "out of range"),
    ("too-few-regions", "regions have shape"), ("weights-inf", "weights are not all finite"),
    ("not-an-allocation", "not an Allocation")])
def test_a_contract_breaking_strategy_is_stopped_within_one_step(tmp_path, kind, problem, one_torch_thread):
    from conftest import make_bundle, make_teacher, tiny_config

    from aria.strategies.registry import _REGISTRY, register_strategy
    from aria.training.engine import StrategyContractError, run_distillation

    name = f"breaks-{kind}"
    cls = register_strategy(name)(_breaking(kind))
    try:
        config = tiny_config(tmp_path, strategy={"name": name}, distillation={"switch_constant": 1.0})
        with pytest.raises(StrategyContractError) as err:
            run_distillation(config, bundle=make_bundle(), teacher=make_teacher())
    finally:
        _REGISTRY.pop(name, None)
    message = str(err.value)
    assert f"strategy {name!r} (" in message and cls.origin in message and problem in message, message
    assert "broke the allocation contract at step 1: " in message and cls.calls == 1  # its first allocation
    assert not (tmp_path / "run").exists()  # no metrics, no checkpoint, no output folder


def test_theory_sim_reports_a_contract_breaking_strategy_as_failed():
    """The theory's allocation check runs every registered strategy: one that breaks the contract is a
    failed row, not numbers drawn from a broken allocation."""
    import numpy as np

    from aria.strategies.registry import _REGISTRY, register_strategy

    name = "breaks-theory"
    register_strategy(name)(_breaking("sum3"))
    try:
        from aria.theory.sweep import _allocation_task

        _, result = _allocation_task(name, dict(params={}, sizes=np.array([3, 2, 1]), start=np.ones(3),
                                                floor=np.full(3, 0.5), delta=0.01, sigma=0.1, noise_law="uniform",
                                                draws=4, steps=10, seeds=1))
    finally:
        _REGISTRY.pop(name, None)
    assert "sum to 3" in result["error"]


@pytest.mark.parametrize("kind, problem", [("update-raises", "failed in update at step 1: RuntimeError: bad feedback"),
                                           ("state-nan", "holds a state that cannot be saved at step 2")])
def test_a_plugin_failing_in_update_or_holding_an_unsavable_state_is_named(tmp_path, kind, problem, one_torch_thread):
    import numpy as np

    from conftest import make_bundle, make_teacher, tiny_config

    from aria.strategies import AllocationStrategy, mix_floor
    from aria.strategies.registry import _REGISTRY, register_strategy
    from aria.training.engine import StrategyContractError, run_distillation

    class Faulty(AllocationStrategy):
        """Fails after its first allocation."""

        def probabilities(self, state):
            return mix_floor(np.asarray(state["sizes"], float), 0.0, self.active(state))

        def apply_feedback(self, state, sums, counts, step):
            if kind == "update-raises":
                raise RuntimeError("bad feedback")
            return {"level": float("nan")}  # a state JSON cannot hold

    name = f"faulty-{kind}"
    register_strategy(name)(Faulty)
    try:
        config = tiny_config(tmp_path, strategy={"name": name}, logging={"checkpoint_every": 2})
        with pytest.raises(StrategyContractError) as err:
            run_distillation(config, bundle=make_bundle(), teacher=make_teacher())
    finally:
        _REGISTRY.pop(name, None)
    assert f"strategy {name!r} (" in str(err.value) and problem in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()
