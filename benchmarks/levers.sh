#!/usr/bin/env bash
# Issue #20: the kernel levers of the KD step on one H100, each against the same engine path without it
# (benchmarks/engine_throughput.py --levers, one process per lever reusing the first one's baseline and
# candidate, --reuse): img/s, x baseline, % of the bf16 peak, the loss
# difference to the candidate (bf16 engine path) and to the baseline, warm-up seconds, and per lever what was
# applied (fp8 layer counts, the attention kernel per shape, compile counters).
#
# Run from the repository root, with diffusers, pydantic and torchao importable (PYTHONPATH), e.g.
#   bash ../shared/device/prepare.sh   # once, here: the wheels into .whl/
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site && bash benchmarks/levers.sh
# Writes $OUT/levers.json (rewritten after every path: a killed run keeps what it measured), $OUT/levers.log
# and $OUT/smoke.txt. Ends within about 9 minutes: no lever starts after the time budget (BUDGET_S, counted
# from this script's start) is nearly spent, and each lever runs in its own process, stopped by the benchmark
# after PATH_TIMEOUT_S (a SIGALRM, which a path blocked in compiled code does not always see: on 2026-12-06 an
# fp8 path compiled past it) or else by `timeout`. Levers that do not fit are listed as "not started";
# run them in a later call with LEVERS=... On the machine still warm the compile caches in .aria-cache/inductor
# stay, and keeping the JSON outside the call's $OUT reuses the earlier call's baseline and candidate too:
#   OUT=/tmp/levers LEVERS=... bash benchmarks/levers.sh; cp /tmp/levers/* "$OUT"/
# On a fresh machine the reference paths take about 210 s (the candidate compiles for 128-166 s). A compiled
# lever gives new graphs: fp8_both compiled in 228 s (H100, 2026-12-07, after two cut attempts of 157 s and
# 168 s), channels_last in 154 s; a lever whose graphs are all in the cache (fp8_student after fp8_both: the
# fp8 student and the bf16 teacher) in 53 s. Groups, one call each on a fresh machine (benchmarks/RESULTS.md):
# LEVERS=fp8_both | fp8_student | fp8_teacher,sdpa_cudnn,sdpa_flash | channels_last,sdpa_efficient |
# reduce_overhead | max_autotune. CANDIDATE_ONLY=1 leaves the baseline paths out (about 70 s).
# The compiler's caches: on the machine still warm they stay in .aria-cache/inductor (the candidate's warm-up
# fell from 166 s to 19 s in the next call). Between fresh machines they travel only when small
# (benchmarks/inductor_cache.sh: packed above MAX_MB, 40 MiB, they are not saved): the script ends by packing
# TORCHINDUCTOR_CACHE_DIR into $OUT/inductor-cache.tgz.00, .01, ... (parts of 15 MiB) and starts by unpacking
# .levers-cache/inductor-cache.tgz.NN where a call carried them (.levers-cache/ is ignored by git):
#   mkdir -p .levers-cache && cp FILES_AT/inductor-cache.tgz.* .levers-cache/   # then carry .levers-cache
# The lever benchmark's cache packed to 94 MiB after two paths and 141 MiB after five (2026-12-07): too large.
# $OUT/cache.txt says what was unpacked and saved: a warm-up measured with a carried cache is not a cold
# compilation's.
set -uo pipefail
OUT=${OUT:-/tmp/levers-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# fp8 first (the issue's main lever), then the attention kernels (one of cudnn / flash is usually what torch
# picks already, and is then skipped at once), channels_last, CUDA graphs, and max-autotune last.
# Measured (benchmarks/RESULTS.md, "The lever table", H100, x the candidate): fp8_student 0.94, fp8_both 0.89,
# channels_last 0.97, reduce_overhead 1.00 (132 s of recompilation), cudnn_benchmark 1.00 (the candidate's graphs:
# no compilation); sdpa_cudnn is torch's own pick, and sdpa_flash / sdpa_efficient were decided without compiling
# (benchmarks/attention_kernels.py: attention 1.71x / 3.48x slower). Not timed: max_autotune (the teacher's
# forward alone compiled past 412 s) and autotune_matmuls (its first graph still compiling after 499 s over two
# calls; benchmarks/autotune_table.py reads the tuning tables it printed: cuBLAS kept every large matmul).
LEVERS=${LEVERS:-fp8_student,fp8_teacher,fp8_both,sdpa_cudnn,sdpa_flash,cudnn_benchmark,channels_last,sdpa_efficient,reduce_overhead,autotune_matmuls,max_autotune}
BUDGET_S=${BUDGET_S:-470}
PATH_TIMEOUT_S=${PATH_TIMEOUT_S:-360}
# CANDIDATE_ONLY=1: no baseline paths (about 70 s saved for a lever's compilation; FLOPs and % of peak are then
# not counted: take them from a JSON of the same settings)
references=--bf16-reference
[ "${CANDIDATE_ONLY:-0}" = 1 ] && references=--candidate-only
date -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.aria-cache/inductor}
bash benchmarks/inductor_cache.sh restore "$TORCHINDUCTOR_CACHE_DIR" .levers-cache/inductor-cache.tgz \
  | tee "$OUT/cache.txt"

