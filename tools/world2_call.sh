#!/usr/bin/env bash
# World v2 on the lent GPU machine, one call at a time (docs/RESULTS.md, "World v2"). A call lasts at
# most 10 minutes, the machine keeps nothing between calls and returns at most 8 files, so each call
# trains, evaluates and packs what it made.
#
# Here, once:
#   bash ../shared/device/prepare.sh && rm -f .whl/deepspeed* .whl/torchao*
#   python tools/world_encoder.py --shrink ../shared/device/all-MiniLM-L6-v2-fp16 .encoder-world
# What travels must stay under 64 MiB. With .whl (9 MB) and .encoder-world (24 MB) carried, the tracked
# files (43 MB, `git ls-files -z | xargs -0 du -cb | tail -1`) are too many: move world v1's teacher and the
# kept results out for the call and back after it (never commit while they are out).
#   mv aria/world/assets/teacher /tmp/world1-teacher && mv docs/results /tmp/docs-results   # ... the call ...
#   mv /tmp/world1-teacher aria/world/assets/teacher && mv /tmp/docs-results docs/results
# The regions: k-means on another machine can move prompts that lie near a boundary (on 2026-12-07 another
# H100 moved 2 of 200,000), and with them the stratified probe set that every evaluation of a split must
# share. So each split's regions are an asset, aria/world/assets/concepts-regions-splitN (its README says
# how it was made), and every call takes them in first (aria regions build --from; the control arm, split 0,
# shares the main arm's). Then a call with carry [".whl", ".encoder-world"] runs one of:
#   bash tools/world2_call.sh stage1 SPLIT
#       the stage-1 student of split SPLIT (0 or 1): 2,000 x 512 samples of `none` from random init,
#       stored in fp16 with its record and evaluation (about 7 minutes on an H100). Unpack
#       $OUT/stage1-splitSPLIT.tgz into aria/world/assets/.
#   bash tools/world2_call.sh runs STRATEGIES SEEDS [SPLIT [CONFIG [KEY=VALUE ...]]]
#       `aria compare` of those runs of CONFIG (default configs/concepts-gpu.yaml; the control arm is
#       configs/concepts-control.yaml, split 0), with any further KEY=VALUE as `--set` values (an ablation,
#       e.g. backend.fp8=both: carry .whl-ao too, the torchao wheel, which is then installed; gather with the
#       same `--set` values; KEY=VALUE needs SPLIT and CONFIG before it), all at once on the GPU, stopped in
#       time to pack. Six runs fit: on 2026-12-06 a call on a fresh machine took 514 s and calls on the
#       still-warm machine 430-438 s (the compile cache in .aria-cache/inductor is kept). An earlier fresh
#       call with the oracle (whose evaluations are longer) was cut during evaluation: run `evals` after a
#       call that was cut. $OUT/runs.tgz holds
#       the compare folder without checkpoints. $OUT/students.tgz.part-* hold every exported student in
#       fp16, so that an evaluation the limit cut can be finished in the next call or here, with
#       `aria eval --student students/NAME --config configs/concepts-gpu.yaml --set backend.device=cpu
#       --set encoder.path=/tmp/enc --out EVALS/NAME` (NAME: <strategy>-seed<s>; the encoder restored with
#       `python tools/world_encoder.py --restore .encoder-world /tmp/enc`; 14-17 minutes a run on 2 CPU
#       cores once the teacher's reference samples are cached, an hour before), then gathered with
#       `tools/world2_gather.py --evals EVALS`.
#       Gather the fetched calls into docs/results/<name>/ with `python tools/world2_gather.py --out
#       docs/results/<name> [--split N] [--config C] [--set KEY=VALUE ...] CALL_DIR ...` (aria compare
#       --summary-only and aria checks).
#   bash tools/world2_call.sh evals [SPLIT [CONFIG [KEY=VALUE ...]]]
#       on the machine still warm from a `runs` call whose limit cut the evaluations (/tmp/runs is kept
#       while the machine is held): evaluates every trained run that has no evaluation yet, all at once
#       (about 40 s for three), and packs as `runs` does. Give it the `runs` call's KEY=VALUE values: they
#       are the evaluation's --set values too, and nothing here compares them with the runs' own.
set -uo pipefail
usage() { echo "usage: bash tools/world2_call.sh stage1 SPLIT | runs STRATEGIES SEEDS [SPLIT [CONFIG [KEY=VALUE ...]]] | evals [SPLIT [CONFIG [KEY=VALUE ...]]]${1:+ ($1)}"; exit 2; }
# the arguments are checked before the call spends anything on installing
split_ok() { [[ "$1" =~ ^(0|[1-9][0-9]*)$ ]] || usage "SPLIT is a number without leading zeros: $1"; }
# the main arm (each split's stage-1 student) or the control arm (a student copied from the teacher)
config_ok() { [[ "$1" == configs/concepts-gpu.yaml || "$1" == configs/concepts-control.yaml ]] \
  || usage "CONFIG is configs/concepts-gpu.yaml or configs/concepts-control.yaml: $1"; }
