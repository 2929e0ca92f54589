#!/usr/bin/env bash
# The five-resolution RS-ResNet-18 train step on this CPU against the PyTorch anchor, float32, in
# rounds that alternate the runs (the machine's speed drifts from minute to minute): 64/56/48/40/32
# px at batch 32 (ROUNDS rounds), then 224/192/160/128/96 px at batch 16 (one round). A round runs
#   anchor          the PyTorch anchor ($ANCHOR) as it is
#   anchor_hugetlb  the same with GLIBC_TUNABLES=glibc.malloc.hugetlb=1
#   jax             experiments/benchmark.py as the commands run: restarted with that tunable
#                   (rsnets_jax/cli.py, restart_with_huge_pages)
#   jax_no_restart  the same with RSNETS_JAX_NO_RESTART=1 (the process as started)
# One JSON line per run, labelled, in $OUT/bench.jsonl; then the ratios of train img/s.
# Environment: ANCHOR (required: the path of the PyTorch anchor, torch_rs_resnet18.py, an
# RS-ResNet-18 step written the way a PyTorch user would; it is not in this repository: on this
# project's machines ANCHOR=../shared/bench/torch_rs_resnet18.py), OUT (default
# runs/cpu_benchmark), PYTHON (default python3), ROUNDS (default 3).
# Only the ratios of results already gathered:  bash experiments/cpu_benchmark.sh --ratios FILE
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/cpu_benchmark}
ROUNDS=${ROUNDS:-3}
ANCHOR=${ANCHOR:-}
RESULTS="$OUT/bench.jsonl"

ratios() {
  "$PYTHON" - "$1" <<'EOF'
import collections, json, statistics, sys
runs = collections.defaultdict(list)  # (setting, run) -> train img/s, in round order
for r in map(json.loads, open(sys.argv[1])):
  runs[r['setting'], r['run']].append(r['train_img_s'])
for setting in dict.fromkeys(s for s, _ in runs):
  print(f'\n{setting}: train img/s per round ' +
        ', '.join(f'{run} {runs[setting, run]}' for s, run in runs if s == setting))
  for jax_run in ('jax', 'jax_no_restart'):
    for anchor in ('anchor', 'anchor_hugetlb'):
      mine, theirs = runs.get((setting, jax_run)), runs.get((setting, anchor))
      if mine and theirs:
        pairs = [round(a / b, 2) for a, b in zip(mine, theirs)]
        print(f'  {jax_run} / {anchor}: {pairs} (median {statistics.median(pairs):.2f})')
EOF
}

if [[ ${1:-} == --ratios ]]; then ratios "$2"; exit; fi

if [[ -z "$ANCHOR" || ! -f "$ANCHOR" ]]; then
  echo "error: set ANCHOR to the PyTorch anchor's file (torch_rs_resnet18.py; got '${ANCHOR}')" >&2
  exit 2
fi
mkdir -p "$OUT"
: > "$RESULTS"
"$PYTHON" -c 'import jax, torch, platform; print("jax", jax.__version__, "| torch", torch.__version__, "|", platform.processor() or platform.machine())'

# One run: its JSON line, labelled with the setting and the run, goes to $RESULTS and the screen;
# its stderr to $OUT/<setting>_<run>.log.
bench() {
  local setting=$1 run=$2; shift 2
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  echo "== $setting $run ($(date -u +%H:%M:%S) UTC, 1-minute load average $load): $*"
  "$@" 2> "$OUT/${setting}_$run.log" | grep '^{' | "$PYTHON" -c "
import json, sys
for line in sys.stdin:
  print(json.dumps({'setting': '$setting', 'run': '$run', 'load_average_1min': $load,
                    **json.loads(line)}))" | tee -a "$RESULTS"
}

round_of() {
  local setting=$1; shift
  bench "$setting" anchor "$PYTHON" "$ANCHOR" --variant fp32 "$@"
  bench "$setting" anchor_hugetlb env GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$PYTHON" "$ANCHOR" --variant fp32 "$@"
  bench "$setting" jax env PYTHONPATH=. "$PYTHON" experiments/benchmark.py "$@"
  bench "$setting" jax_no_restart env PYTHONPATH=. RSNETS_JAX_NO_RESTART=1 "$PYTHON" experiments/benchmark.py "$@"
}

for ((i = 0; i < ROUNDS; i++)); do
  round_of 64..32 --res 64 56 48 40 32 --batch 32 --iters 5
done
round_of 224..96 --batch 16 --iters 3
ratios "$RESULTS"