python3 -c "import aria.strategies" 2>/dev/null || \
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || \
  { echo "aria does not import and does not install (pip install -e .)"; exit 4; }

# smoke check: versions, the fp8 APIs of torchao 0.18, one fp8 Linear forward/backward, what torch does with SDPA
python3 - <<'EOF' 2>&1 | tee "$OUT/smoke.txt"
import importlib.metadata as md, inspect
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
for name in ("torchao", "diffusers", "pydantic", "deepspeed"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "MISSING")
print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
from torchao.float8 import Float8LinearConfig, convert_to_float8_training
from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
print("torchao float8 API: convert_to_float8_training, Float8LinearConfig, quantize_, "
      "Float8DynamicActivationFloat8WeightConfig: ok")
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).cuda()
convert_to_float8_training(m, config=Float8LinearConfig.from_recipe_name("tensorwise"))
x = torch.randn(1024, 256, device="cuda", requires_grad=True)
with torch.autocast("cuda", dtype=torch.bfloat16):
    y = m(x)
y.float().pow(2).mean().backward()
print("fp8 training Linear: out", y.dtype, "finite", bool(torch.isfinite(y).all()), "grad finite",
      bool(torch.isfinite(m[0].weight.grad).all()), type(m[0]).__name__)
t = torch.nn.Sequential(torch.nn.Linear(256, 512)).cuda().to(torch.bfloat16)
ref = t(x.detach().bfloat16())
quantize_(t, Float8DynamicActivationFloat8WeightConfig(set_inductor_config=False))
with torch.inference_mode():
    q = t(x.detach().bfloat16())
print("fp8 inference Linear: weight", type(t[0].weight).__name__, "rel. error vs bf16",
      float((q.float() - ref.float()).norm() / ref.float().norm()))
from torch.nn.attention import sdpa_kernel
import torch._dynamo.variables.ctx_manager as cm
print("sdpa priority order", torch._C._get_sdp_priority_order(), "set_priority:",
      "set_priority" in inspect.signature(sdpa_kernel).parameters,
      "dynamo bakes sdpa_kernel into graphs:", hasattr(getattr(cm, "SDPAKernelVariable", None), "_backends_to_nodes"))
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || echo "SMOKE CHECK FAILED (the fp8 levers will be recorded as failed; the others run)"
date -u

# one process per lever, each reusing the paths the earlier ones finished (--reuse): a lever stuck in compilation
# past its limit is ended by `timeout` and costs itself only. The first process also measures the baseline, its
# bf16 loop and the candidate (a later one measures whichever of them is not in the JSON yet).
: > "$OUT/levers.log"
has_candidate() {  # levers.json holds a candidate row that finished
  [ -f "$OUT/levers.json" ] && python3 -c "import json, sys; r = json.load(open(sys.argv[1]))['results']; \
sys.exit(0 if any(p['path'] == 'candidate' and 'images_per_s' in p for g in r for p in g['paths']) else 1)" \
    "$OUT/levers.json" 2>/dev/null
}
for lever in ${LEVERS//,/ }; do
  left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 60 ]; then
    echo "candidate+$lever: not started ($left s of BUDGET_S=$BUDGET_S left)" | tee -a "$OUT/levers.log"; continue
  fi
  reuse=(); limit=$left
  [ -f "$OUT/levers.json" ] && reuse=(--reuse "$OUT/levers.json")
  if has_candidate; then  # only the lever to measure: start-up and one path
    [ $((PATH_TIMEOUT_S + 60)) -lt "$limit" ] && limit=$((PATH_TIMEOUT_S + 60))
  fi
  # the benchmark's own budget ends 20 s before `timeout` (its clock starts after its imports)
  timeout -k 15 "$limit" python3 benchmarks/engine_throughput.py --device cuda --batch 64 --students small \
      --steps 6 --warmup 3 $references --pool 10000000 --regions 4096 --levers "$lever" \
      --time-budget "$((limit - 20))" --min-path-s 45 --path-timeout "$PATH_TIMEOUT_S" "${reuse[@]}" \
      --out "$OUT/levers.json" >> "$OUT/levers.log" 2>&1
  echo "candidate+$lever: engine_throughput rc $? at $(date -u +%T)" | tee -a "$OUT/levers.log"
done
date -u
grep -E "^device:|^== |^   [a-z]|^candidate\+" "$OUT/levers.log" | cut -c1-400
echo
[ -f "$OUT/levers.json" ] && python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); \
from engine_throughput import table; print(table(json.load(open(sys.argv[1]))['results']))" "$OUT/levers.json"
# the compiler's caches for the next call (a call brings back 8 files of 16 MiB at most)
bash benchmarks/inductor_cache.sh save "$TORCHINDUCTOR_CACHE_DIR" "$OUT/inductor-cache.tgz" | tee -a "$OUT/cache.txt"
ls -la "$OUT"
