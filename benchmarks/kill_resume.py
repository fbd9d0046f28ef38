"""Kill and resume: SIGKILL a CPU run at random points, restart it with ``--resume``, compare to a reference.

1. One uninterrupted reference run of N steps (``aria run`` on ``configs/tiny-test.yaml``, deterministic
   CPU settings, ``logging.every=1``, a small ``logging.checkpoint_every``).
2. The same run in another output_dir, killed with SIGKILL ``--kills`` times and restarted after each
   kill (``--resume`` once a checkpoint folder exists: without one there is nothing to resume), then
   left to finish. The kills are drawn up front (``draw_schedule``) and are of three kinds:
   - *step*: at a uniformly random position of the whole run in step units, the positions sorted so
     the kills spread over all of it: after step k's line in metrics.jsonl, a random part of a step's
     time later (positions past the last step fall in the final export and evaluation); a position
     the resumed run has already passed lands in its first re-run step;
   - *setup*: a uniformly random time within an attempt's start-up (imports, teacher, data, restore);
     about a quarter of the random kills;
   - *checkpoint*: the driver polls ``checkpoints/`` for the ``step-XXXXXXXX.tmp`` folder that
     ``aria.training.checkpoint.save_checkpoint`` writes into before its rename (the module offers no hook) and
     kills a random 0-20 ms after it appears; ``--checkpoint-kills`` of them.
   Step and setup times come from the reference and are re-measured on every attempt (the machine's
   speed changes), and a kill waits for progress rather than a fixed clock, so it lands before the end.
   A kill counts as *during a checkpoint write* when a ``.tmp`` folder created by that attempt is still
   there after the process died (random kills that happen to land in a write count too).
3. Compare: the exported student (``student/diffusion_pytorch_model.safetensors``) and the last
   checkpoint's student / EMA / optimizer tensors exactly equal; the last checkpoint's ``state.json``
   (strategy name, config and state, distiller state, counters, region window) equal, with its
   sha256; ``metrics.jsonl``: one record per step 1..N in order (the engine truncates the file to the
   checkpoint's step on resume, ``aria.training.metrics.truncate_jsonl``, so no duplicates are allowed), equal to
   the reference's except the timing field ``samples_per_s``, and the final ``end`` event equal.

    python benchmarks/kill_resume.py [--steps 16] [--checkpoint-every 2] [--kills 10] [--seed 0]
                                     [--batch-size 8] [--set key=value ...] [--work DIR] [--json FILE]

Prints a summary (kills survived, kills during a checkpoint write, equal yes/no per artefact); exit
status 0 when everything is equal and every requested kill happened, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("samples_per_s",)  # wall-clock measurements: the only fields allowed to differ


@dataclass
class Attempt:
    index: int
    resume: bool
    mode: str  # "checkpoint", "setup", "step" or "finish" (see draw_schedule)
    entry: list | None = None  # the schedule entry
    plan: list | None = None  # see concrete_plan
    killed: bool = False
    killed_at_s: float | None = None
    during_checkpoint: bool = False
    tmp_dirs: list = field(default_factory=list)
    step_before: int = 0
    step_after: int = 0
    checkpoint_before: int = 0
    checkpoint_after: int = 0
    returncode: int | None = None
    wall_s: float = 0.0
    first_step_s: float | None = None


def aria_command(config: Path, out: Path, cache: Path, steps: int, every: int, batch: int | None,
                 extra: list[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "aria.cli", "run", "--config", str(config),
           "--set", f"output_dir={out}", "--set", f"data.cache_dir={cache}",
           "--set", f"distillation.steps={steps}", "--set", f"logging.checkpoint_every={every}",
           "--set", "logging.every=1", "--set", "logging.progress=false", "--set", "backend.device=cpu",
           "--set", "backend.deterministic=true"]
    if batch is not None:
        cmd += ["--set", f"distillation.batch_size={batch}"]
    for item in extra:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def checkpoint_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit())


def tmp_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    try:
        return [root / e.name for e in os.scandir(root) if e.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def last_step(metrics: Path) -> int:
    """The highest step of a complete line of metrics.jsonl (0 if none)."""
    try:
        text = metrics.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    best = 0
    for line in text.splitlines():
        try:
            best = max(best, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            pass
    return best


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the run's own process group (start_new_session)
    except ProcessLookupError:
        pass
    proc.wait()


def timed_reference(cmd: list[str], out: Path, log: Path, timeout: float) -> dict:
    """Run to completion, noting when the first and the last step lines appeared."""
    t0 = time.perf_counter()
    first = last = None
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        seen = 0
        while proc.poll() is None:
            step = last_step(out / "metrics.jsonl")
            if step > seen:
                now = time.perf_counter() - t0
                first = now if first is None else first
                last, seen = now, step
            if time.perf_counter() - t0 > timeout:
                kill_group(proc)
                raise SystemExit(f"reference run exceeded {timeout:.0f} s; see {log}")
            time.sleep(0.05)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed (exit {proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    steps = max(seen, 1)
    step_s = (last - first) / max(steps - 1, 1) if first is not None and last is not None else 1.0
    return {"wall_s": wall, "setup_s": first if first is not None else wall / 2, "step_s": max(step_s, 0.05),
            "tail_s": wall - (last or wall)}


def progress(out: Path, start_ns: int, base: int) -> tuple[bool, int]:
    """(set up, last step) of the attempt started at ``start_ns``: metrics.jsonl is rewritten (truncated to
    the checkpoint's step) when the run's logger opens, at the end of its setup; lines older than that are
    a killed attempt's."""
    path = out / "metrics.jsonl"
    try:
        st = path.stat()
    except FileNotFoundError:
        return False, base
    if st.st_mtime_ns < start_ns:
        return False, base
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:  # parse only when the file changed (the driver polls every few ms)
        _PARSED.clear()
        _PARSED[key] = last_step(path)
    return True, _PARSED[key]


_PARSED: dict = {}


def draw_schedule(rng: random.Random, kills: int, aimed: int, steps: int, aimed_first: bool,
                  setup_share: float = 0.25) -> list[list]:
    """The kills of the run, in order: ["checkpoint"] (aimed at a checkpoint write), ["setup", u] (at u x the
    attempt's setup time: start-up, restore) or ["step", x] (at x in step units of the whole run: after step
    floor(x)'s line, a fraction x - floor(x) of a step later; x > steps falls in the final export and
    evaluation). Step positions are uniform over the run and sorted, so the kills spread over all of it."""
    rest = kills - aimed
    n_setup = round(setup_share * rest)
    positions = sorted(rng.uniform(0.0, steps + 0.8) for _ in range(rest - n_setup))
    kinds = ["checkpoint"] * aimed + ["setup"] * n_setup + ["step"] * (rest - n_setup)
    if aimed_first:
        tail = kinds[aimed:]
        rng.shuffle(tail)
        kinds = kinds[:aimed] + tail
    else:
        rng.shuffle(kinds)
    out, it = [], iter(positions)
    for kind in kinds:
        out.append(["checkpoint"] if kind == "checkpoint" else ["setup", rng.random()] if kind == "setup"
                   else ["step", next(it)])
    return out


def concrete_plan(entry: list, checkpoint: int, est: dict, steps: int) -> list | None:
    """An attempt's kill: ["time", t] (seconds after its start) or ["after", k, d] (d s after step k's line)."""
    if entry[0] == "setup":
        return ["time", round(entry[1] * est["setup_s"], 3)]
    if entry[0] == "step":
        x = entry[1]
        if x >= steps:
            return ["after", steps, round((x - steps) * est["tail_s"], 3)]
        k, frac = int(x), x - int(x)
        return ["after", max(k, checkpoint), round(frac * est["step_s"], 3)]  # passed: the first re-run step
    return None


def run_attempt(a: Attempt, cmd: list[str], out: Path, log: Path, rng: random.Random, est: dict, steps: int,
                timeout: float) -> Attempt:
    a.step_before = last_step(out / "metrics.jsonl")
    a.checkpoint_before = max(checkpoint_steps(out), default=0)
    a.plan = concrete_plan(a.entry, a.checkpoint_before, est, steps) if a.entry else None
    seen_step, seen_at = a.checkpoint_before, None
    before = {p.name for p in tmp_dirs(out)}
    start_ns = time.time_ns()
    t0 = time.perf_counter()
    polls, deadline = 0, None
    with open(log, "ab") as f:
        f.write(f"\n===== attempt {a.index} ({a.mode}, resume={a.resume}, plan={a.plan}) =====\n".encode())
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            now = time.perf_counter() - t0
            if now > timeout:
                kill_group(proc)
                raise SystemExit(f"attempt {a.index} exceeded {timeout:.0f} s; see {log}")
            polls += 1
            if a.mode == "checkpoint":
                fresh = [p for p in tmp_dirs(out) if p.name not in before or _created_after(p, start_ns)]
                if fresh:
                    time.sleep(rng.uniform(0.0, 0.02))
                    break
                time.sleep(0.002)
                if polls % 10:
                    continue
            else:
                time.sleep(0.005)
            ready, step = progress(out, start_ns, a.checkpoint_before)
            if ready and step > seen_step:  # calibrate later plans on this attempt's own speed
                if seen_at is None:
                    a.first_step_s = now
                    est["setup_s"] = max(now - est["step_s"], 0.5)
                else:
                    est["step_s"] = max((now - seen_at) / (step - seen_step), 0.05)
                seen_step, seen_at = step, now
            if a.plan and a.plan[0] == "time" and now >= a.plan[1]:
                break
            if a.plan and a.plan[0] == "after" and deadline is None and ready and step >= a.plan[1]:
                deadline = now + a.plan[2]
            if deadline is not None and now >= deadline:
                break
        if proc.poll() is None:
            kill_group(proc)
            a.killed, a.killed_at_s = True, time.perf_counter() - t0
    a.wall_s = time.perf_counter() - t0
    a.returncode = proc.returncode
    left = [p for p in tmp_dirs(out) if _created_after(p, start_ns)]
    a.tmp_dirs = [p.name for p in left]
    a.during_checkpoint = a.killed and bool(left)
    a.step_after = last_step(out / "metrics.jsonl")
    a.checkpoint_after = max(checkpoint_steps(out), default=0)
    if not a.killed and a.returncode != 0:
        raise SystemExit(f"attempt {a.index} failed on its own (exit {a.returncode}); see {log}:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")
    return a


def _created_after(path: Path, start_ns: int) -> bool:
    try:
        return path.stat().st_ctime_ns >= start_ns - 50_000_000  # filesystem timestamps are coarse
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- compare

def _tensors_equal(a: dict, b: dict) -> tuple[bool, str]:
    import torch

    if set(a) != set(b):
        return False, f"keys differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in sorted(a):
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                    and x.shape == y.shape and torch.equal(x, y)):
                return False, f"tensor {k} differs"
        elif isinstance(x, dict) and isinstance(y, dict):
            ok, why = _tensors_equal(x, y)
            if not ok:
                return False, f"{k}.{why}"
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            ok, why = _tensors_equal(dict(enumerate(x)), dict(enumerate(y)))
            if not ok:
                return False, f"{k}[{why}]"
        elif x != y:
            return False, f"{k}: {x!r} != {y!r}"
    return True, ""