# further --set values, each KEY=VALUE (a dotted config key); the config checks the value itself
sets_ok() { for kv in "$@"; do [[ "$kv" =~ ^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)*=[^[:space:]]+$ ]] \
  || usage "a --set value is KEY=VALUE, e.g. backend.fp8=both: $kv"; done; }
case "${1:-}" in
  stage1) split_ok "${2:-}"; [ $# -le 2 ] || usage "stage1 takes SPLIT only: ${*:3}" ;;
  runs)
    [[ "${2:-}" =~ ^[a-z0-9_]+(,[a-z0-9_]+)*$ ]] || usage "STRATEGIES is a comma-separated list of names: ${2:-}"
    [[ "${3:-}" =~ ^[0-9]+(,[0-9]+)*$ ]] || usage "SEEDS is a count or a comma-separated list: ${3:-}"
    split_ok "${4:-0}"; config_ok "${5:-configs/concepts-gpu.yaml}"; sets_ok "${@:6}"
    IFS=, read -ra strategy_list <<<"$2"; IFS=, read -ra seed_list <<<"$3"
    [ "$(printf '%s\n' "${strategy_list[@]}" | sort -u | wc -l)" -eq "${#strategy_list[@]}" ] \
      || usage "STRATEGIES names one twice: $2"
    [ "$(for x in "${seed_list[@]}"; do echo $((10#$x)); done | sort -u | wc -l)" -eq "${#seed_list[@]}" ] \
      || usage "SEEDS names one twice: $3"
    seeds_n=${#seed_list[@]}; [ "$seeds_n" -eq 1 ] && seeds_n=$((10#${seed_list[0]}))  # one number is a count
    n=$(( ${#strategy_list[@]} * seeds_n ))
    [ "$n" -ge 1 ] && [ "$n" -le 6 ] || usage "$n runs: 1 to 6 fit one call (training and evaluation)" ;;
  evals) split_ok "${2:-0}"; config_ok "${3:-configs/concepts-gpu.yaml}"; sets_ok "${@:4}" ;;
  *) usage ;;
esac
OUT=${OUT:-/tmp/world2-out}
mkdir -p "$OUT"
shopt -s nullglob; torchao_wheels=(.whl-ao/*.whl); shopt -u nullglob  # carried for backend.fp8 only
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  "${torchao_wheels[@]}" && export PYTHONPATH=/tmp/site || { echo "the wheels in .whl (and .whl-ao) do not install"; exit 3; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || { echo "aria does not install"; exit 4; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 tools/world_encoder.py --restore .encoder-world /tmp/enc || exit 5
nvidia-smi --query-gpu=name --format=csv,noheader; date -u +%T

# the split's shipped regions (see the head of this file), or no call: shared SPLIT CONFIG [--set ...]
shared_regions() {
  python3 -m aria.cli regions build --from "aria/world/assets/concepts-regions-split$1" --config "$2" \
    --set encoder.path=/tmp/enc "${@:3}" > "$OUT/regions.log" 2>&1 || { tail -1 "$OUT/regions.log"; exit 7; }
  grep "regions folder" "$OUT/regions.log"
}

# the --set values of SPLIT's runs of CONFIG into the array `extra` (as tools/world2_gather.py's call_sets):
# split_sets SPLIT CONFIG [KEY=VALUE ...]. Another split has its own data seed and, in the main arm, its own
# stage-1 student; the call's own KEY=VALUE values come last.
split_sets() {
  extra=()
  [ "$1" != 0 ] && extra=(--set data.concepts.seed="$1")
  [ "$1" != 0 ] && [ "$2" = configs/concepts-gpu.yaml ] \
    && extra+=(--set student.init_path=aria/world/assets/concepts-student-split$1)
  for kv in "${@:3}"; do extra+=(--set "$kv"); done
  return 0
}

# fp16 copies of UNet folders with their aria.json (the run's record), in one process: halve SRC DST [SRC DST ...]
halve() {
  python3 - "$@" <<'EOF'
import shutil, sys
import torch
from diffusers import UNet2DConditionModel
pairs, failed = sys.argv[1:], 0
for src, dst in zip(pairs[::2], pairs[1::2]):
    try:
        UNet2DConditionModel.from_pretrained(src).to(torch.float16).save_pretrained(dst, safe_serialization=True)
        shutil.copy(f"{src}/aria.json", f"{dst}/aria.json")
    except Exception as err:  # one student that cannot be read (e.g. cut mid-export) does not stop the others
        shutil.rmtree(dst, ignore_errors=True)
        print(f"{src}: not halved ({type(err).__name__}: {err})".splitlines()[0])
        failed = 1
sys.exit(failed)
EOF
}

# $OUT/runs.tgz: the compare folder without weights; $OUT/students.tgz.part-*: every exported student in fp16
pack_runs() {
  mkdir -p /tmp/students
  local pairs=()
  for run in /tmp/runs/runs/*/seed*; do
    dst="/tmp/students/$(basename "$(dirname "$run")")-$(basename "$run")"
    [ -d "$run/student" ] && [ ! -d "$dst" ] && pairs+=("$run/student" "$dst")
  done
  [ "${#pairs[@]}" -eq 0 ] || halve "${pairs[@]}"
  tar czf "$OUT/runs.tgz" --exclude=checkpoints --exclude=student --exclude='*.safetensors' --exclude=tensorboard -C /tmp runs
  tar czf /tmp/students.tgz -C /tmp students && split -b 15m /tmp/students.tgz "$OUT/students.tgz.part-"
}

case "${1:-}" in
  stage1)
    split=$2
    name=concepts-student-split$split
    shared_regions "$split" configs/concepts-gpu.yaml --set data.concepts.seed="$split"
    timeout -k 10 $((470 - SECONDS)) python3 -m aria.cli run --config configs/concepts-gpu.yaml --strategy none \
      --set encoder.path=/tmp/enc --set data.concepts.seed="$split" --set student.init_path=null \
      --set distillation.steps=2000 --set distillation.lr=1e-3 --set distillation.lr_final=0.05 \
      --set output_dir=/tmp/stage1 --set logging.checkpoint_every=100000 > "$OUT/stage1.log" 2>&1
    echo "run rc $? $(date -u +%T)"; tail -25 "$OUT/stage1.log"
    halve /tmp/stage1/student "/tmp/$name" || exit 6
    timeout -k 10 $((570 - SECONDS)) python3 -m aria.cli eval --student /tmp/stage1 --config configs/concepts-gpu.yaml \
      --set encoder.path=/tmp/enc --set data.concepts.seed="$split" --set student.init_path=null \
      --set eval.probe_images=256 --set eval.sample_prompts=256 --out /tmp/stage1-eval > "$OUT/eval.log" 2>&1
    echo "eval rc $? $(date -u +%T)"; tail -20 "$OUT/eval.log"
    cp /tmp/stage1-eval/eval.json "/tmp/$name/evaluation.json" 2>/dev/null
    cp /tmp/stage1/metrics.jsonl "$OUT/stage1-metrics.jsonl"
    tar czf "$OUT/stage1-split$split.tgz" -C /tmp "$name"
    ;;
  runs)
    strategies=$2; seeds=$3; split=${4:-0}; config=${5:-configs/concepts-gpu.yaml}
    split_sets "$split" "$config" "${@:6}"
    shared_regions "$split" "$config" "${extra[@]}"
    timeout -k 10 $((500 - SECONDS)) python3 -m aria.cli compare --config "$config" --strategies "$strategies" \
      --seeds "$seeds" --parallel "$n" --set encoder.path=/tmp/enc "${extra[@]}" --out /tmp/runs > "$OUT/compare.log" 2>&1
    echo "compare rc $? $(date -u +%T)"; tail -5 "$OUT/compare.log"
    python3 -m aria.cli checks --compare /tmp/runs --config "$config" 2>&1 | tail -15
    pack_runs
    ;;
  evals)
    split=${2:-0}; config=${3:-configs/concepts-gpu.yaml}
    split_sets "$split" "$config" "${@:4}"
    shared_regions "$split" "$config" "${extra[@]}"
    for run in /tmp/runs/runs/*/seed*; do
      [ -f "$run/student/aria.json" ] && [ ! -f "$run/eval/eval.json" ] || continue
      trained_on=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['config']['data']['concepts']['seed'])" \
        "$run/student/aria.json")
      [ "$trained_on" = "$split" ] || { echo "$run: trained on split $trained_on, not SPLIT $split: not evaluated"; continue; }
      echo "evaluating $run"
      timeout -k 10 $((480 - SECONDS)) python3 -m aria.cli eval --student "$run" --config "$config" \
        --set encoder.path=/tmp/enc "${extra[@]}" --out "$run/eval" > "$run/eval.log" 2>&1 &
    done
    wait
    echo "evaluations done $(date -u +%T)"
    pack_runs
    ;;
esac
ls -la "$OUT"; date -u +%T
