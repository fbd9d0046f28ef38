"""The run configuration: one typed pydantic model, loaded from YAML, overridable with ``--set``.

Every section rejects unknown keys, so a misspelt key fails before any heavy work with one line
naming it. ``load_config`` is the single entry point used by the CLI. Every field has the range the
code honours (``aria.errors.StrictModel``: no inf/nan, no ``true`` for a number; seeds are ``Seed``;
sizes have upper bounds), and YAML reading is bounded (nesting depth, alias expansion).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from aria.devices import DEVICE_NAME
from aria.errors import StrictModel, UserError, format_validation_error, short_repr

SEED_MAX = 2**63 - 1  # seeds are stored as int64 (strategy state, safetensors) and fed to torch.manual_seed
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
STEPS_MAX = 10**9  # steps, warmup, logging intervals: a billion optimizer steps
BATCH_MAX = 65_536  # images or prompts in one batch


class Section(StrictModel):
    # unknown keys, inf/nan (lr: .inf would pass gt=0), `true` for a number, '' for a path: errors
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class WorldConfig(Section):
    """The embedded shapes world (used when ``data.source`` is ``shapes``)."""

    seed: Seed = Field(0, description="seed of the regime split (seen / underrepresented / unseen)")
    num_prompts: int = Field(100_000, ge=100, le=10_000_000, description="distinct prompts in the pool")
    skew: float = Field(1.0, ge=0, le=8, description="Zipf exponent of the frequency over combinations")
    unseen_fraction: float = Field(0.15, ge=0, lt=1, description="combinations with no paired images")
    under_fraction: float = Field(0.25, ge=0, lt=1, description="combinations with few paired images")
    under_images: int = Field(1, ge=1, le=1_000_000, description="paired images per underrepresented combination")
    paired_size: int = Field(4000, ge=1, le=1_000_000, description="paired images in total")

    @model_validator(mode="after")
    def _fractions(self):
        if self.unseen_fraction + self.under_fraction >= 1:
            raise ValueError("unseen_fraction + under_fraction must be below 1")
        return self


class ConceptsConfig(Section):
    """The embedded concepts world, world v2 (used when ``data.source`` is ``concepts``): 64 named
    concepts in 8 families x colour x size x position; unseen = whole families (``aria.world.splits``)."""

    seed: Seed = Field(0, description="seed of the pool and the split (which families are unseen)")
    num_prompts: int = Field(200_000, ge=1_000, description="prompts in the pool (one per item first, when it allows)")
    skew: float = Field(1.0, ge=0, le=4, description="Zipf exponent of the prompt frequency over concepts")
    unseen_families: int = Field(2, ge=2, le=6, description="families with no paired image")
    under_concepts: int = Field(8, ge=0, le=32, description="concepts with only under_images paired images")
    under_images: int = Field(4, ge=1, le=216, description="paired images per underrepresented concept")
    compositional_fraction: float = Field(0.1, ge=0, lt=1, description="items of seen concepts held out "
                                                                            "(the compositional control)")
    paired_size: int = Field(12_000, ge=1, description="paired images in total")


class DataConfig(Section):
    source: Literal["shapes", "concepts", "files"] = Field(
        "shapes", description="embedded world (shapes: v1, concepts: v2) or user files")
    prompts_file: Optional[Path] = Field(None, description="pool of conditions, one prompt per line (files)")
    paired_dir: Optional[Path] = Field(None, description="folder of paired images + captions.txt (files)")
    cache_dir: Path = Field(Path(".aria-cache"), description="embedding / pool / region caches")
    world: WorldConfig = WorldConfig()
    concepts: ConceptsConfig = ConceptsConfig()

    @model_validator(mode="after")
    def _files(self):
        if self.source == "files" and (self.prompts_file is None or self.paired_dir is None):
            raise ValueError("data.source 'files' needs prompts_file and paired_dir")
        return self

    @model_validator(mode="after")
    def _files_unread(self):
        unread = [name for name in ("prompts_file", "paired_dir") if getattr(self, name) is not None]
        if self.source != "files" and unread:
            raise ValueError(f"data.{unread[0]} is read only with data.source 'files' (source is "
                             f"{self.source!r}): remove it or set data.source: files")
        return self


class EncoderConfig(Section):
    kind: Literal["minilm", "clip"] = Field("minilm", description="text encoder")
    path: Optional[Path] = Field(None, description="local model folder (clip; minilm: default package)")
    batch_size: int = Field(512, ge=1, le=BATCH_MAX, description="prompts per encoding chunk")
    device: str = Field("auto", pattern=DEVICE_NAME.pattern,
                        description="device for encoding: auto, cpu, mps, cuda or cuda:N")
    max_length: Optional[int] = Field(None, ge=1, le=512, description="token length L of the context; None = 32 "
                                      "(minilm: every world prompt fits), 77 (clip)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="compute dtype; auto = float32 on CPU, the stored weights' dtype on GPU"
    )


class RegionsConfig(Section):
    method: Literal["kmeans", "metadata"] = Field("kmeans", description="k-means on embeddings or metadata")
    k: int = Field(64, ge=1, le=1_000_000, description="number of regions (k-means)")
    metadata_keys: list[str] = Field(["shape", "color"], description="attributes defining metadata regions")
    iterations: int = Field(30, ge=1, le=10_000, description="k-means iterations")
    seed: Seed = Field(0, description="k-means seed")


class TeacherConfig(Section):
    path: Optional[Path] = Field(None, description="diffusers UNet folder; None = the shipped world teacher")
    subfolder: Optional[str] = Field(None, description="e.g. 'unet' for a Stable Diffusion folder")
    guidance_scale: float = Field(1.5, ge=0, description="classifier-free guidance for sampling")


class StudentConfig(Section):
    variant: Literal["base", "small", "tiny", "channels"] = Field("small", description="BK-SDM variant")
    channel_scale: float = Field(0.5, gt=0, le=1, description="width factor of the 'channels' variant")
    init_from_teacher: bool = Field(True, description="copy teacher weights where shapes match")
    init_path: Optional[Path] = Field(
        None, description="UNet folder (an exported student: config.json + safetensors) whose weights start the "
        "student instead of the teacher's; every tensor must match the variant's shapes (init_from_teacher: false)")

    @model_validator(mode="after")
    def _one_initialisation(self):
        if self.init_path is not None and self.init_from_teacher:
            raise ValueError("student.init_path and student.init_from_teacher both initialise the student: "
                             "set init_from_teacher: false")
        return self


class DistillConfig(Section):
    steps: int = Field(1000, ge=1, le=STEPS_MAX, description="optimizer steps")
    batch_size: int = Field(64, ge=1, le=BATCH_MAX, description="global batch size (all ranks)")
    lr: float = Field(1e-4, gt=0, description="learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, le=STEPS_MAX)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="LR after the warmup: constant, or a cosine down to lr * lr_final at the last step")
    lr_final: float = Field(0.0, ge=0, le=1, description="cosine: the last step's LR as a fraction of lr")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 = off")
    w_task: float = Field(1.0, ge=0, description="weight of the task MSE (paired samples only)")
    w_out: float = Field(1.0, ge=0, description="weight of the output KD MSE")
    w_feat: float = Field(1.0, ge=0, description="weight of the feature KD")
    feature_balance: bool = Field(True, description="divide each block's feature loss by a running teacher scale")
    switch_schedule: Literal["exp", "sigmoid", "constant"] = Field("exp", description="p(t) of switching")
    switch_lambda: float = Field(5.0, ge=0, description="lambda of p(t) = exp(-lambda (1 - t/T))")
    switch_constant: float = Field(0.5, ge=0, le=1, description="p for the constant schedule")
    cfg_dropout: float = Field(0.1, ge=0, lt=1, description="probability of the empty condition")
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="EMA of student weights; None = off (under "
                                       "DeepSpeed bf16 it averages the module's bf16 weights, not the fp32 masters)")
    timestep_bins: int = Field(10, ge=1, le=1000, description="timestep bins of the strategy feedback (at most "
                               "one per training timestep)")
    importance_weights: bool = Field(False, description="weight switched KD losses by the strategy's weights")
    max_nonfinite_steps: int = Field(20, ge=1, le=STEPS_MAX,
                                     description="consecutive non-finite losses before stopping")
    feature_balance_decay: float = Field(0.99, ge=0, lt=1, description="EMA decay of the teacher feature scales")
    feedback_from: Literal["all", "switched"] = Field(
        "all", description="samples whose discrepancy feeds the strategy (CFG-dropped ones never do; a strategy "
        "that learns only from its own draws, exp3, gets switched samples whatever this says)"
    )
    context_cache_mb: float = Field(1024, ge=0, le=1e7,
                                    description="device memory for precomputed paired-prompt contexts")
    step_sync: Literal["host", "device"] = Field(
        "host", description="host: read the step's statistics before backward and skip a non-finite step there "
        "(any backend); device: skip it on the device (fused AdamW), read the statistics without stalling the "
        "GPU (torch backend)")
    feedback_delay: int = Field(0, ge=0, le=1, description="steps between a step and the strategy update from "
                                "its feedback (step_sync device): 1 plans step s+1 before step s's statistics arrive")

    @model_validator(mode="after")
    def _lr_final_read(self):
        if self.lr_final and self.lr_schedule != "cosine":
            raise ValueError("distillation.lr_final is read only with lr_schedule 'cosine': remove it or set "
                             "distillation.lr_schedule: cosine")
        return self


class StrategySection(Section):
    name: str = Field("aria", description="registered strategy name (see `aria strategies`)")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="hyperparameters per strategy name, e.g. {aria: {eps: 0.2}}"
    )

    def params_for(self, name: str | None = None) -> dict[str, Any]:
        return dict(self.params.get(name or self.name, {}))


class BackendConfig(Section):
    kind: Literal["torch", "deepspeed"] = Field("torch")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda (the rank's GPU)")
    precision: Literal["fp32", "bf16"] = Field("fp32")
    zero_stage: int = Field(0, ge=0, le=2, description="DeepSpeed ZeRO stage")
    compile: bool = Field(False, description="torch.compile teacher and student")
    deterministic: bool = Field(True, description="deterministic algorithms (CPU resume equality)")
    cudnn_benchmark: bool = Field(False, description="cuDNN times its convolution algorithms at each new shape and "
                                  "keeps the fastest (torch.backends.cudnn.benchmark; needs deterministic: false, "
                                  "since the pick can differ between runs). On an H100 (BK-SDM-Small, batch 64, "
                                  "compiled, 2026-12-07) 1.00x: its heuristics already pick as fast")
    collective_timeout_s: int = Field(600, ge=1, le=7 * 86_400,
                                      description="timeout of collectives (dead rank detection)")
    cpu_threads: Optional[int] = Field(None, ge=1, le=4096,
                                       description="torch CPU threads per process; None = torch's default")
    # kernel levers (issue #20; benchmarks/engine_throughput.py --levers measures each against the same run without it)
    fp8: Literal["none", "student", "teacher", "both"] = Field(
        "none", description="fp8 matmuls in nn.Linear layers whose dimensions are multiples of 16 (torchao, CUDA "
        "compute capability >= 8.9; convolutions stay in bf16): student = fp8 training "
        "(convert_to_float8_training, tensorwise scaling), teacher = fp8 inference (dynamic fp8 activations and "
        "weights, per-tensor scales); the teacher is fp8 wherever the run uses it (steps, probes, the final "
        "measurement). Changes the numerics: opt-in. On an H100 (BK-SDM-Small, batch 64, 2026-12-07) slower than "
        "the compiled bf16 step: student 0.94x, both 0.89x, with 15% less peak memory; its price in discrepancy "
        "(emulated, CPU-sized): docs/results/concepts-fp8-price. An fp8 student needs a batch per GPU that is a "
        "multiple of 16")
    fp8_emulate: bool = Field(
        False, description="backend.fp8's numerics without fp8 tensor cores, on any device (torchao's emulated fp8: "
        "the same per-tensor dynamic scales and fp8 rounding, matmuls in the run's precision; the teacher's "
        "forward is its fp8 training forward, numerically its fp8 inference). Slower than without fp8: for "
        "measuring fp8's price in discrepancy on a CPU or an older GPU, and for testing fp8 runs there")
    channels_last: bool = Field(False, description="teacher and student in channels_last memory format (meant "
                                "with compile; torch backend only)")
    compile_mode: Literal["default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead"] = Field(
        "default", description="torch.compile mode of teacher and student (needs compile: true): max-autotune* "
        "autotune matmul and convolution kernels at the first step (on an H100, 2026-12-07, the teacher's forward "
        "alone compiled for more than 7 minutes), reduce-overhead and max-autotune replay CUDA graphs (reduce-overhead "
        "on the same H100: 1.00x, 132 s of warm-up)")
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = Field(
        "auto", description="scaled-dot-product attention kernel of teacher and student: auto = torch's choice; "
        "flash / efficient / cudnn = that kernel first, torch's others where it does not take a shape; math = "
        "the unfused reference only. On an H100 torch picks cuDNN attention at every SD shape, the fastest: "
        "flash makes attention 1.71x slower, efficient 3.48x (benchmarks/attention_kernels.py)")

    @model_validator(mode="after")
    def _levers(self):
        if self.cudnn_benchmark and self.deterministic:
            raise ValueError("backend.cudnn_benchmark picks convolution algorithms by timing them, which can differ "
                             "between runs: set backend.deterministic: false")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"backend.compile_mode {self.compile_mode!r} needs backend.compile: true")
        if self.channels_last and self.kind == "deepspeed":
            raise ValueError("backend.channels_last needs backend.kind 'torch' (DeepSpeed's initialize cannot "
                             "broadcast channels_last parameters)")
        if self.fp8_emulate and self.fp8 == "none":
            raise ValueError("backend.fp8_emulate emulates backend.fp8: set backend.fp8 to student, teacher or both")
        if self.fp8 != "none" and self.device == "cpu" and not self.fp8_emulate:
            raise ValueError(f"backend.fp8 {self.fp8!r} needs a CUDA GPU of compute capability >= 8.9 "
                             f"(backend.device is cpu; backend.fp8_emulate: true emulates it)")
        return self


class LoggingConfig(Section):
    every: int = Field(10, ge=1, le=STEPS_MAX, description="steps between console/JSONL summaries")
    tensorboard: Optional[bool] = Field(
        None, description="TensorBoard events in output_dir/tensorboard; null (the default): on when the tensorboard "
        "package is installed, true: required, false: off")
    checkpoint_every: int = Field(200, ge=1, le=STEPS_MAX)
    keep_checkpoints: int = Field(2, ge=1, le=1000)
    progress: bool = Field(True, description="progress bar")


class EvalConfig(Section):
    probe_images: int = Field(512, ge=1, le=1_000_000, description="images of the fixed probe set")
    probe_timesteps: int = Field(8, ge=1, le=1000, description="stratified timesteps of the probe set")
    sample_prompts: int = Field(256, ge=1, le=1_000_000, description="prompts sampled for judge metrics")
    sample_steps: int = Field(25, ge=1, le=50, description="DDIM steps (the sampler takes 1 to 50)")
    seed: Seed = Field(1234, description="seed of probe set and sampling noise")
    batch_size: int = Field(256, ge=1, le=BATCH_MAX, description="images per forward pass in eval (probe and sampling)")


class ChecksConfig(Section):
    """Pre-registered thresholds of ``aria checks`` (world v2 comparisons of none, rc and oracle)."""

    teacher_accuracy_min: float = Field(0.9, ge=0, le=1, description="C1: teacher judged accuracy, min over regimes "
                                        "and families and over runs")
    none_seen_accuracy_min: float = Field(0.5, ge=0, le=1, description="C1: none student's judged accuracy on seen "
                                          "(mean over seeds)")
    none_unseen_seen_cond_min: float = Field(3.0, ge=0, description="C2: none's unseen/seen cond_discrepancy (mean "
                                             "of per-seed ratios)")
    none_unseen_seen_probe_min: float = Field(2.0, ge=0, description="C2: none's unseen/seen probe discrepancy "
                                              "(mean of per-seed ratios)")
    rc_unseen_cond_ratio_max: float = Field(0.7, ge=0, description="C3: unseen cond_discrepancy rc/none (mean of "
                                            "per-seed ratios)")
    rc_seen_cond_ratio_max: float = Field(1.05, ge=0, description="C3: seen cond_discrepancy rc/none (mean of "
                                          "per-seed ratios)")
    region_cv_min: float = Field(0.5, ge=0, description="C4: rc's coefficient of variation of the per-region probe "
                                 "discrepancy (mean over seeds)")
    region_max_median_min: float = Field(2.0, ge=0, description="C4: rc's max/median of the per-region probe "
                                         "discrepancy (mean over seeds)")
    region_seed_spearman_min: float = Field(0.8, ge=-1, le=1, description="C4: Spearman correlation of rc's "
                                            "per-region probe discrepancy between seeds (mean over pairs)")
    tracker_spearman_min: float = Field(0.5, ge=-1, le=1, description="C5: Spearman correlation of rc's logged "
                                        "region_discrepancy_tnorm (region_discrepancy in logs without it; last "
                                        "half of training) with its eval's per-region probe discrepancy (mean "
                                        "over seeds)")
    oracle_unseen_cond_ratio_max: float = Field(0.85, ge=0, description="C5: unseen cond_discrepancy oracle/rc "
                                                "(mean of per-seed ratios)")


class ExperimentConfig(Section):
    """What an experiment is judged by, written before its runs (not part of a run's digest)."""

    checks: ChecksConfig = ChecksConfig()


class RunConfig(Section):
    seed: Seed = Field(0, description="seed of data order, noise and strategy draws")
    output_dir: Path = Field(Path("runs/default"), description="where checkpoints, metrics and the student go")
    data: DataConfig = DataConfig()
    encoder: EncoderConfig = EncoderConfig()
    regions: RegionsConfig = RegionsConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distillation: DistillConfig = DistillConfig()
    strategy: StrategySection = StrategySection()
    backend: BackendConfig = BackendConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    _strategy_config: Any = PrivateAttr(default=None)

    def strategy_config(self):
        """The chosen strategy's typed hyperparameters, validated once (a ``UserError`` names a bad one)."""
        if self._strategy_config is None:
            from aria.strategies import create_strategy

            self._strategy_config = create_strategy(self.strategy.name, self.strategy.params_for()).config
        return self._strategy_config

    def make_strategy(self):
        """A strategy object of the chosen name, with ``strategy_config()``."""
        from aria.strategies import get_strategy

        return get_strategy(self.strategy.name)(self.strategy_config())

    @model_validator(mode="after")
    def _step_sync(self):
        d = self.distillation
        if d.step_sync == "device" and self.backend.kind != "torch":
            raise ValueError("distillation.step_sync 'device' needs backend.kind 'torch' (DeepSpeed reduces the "
                             "gradients into its partitions during backward: a non-finite step is skipped on the host)")
        if d.feedback_delay and d.step_sync != "device":
            raise ValueError("distillation.feedback_delay 1 needs step_sync 'device' (the host sync waits for the "
                             "step's statistics anyway)")
        return self


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], typed value parsed as YAML)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise UserError(f"--set {item!r}: empty key in {key!r}")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except YamlLimitError as err:
        raise UserError(f"--set {key}: {err}") from None
    except (yaml.YAMLError, ValueError):  # not YAML: the text itself
        value = raw
    return path, value


