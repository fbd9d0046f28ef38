"""World v2, split 1: why invfreq's unseen D_c rises while its probe discrepancy falls.

With e_c = eps_S(c) - eps_T(c) and e_0 = eps_S(empty) - eps_T(empty) on the same noisy probe input:
- the probe discrepancy is P = mean e_c^2;
- D_c = mean (e_c - e_0)^2 = P + U - 2 X, with U = mean e_0^2 (the student's prompt-blind error) and
  X = mean e_c e_0 (the part of the conditional error that the prompt-blind error shares);
- G = mean (g e_c + (1 - g) e_0)^2 = g^2 P + (1 - g)^2 U + 2 g (1 - g) X is the error of the guided
  prediction eps(empty) + g (eps(c) - eps(empty)) that the evaluation's sampler uses (g = 1.5 here):
  P at g = 1, and D_c, scaled by g^2, as g grows. `aria eval` now reports it as `guided_discrepancy`;
  the 18 runs here were evaluated before it did.
This recomputes them per timestep on the probe set of the split-1 evaluations (the unseen and seen probes),
for the students a call sent back in fp16, on the CPU.

    python docs/results/concepts-v2-split1/dc_parts.py STUDENTS_DIR [NAME ...]   # about 90 s a student
    python docs/results/concepts-v2-split1/dc_parts.py --tables                   # from dc_parts.json

STUDENTS_DIR holds ``<strategy>-seed<s>/`` student folders (a `tools/world2_call.sh runs` call's
``students.tgz``, unpacked). Needs the encoder at /tmp/enc (`python tools/world_encoder.py --restore
.encoder-world /tmp/enc`) and split 1's regions in the cache (`aria regions build --from
aria/world/assets/concepts-regions-split1 --config configs/concepts-gpu.yaml` with the --set values of
SETS). Adds the named students to dc_parts.json (per student, regime, part: the mean per timestep), replacing
any of the same name, and prints, per regime, each strategy's parts against rc's, and the largest gap of P and
D_c to the GPU evaluations (eval.json).
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from aria.config import load_config
from aria.experiment.evaluate import load_components, load_student
from aria.experiment.stats import mean_ci, paired_ratios
from aria.training.probe import build_probe_set, condition_discrepancy, guided_discrepancy, probe_eps
from aria.world.worlds import REGIME_NAMES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SETS = ["encoder.path=/tmp/enc", "backend.device=cpu", "data.concepts.seed=1",
        "student.init_path=aria/world/assets/concepts-student-split1"]
DIGEST = "db667d119d986367"  # the split-1 evaluations' probe set
REGIMES = ("unseen", "seen")
PARTS = ("P", "U", "X", "D_c", "G")
OUT = HERE / "dc_parts.json"  # what the last run measured (G by the formula before guided_discrepancy existed,
# equal to it within 1e-8); `--tables` prints it again


def parts(student: dict, teacher: dict, guidance: float) -> dict:
    """Per probe and timestep (N, J): P, U, X, D_c and G (`aria eval`'s guided discrepancy)."""
    e_c = (student["c"] - teacher["c"]).astype(np.float64)
    e_0 = (student["u"] - teacher["u"]).astype(np.float64)
    axes = (2, 3, 4)
    return {"P": (e_c ** 2).mean(axes), "U": (e_0 ** 2).mean(axes), "X": (e_c * e_0).mean(axes),
            "D_c": condition_discrepancy(student["c"], student["u"], teacher["c"], teacher["u"]),
            "G": guided_discrepancy(student["c"], student["u"], teacher["c"], teacher["u"], guidance)}


def recorded() -> dict:
    """dc_parts.json as the last run wrote it, or an empty record."""
    return json.loads(OUT.read_text()) if OUT.exists() else {"students": {}}


def kept_students(header: dict) -> dict:
    """The students dc_parts.json holds, if it was measured on the same probes, timesteps and guidance
    (else none, with a warning: the new record replaces it)."""
    kept = recorded()
    if not kept["students"]:
        return {}
    if any(kept.get(key) != value for key, value in header.items()):
        print(f"{OUT.name} was measured on other probes, timesteps or guidance: its students are dropped",
              file=sys.stderr)
        return {}
    return kept["students"]


def main(students: Path, names: list[str]) -> None:
    config = load_config(ROOT / "configs" / "concepts-gpu.yaml", overrides=SETS)
    teacher, bundle, _ = load_components(config, judge=object())  # no judge: no samples are drawn
    sched = DDPMScheduler.from_config(teacher.scheduler_config)
    encode, _ = teacher.pixel_codec()
    probe = build_probe_set(bundle, config.eval, sched.config.num_train_timesteps, encode)
    if probe.digest != DIGEST:
        sys.exit(f"probe set {probe.digest}, not the evaluations' {DIGEST}: take in split 1's regions first")
    regime = np.asarray(bundle.regime_of_prompt)[probe.prompt_ids]
    keep = np.isin(regime, [REGIME_NAMES.index(r) for r in REGIMES])
    sub = replace(probe, prompt_ids=probe.prompt_ids[keep], x0=probe.x0[keep], noise=probe.noise[keep])
    masks = {r: regime[keep] == REGIME_NAMES.index(r) for r in REGIMES}  # over the kept probes
    enc = bundle.encoder
    ctx = {"c": torch.from_numpy(enc.encode_tokens(bundle.pool.texts(sub.prompt_ids))),
           "u": torch.from_numpy(enc.encode_tokens([""]))}
    batch = config.eval.batch_size
    with torch.no_grad():
        ref = probe_eps(teacher.unet, sub, ctx, sched, batch)
    header = {"probe": DIGEST, "timesteps": sub.timesteps.tolist(), "guidance_scale": config.teacher.guidance_scale}
    kept = kept_students(header)
    if not any(name.startswith("rc-seed") for name in [*names, *kept]):
        sys.exit("no rc student: the tables are ratios to rc; name rc's students too")
    rows = {}
    for name in names:
        unet, _ = load_student(students / name, "cpu")
        with torch.no_grad():
            p = parts(probe_eps(unet.float(), sub, ctx, sched, batch), ref, config.teacher.guidance_scale)
        rows[name] = {r: {part: v[mask].mean(0).tolist() for part, v in p.items()} for r, mask in masks.items()}
        print(f"{name}: done", file=sys.stderr, flush=True)
    record = {**header, "students": {**kept, **rows}}
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(OUT)
    tables(record)


def tables(record: dict) -> None:
    """Per regime: each strategy's parts (means over probes, timesteps and seeds), the mean of their per-seed
    ratios to rc with a 95% t-interval, then P and D_c / rc per timestep; first, the largest gap of P and D_c
    to the GPU evaluations."""
    runs = {}  # strategy -> seed -> regime -> part -> mean per timestep
    for name, data in record["students"].items():
        strategy, seed = name.rsplit("-seed", 1)
        runs.setdefault(strategy, {})[int(seed)] = data
    gap = 0.0
    for strategy, seeds in runs.items():
        for seed, data in seeds.items():
            gpu = json.loads((HERE / "runs" / strategy / f"seed{seed}" / "eval" / "eval.json").read_text())
            for r in REGIMES:
                for part, key in (("P", "discrepancy"), ("D_c", "cond_discrepancy")):
                    gap = max(gap, abs(np.mean(data[r][part]) / gpu["metrics"][r][key] - 1))
    print(f"largest relative gap of P and D_c to the GPU evaluations (eval.json): {gap:.2e}")
    rc = runs["rc"]
    for r in REGIMES:
        print(f"\n{r}: x 1e3, means over probes, timesteps and seeds; then / rc, the mean of the per-seed ratios "
              f"[95% t-interval]; G at guidance {record['guidance_scale']}")
        print("| strategy | seeds | " + " | ".join(PARTS) + " | " + " | ".join(f"{part} / rc" for part in PARTS) + " |")
        print("|---|---|" + "---|" * 2 * len(PARTS))
        for strategy, seeds in runs.items():
            means = [np.mean([np.mean(d[r][part]) for d in seeds.values()]) * 1e3 for part in PARTS]
            ratios = [mean_ci(paired_ratios([np.mean(seeds[k][r][part]) for k in seeds],
                                            [np.mean(rc[k][r][part]) if k in rc else None for k in seeds]))
                      for part in PARTS]
            print(f"| {strategy} | {len(seeds)} | " + " | ".join(f"{v:.3f}" for v in means) + " | "
                  + " | ".join(f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]" for c in ratios) + " |")
        for part in ("P", "D_c"):
            print(f"\n{r}, {part} / rc per timestep (ratio of the means over seeds)")
            print("| strategy | " + " | ".join(f"t={t}" for t in record["timesteps"]) + " |")
            print("|---|" + "---|" * len(record["timesteps"]))
            base = np.mean([d[r][part] for d in rc.values()], 0)
            for strategy, seeds in runs.items():
                values = np.mean([d[r][part] for d in seeds.values()], 0) / base
                print(f"| {strategy} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--tables"]:
        sys.exit(tables(json.loads(OUT.read_text())))
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    folder = Path(sys.argv[1])
    if not folder.is_dir():
        sys.exit(f"{folder}: not a folder of <strategy>-seed<s>/ students")
    chosen = sys.argv[2:] or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not any(name.startswith("rc-seed") for name in [*chosen, *recorded()["students"]]):
        sys.exit("no rc student: the tables are ratios to rc; name rc's students too")  # before minutes of probing
    main(folder, chosen)
