#!/bin/bash
# The quantized RS-ResNet-18 train step against the full-precision one, and without its refits:
# experiments/BENCHMARKS.md, "Quantized train step". Needs the venv of the README.
cd "$(dirname "$0")/.."
. .venv/bin/activate
common="--res 64 56 48 40 32 --batch 128 --iters 3 --classes 10"
for args in "--arch resnet18" "--arch lq_resnet18" "--arch lq_resnet18 --weight-bits 2" "--arch lq_resnet18 --weight-bits 2 --no-refit" "--arch lq_preact_resnet18" "--arch lq_preact_resnet18 --weight-bits 2 --activation-bits 2" "--arch lq_preact_resnet18 --weight-bits 2 --activation-bits 2 --no-refit"; do
  echo "# $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg) args: $args"
  PYTHONPATH=. python experiments/benchmark.py $common $args 2>&1 | grep '^{'
done