def override_values(overrides) -> dict[str, Any]:
    """The config values that ``--set`` items resolve to, by dotted key, in JSON form: each item parsed as
    ``load_config`` parses it (``parse_override``: the value as YAML), the last of a repeated key winning, and
    typed by the config field it names where it names one and fits it (a path normalised). Two spellings of
    one setting give one value: ``data.concepts.seed=01`` and ``data.concepts.seed= 1`` are 1,
    ``student.init_path=./s1/`` is ``s1``."""
    from pydantic import BaseModel, TypeAdapter

    values = {}
    for item in overrides:
        path, value = parse_override(item)
        model, annotation = RunConfig, None
        for part in path:
            field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
            model = annotation = None if field is None else field.annotation
        if annotation is not None and not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            adapter = TypeAdapter(annotation)
            try:
                value = adapter.dump_python(adapter.validate_python(value), mode="json")
            except ValidationError:
                pass  # left to load_config to name; the value as parsed
        values[".".join(path)] = value
    return values


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


# Bounds of YAML reading: a config is a few levels deep and a few hundred values; these stop a
# 20,000-deep nesting (a RecursionError in the composer) and an alias bomb (10^9 values from a few
# lines, which every later pass - validation, error messages, dumps - would walk) at once.
YAML_MAX_DEPTH = 64
YAML_MAX_VALUES = 100_000
YAML_MAX_BYTES = 10 * 2**20