def _canonical_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def compare(ref: Path, run: Path, steps: int) -> dict:
    import torch
    from safetensors.torch import load_file

    result: dict = {}

    def check(name, ok, detail=""):
        result[name] = {"equal": bool(ok), "detail": detail}

    check("student_export", *_tensors_equal(load_file(ref / "student" / "diffusion_pytorch_model.safetensors"),
                                            load_file(run / "student" / "diffusion_pytorch_model.safetensors")))
    last = f"step-{steps:08d}"
    a, b = ref / "checkpoints" / last, run / "checkpoints" / last
    if not (a / "manifest.json").is_file() or not (b / "manifest.json").is_file():
        check("checkpoint", False, f"{last} missing")
    else:
        for name in ("student", "ema"):
            if (a / f"{name}.safetensors").is_file() or (b / f"{name}.safetensors").is_file():
                check(f"checkpoint_{name}", *_tensors_equal(load_file(a / f"{name}.safetensors"),
                                                            load_file(b / f"{name}.safetensors")))
        if (a / "training.pt").is_file():
            check("checkpoint_optimizer", *_tensors_equal(torch.load(a / "training.pt", weights_only=True),
                                                          torch.load(b / "training.pt", weights_only=True)))
        sa, sb = (json.loads((x / "state.json").read_text()) for x in (a, b))
        result["strategy_state_sha256"] = {"reference": _canonical_hash(sa["strategy"]),
                                           "killed": _canonical_hash(sb["strategy"])}
        check("strategy_state", sa["strategy"] == sb["strategy"],
              "" if sa["strategy"] == sb["strategy"] else "strategy name/config/state differ")
        check("training_state", sa == sb, "" if sa == sb else
              f"differs in {sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))}")

    def records(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        step_rows = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows if "event" not in r]
        return step_rows, [r for r in rows if r.get("event") == "end"]

    (ra, ea), (rb, eb) = records(ref), records(run)
    order = [r.get("step") for r in rb]
    if order != list(range(1, steps + 1)):
        dup = sorted({s for s in order if order.count(s) > 1})
        check("metrics", False, f"steps logged {order[:40]} (duplicates {dup})")
    else:
        diff = [r["step"] for r, s in zip(ra, rb) if r != s]
        check("metrics", not diff and len(ra) == len(rb), f"steps whose record differs: {diff[:10]}" if diff else "")
    same_end = len(ea) == len(eb) == 1 and ea[0] == eb[0]
    check("end_event", same_end, "" if same_end else f"{len(ea)} vs {len(eb)} end events, or they differ")
    return result


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny-test.yaml")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--checkpoint-kills", type=int, default=3, help="kills aimed at a checkpoint write (at least)")
    p.add_argument("--aimed-first", action="store_true",
                   help="make the kills aimed at a checkpoint write the first ones (else shuffled in)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--work", type=Path, default=None, help="working folder (default: a new temp folder)")
    p.add_argument("--attempt-timeout", type=float, default=900.0)
    p.add_argument("--json", type=Path, default=None, help="write the summary as JSON here")
    args = p.parse_args(argv)
    if args.checkpoint_kills > args.kills:
        p.error("--checkpoint-kills cannot exceed --kills")

    work = args.work or Path(tempfile.mkdtemp(prefix="aria-kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    ref, run, cache = work / "reference", work / "killed", work / "cache"
    for d in (ref, run):
        if d.exists():
            raise SystemExit(f"{d} exists: use a fresh --work folder")
    rng = random.Random(args.seed)
    common = dict(config=args.config, cache=cache, steps=args.steps, every=args.checkpoint_every,
                  batch=args.batch_size, extra=args.extra)

    print(f"work folder {work}", flush=True)
    est = timed_reference(aria_command(out=ref, resume=False, **common), ref, work / "reference.log",
                          args.attempt_timeout)
    print(f"reference: {est['wall_s']:.1f} s (setup {est['setup_s']:.1f} s, {est['step_s']:.2f} s/step)", flush=True)

    schedule = draw_schedule(rng, args.kills, args.checkpoint_kills, args.steps, args.aimed_first)
    attempts: list[Attempt] = []
    done = False
    while not done:
        killed = sum(a.killed for a in attempts)
        entry = schedule[killed] if killed < len(schedule) else None
        resume = bool(checkpoint_steps(run))
        a = run_attempt(Attempt(len(attempts) + 1, resume, entry[0] if entry else "finish", entry),
                        aria_command(out=run, resume=resume, **common), run, work / "killed.log", rng, est,
                        args.steps, args.attempt_timeout)
        attempts.append(a)
        where = (f"killed at {a.killed_at_s:.2f} s" + (" DURING checkpoint write " + ",".join(a.tmp_dirs)
                                                        if a.during_checkpoint else "")) if a.killed \
            else f"finished (exit {a.returncode})"
        print(f"attempt {a.index:2d} [{a.mode:10s}] resume={str(a.resume):5s} plan={a.plan} {where}; steps "
              f"logged {a.step_before}->{a.step_after}, checkpoint {a.checkpoint_before}->{a.checkpoint_after}",
              flush=True)
        done = not a.killed

    cmp = compare(ref, run, args.steps)
    kills = [a for a in attempts if a.killed]
    summary = {
        "steps": args.steps, "checkpoint_every": args.checkpoint_every, "seed": args.seed,
        "kills_survived": len(kills), "kills_during_checkpoint_write": sum(a.during_checkpoint for a in kills),
        "kills_aimed_at_checkpoint": sum(a.mode == "checkpoint" for a in kills),
        "restarts": len(attempts) - 1, "reference": est, "attempts": [a.__dict__ for a in attempts],
        "compare": cmp, "work": str(work),
    }
    checks = {k: v for k, v in cmp.items() if isinstance(v, dict) and "equal" in v}
    summary["equal"] = all(v["equal"] for v in checks.values())
    summary["ok"] = summary["equal"] and len(kills) >= args.kills
    print("\nKill and resume summary")
    print(f"  kills survived:                {summary['kills_survived']} (requested {args.kills}; "
          f"{summary['restarts']} restarts)")
    print(f"  kills during a checkpoint write: {summary['kills_during_checkpoint_write']} "
          f"({summary['kills_aimed_at_checkpoint']} aimed at one)")
    for name, v in checks.items():
        print(f"  {name:<30} {'yes' if v['equal'] else 'NO'}{'  ' + v['detail'] if v['detail'] else ''}")
    if "strategy_state_sha256" in cmp:
        print(f"  strategy state sha256:         {cmp['strategy_state_sha256']['killed'][:16]} (reference "
              f"{cmp['strategy_state_sha256']['reference'][:16]})")
    print(f"  equal: {'yes' if summary['equal'] else 'NO'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
