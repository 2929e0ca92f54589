#!/usr/bin/env bash
# RS-ResNet-18 training and eval speed on one GPU: the PyTorch anchor and rsnets_jax, same machine,
# same run, batch 256, resolutions 224 192 160 128 96. Results: one JSON line per run in
# $OUT/bench.jsonl (echoed too), then the jax/torch ratios.
#
# The anchor is not in this repository and ../shared does not travel to the device machine:
# copy it first into the checkout's git-ignored folder .device/ (.gitignore ignores /.device/),
# and have the device run carry that folder:
#     mkdir -p .device && cp ../shared/bench/torch_rs_resnet18.py .device/
#     pip install --target .device/pylib --no-deps ml-collections==1.1.0
# The device image has jax, flax, optax, orbax and torch but may lack ml-collections (pure Python),
# which the benchmark imports; .device/pylib carries it as plain files (nothing is installed there).
#     run(command="bash experiments/gpu_benchmark.sh", carry=[".device"], timeout_s=600)
# Environment: ANCHOR (the anchor's file, default .device/torch_rs_resnet18.py), OUT (default
# runs/gpu_benchmark), PYTHON (default python3), ITERS (default 20),
# LIMIT_S (seconds allowed to one run, default 240), TOTAL_S (seconds for all five, default 540,
# under the device's 600 s per command; a run is cut to what is left, and skipped under 30 s).
# Only the ratios of results already gathered:  bash experiments/gpu_benchmark.sh --ratios FILE
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_benchmark}
ITERS=${ITERS:-20}
LIMIT_S=${LIMIT_S:-240}
TOTAL_S=${TOTAL_S:-540}
ANCHOR=${ANCHOR:-.device/torch_rs_resnet18.py}
RESULTS="$OUT/bench.jsonl"

ratios() {
  "$PYTHON" - "$1" <<'EOF'
import json, sys
runs = {r['framework'].split()[0] + ' ' + r['variant']: r
        for r in map(json.loads, open(sys.argv[1]))}
pairs = [('jax float32', 'torch fp32'), ('jax bfloat16', 'torch bf16cl'),
         ('jax bfloat16', 'torch bf16cl_compile')]
print('\njax/torch ratios (train img/s: > 1 means JAX faster; warm-up: < 1 means JAX sooner)')
for j, t in pairs:
  if j not in runs or t not in runs:
    print(f'{j} / {t}: missing')
    continue
  a, b = runs[j], runs[t]
  ev = ' '.join(f'{r}:{a["eval_img_s_per_res"][str(r)] / b["eval_img_s_per_res"][str(r)]:.2f}'
                for r in b['res'])
  # The anchor's warmup_s is its 3 warm-up steps; JAX's warmup3_s is model creation + the same 3.
  print(f'{j} / {t}: train img/s {b["step_ms"] / a["step_ms"]:.2f} '
        f'({a["train_img_s"]} / {b["train_img_s"]}), warm-up 3 steps {a["warmup3_s"] / b["warmup_s"]:.2f} '
        f'({a["warmup3_s"]} s / {b["warmup_s"]} s; JAX first step at {a["warmup_s"]} s), '
        f'peak GiB {a["peak_mem_gib"]} / {b["peak_mem_gib"]}, eval img/s per res {ev}')
EOF
}

if [[ ${1:-} == --ratios ]]; then ratios "$2"; exit; fi

if [[ ! -f "$ANCHOR" ]]; then
  echo "error: missing $ANCHOR: copy the PyTorch anchor (torch_rs_resnet18.py) there and carry .device" >&2
  exit 2
fi
mkdir -p "$OUT"
: > "$RESULTS"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__)'

# One run: its JSON line goes to $RESULTS and the screen, its stderr to $OUT/<name>.log. A run that
# fails or passes LIMIT_S is reported and the next one still runs.
bench() {
  local name=$1; shift
  echo "== $name: $*"
  local left=$((TOTAL_S - SECONDS)) t0=$SECONDS
  if ((left < 30)); then echo "   skipped: ${left} s left of TOTAL_S"; return; fi
  timeout "$((left < LIMIT_S ? left : LIMIT_S))" "$@" 2> "$OUT/$name.log" | grep '^{' | tee -a "$RESULTS"
  local rc=("${PIPESTATUS[@]}")
  echo "   ($((SECONDS - t0)) s, exit ${rc[0]})"
  if [[ ${rc[0]} != 0 ]]; then tail -n 5 "$OUT/$name.log"; fi
}

# Cheapest first, so that a run cut short still brings back the others.
bench torch_fp32 "$PYTHON" "$ANCHOR" --variant fp32 --batch 256 --iters "$ITERS"
bench jax_float32 env PYTHONPATH=.:.device/pylib "$PYTHON" experiments/benchmark.py --dtype float32 --batch 256 --iters "$ITERS"
bench torch_bf16cl "$PYTHON" "$ANCHOR" --variant bf16cl --batch 256 --iters "$ITERS"
bench jax_bfloat16 env PYTHONPATH=.:.device/pylib "$PYTHON" experiments/benchmark.py --dtype bfloat16 --batch 256 --iters "$ITERS"
bench torch_bf16cl_compile "$PYTHON" "$ANCHOR" --variant bf16cl_compile --batch 256 --iters "$ITERS"

ratios "$RESULTS"