class YamlLimitError(yaml.YAMLError):
    """A YAML document beyond ``YAML_MAX_DEPTH`` or ``YAML_MAX_VALUES`` (or self-referencing)."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (YAML keeps the last silently), a key
    that is not a string (``1: 2``, ``~: 2``), nesting deeper than ``YAML_MAX_DEPTH`` and aliases
    expanding to more than ``YAML_MAX_VALUES`` values, before anything is constructed."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise YamlLimitError(f"nested deeper than {YAML_MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_repr(key)} is not a name (quote it if it is meant as one)",
                    key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2 reads 3e-4 as a number; PyYAML (YAML 1.1) wants a dot (3.0e-4) and gives the text "3e-4",
# which a float field rejects: numbers in exponent form without a dot are floats here too
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _check_expansion(root) -> None:
    """Raise ``YamlLimitError`` if the composed ``root``, with every alias expanded, holds more than
    ``YAML_MAX_VALUES`` values or nests deeper than ``YAML_MAX_DEPTH``, or refers to itself. Each
    node is measured once (aliases share their node), so this costs the size of the text."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded
    open_: set[int] = set()

    def measure(node, depth: int) -> tuple[int, int]:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise YamlLimitError("an alias refers to the value that holds it", node.start_mark)
        if depth > YAML_MAX_DEPTH:
            raise YamlLimitError(f"aliases nest deeper than {YAML_MAX_DEPTH} levels", node.start_mark)
        values, deepest = 1, 0
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_.add(id(node))
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            for child in children:
                count, below = measure(child, depth + 1)
                values += count
                deepest = max(deepest, below + 1)
                if values > YAML_MAX_VALUES:
                    raise YamlLimitError(f"aliases expand to more than {YAML_MAX_VALUES:,} values", node.start_mark)
            open_.discard(id(node))
        if depth + deepest > YAML_MAX_DEPTH:
            raise YamlLimitError(f"aliases nest deeper than {YAML_MAX_DEPTH} levels", node.start_mark)
        sizes[id(node)] = (values, deepest)
        return values, deepest

    measure(root, 1)


