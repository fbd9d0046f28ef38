"""World v1: how far the probe set alone moves the per-regime probe discrepancy of one student.

The probe prompts are stratified by regime and region, so the ablations that change the regions
(`regions.k=16`, `regions.method=metadata`) were evaluated on other probe prompts than the headline
(`docs/results/shapes-gpu`), and they ran aria only: their "aria / rc" ratios divided by the headline's rc,
measured on the headline's probes. This measures the part of such a ratio that is the probe set's: the
same student and teacher on the three probe sets, the ablation's probe discrepancy per regime over the
headline's. The student is the run's starting point (BK-SDM-Tiny copied from the teacher): the trained
students were not kept. The regions are k-means'ed again here, and k-means on another machine moves prompts
that lie near a boundary, so the probe sets are like the evaluations', not theirs (their digests are
printed); what is measured is how much a change of region partition moves the ratio.

    python docs/results/ablate-metadata/probe_sets.py     # CPU, a few minutes; writes probe_sets.json here
"""

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from aria.config import load_config
from aria.experiment.evaluate import load_components
from aria.models.students import build_student
from aria.training.probe import build_probe_set, probe_discrepancy_by_regime

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
VARIANTS = {"headline": ("shapes-gpu", []), "k16": ("ablate-k16", ["regions.k=16"]),
            "metadata": ("ablate-metadata", ["regions.method=metadata"])}
REGIMES = ("seen", "under", "unseen")


def main() -> None:
    torch.manual_seed(0)
    measured, digests = {}, {}
    student = None
    for name, (folder, sets) in VARIANTS.items():
        config = load_config(ROOT / "configs" / "shapes-gpu.yaml", overrides=["backend.device=cpu", *sets])
        teacher, bundle, _ = load_components(config, judge=object())
        scheduler = DDPMScheduler.from_config(teacher.scheduler_config)
        digest = build_probe_set(bundle, config.eval, scheduler.config.num_train_timesteps).digest
        recorded = json.loads((HERE.parent / folder / "results.json").read_text())["probe_digest"]
        if student is None:  # one student for all three: built once from the (same) teacher
            student, _ = build_student(teacher.unet, config.student)
            student = student.float()
        measured[name] = probe_discrepancy_by_regime(student, teacher.unet.float(), bundle, config.eval, scheduler)
        digests[name] = {"here": digest, "evaluations": recorded}
        print(f"{name}: probe set {digest} here, {recorded} in the evaluations", flush=True)
    record = {"student": "BK-SDM-Tiny copied from the world v1 teacher (untrained)", "probe_sets": digests,
              "probe_discrepancy": {name: {r: measured[name][r]["discrepancy"] for r in REGIMES}
                                    for name in measured}}
    (HERE / "probe_sets.json").write_text(json.dumps(record, indent=1) + "\n")
    print("| probe set | " + " | ".join(f"{r} / headline's" for r in REGIMES) + " |")
    print("|---|" + "---|" * len(REGIMES))
    for name in ("k16", "metadata"):
        print(f"| {name} | " + " | ".join(
            f"{measured[name][r]['discrepancy'] / measured['headline'][r]['discrepancy']:.3f}" for r in REGIMES) + " |")


if __name__ == "__main__":
    main()