def load_yaml_text(text: str):
    """The data of one YAML document, read with ``_StrictLoader`` (bounded; see its docstring).
    Raises ``yaml.YAMLError`` (``YamlLimitError`` for the bounds) or ``ValueError`` (an integer of
    more than 4300 digits)."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str = "config file") -> dict:
    """The mapping in the YAML file ``path``; a ``UserError`` names the file (and line) for anything
    else: missing, unreadable, not UTF-8, empty, invalid or unbounded YAML, not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        if path.stat().st_size > YAML_MAX_BYTES:
            raise UserError(f"{what} {path} is over {YAML_MAX_BYTES >> 20} MiB (a config is a few KiB)")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not valid UTF-8 (byte {err.start})") from err
    except OSError as err:
        raise UserError(f"{what} {path}: cannot read ({err.strerror or err})") from err
    try:
        data = load_yaml_text(text)
    except YamlLimitError as err:
        mark = err.problem_mark
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{what} {path}{where}: {err.problem}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UserError(f"{what} {path}{where}: invalid YAML ({problem})") from err
    except ValueError as err:  # int("1" * 5000): Python refuses integers of more than 4300 digits
        problem = "an integer of more than 4300 digits" if "integer string conversion" in str(err) else str(err)
        raise UserError(f"{what} {path}: invalid YAML ({problem[:120]})") from err
    if data is None:
        raise UserError(f"{what} {path} is empty (no settings in it): write the settings, or leave the "
                        f"option out for the defaults")
    if not isinstance(data, dict):
        raise UserError(f"{what} {path}: top level must be a mapping, not {type(data).__name__}")
    return data


def load_config(path: Path | None = None, overrides: list[str] = (), strategy: str | None = None) -> RunConfig:
    """Read, override and validate a run config (strategy parameters included)."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    if strategy is not None:
        data.setdefault("strategy", {})
        if not isinstance(data["strategy"], dict):
            raise UserError("config: strategy must be a mapping with name and params")
        data["strategy"]["name"] = strategy
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=f"config {path}" if path else "config")) from err
    from aria.strategies import create_strategy

    config.strategy_config()
    for name, params in config.strategy.params.items():  # every listed strategy's params, typos included
        if name != config.strategy.name:
            create_strategy(name, params)
    return config


def config_to_dict(config: RunConfig) -> dict:
    return config.model_dump(mode="json")
