"""Command line: what each exported resolution costs on the machine this runs on
(rsnets_jax/deploy/profile.py).

    python -m rsnets_jax.profile --model=D [--batch=32] [--iters=50] [--batch-iters=5]
        [--warmup=10] [--min-seconds=1] [--runtimes=jax,onnxruntime,onnxruntime_int8]

For every resolution in D/manifest.json (written by `python -m rsnets_jax.export`) and each
runtime (the JAX artifact under `jax.jit`; the ONNX model, and the int8 one when exported, in
onnxruntime on CPU, when installed),
on random uint8 images: `--warmup` calls at batch 1 and one at `--batch` (compilation happens
there), then `--iters` timed calls at batch 1 (latency p50 and p90, ms) and `--batch-iters` at
`--batch` (throughput, images/s), each loop going on for at least `--min-seconds`. Writes the
figures into the manifest (each row's `latency`, and `profile`: the machine, the date, the
settings), D/latency.md (the table) and, when the manifest has accuracies,
D/accuracy_vs_latency.png (top-1 against batch-1 p50 latency, one point per resolution, one line
per runtime). Rerun it to measure again: the figures are replaced.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from rsnets_jax import cli
from rsnets_jax.deploy import formats, profile


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rsnets_jax.profile',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True, help='a directory written by rsnets_jax.export')
  parser.add_argument('--runtimes', type=lambda t: [r for r in t.split(',') if r], default=None,
                      help=f'some of {",".join(formats.RUNTIMES)} (default: every one available)')
  parser.add_argument('--batch', type=int, default=32, help='the batch of the throughput runs')
  parser.add_argument('--iters', type=int, default=50, help='timed batch-1 calls')
  parser.add_argument('--batch-iters', type=int, default=5, help='timed calls at --batch')
  parser.add_argument('--warmup', type=int, default=10, help='untimed batch-1 calls first')
  parser.add_argument('--min-seconds', type=float, default=profile.MIN_SECONDS,
                      help='the shortest time of each timed loop')
  args = parser.parse_args(argv)

  def body():
    profile.profile_model(args.model, args.runtimes, args.batch, args.iters, args.batch_iters,
                  args.warmup, args.min_seconds)
    print(f'wrote {os.path.join(args.model, profile.TABLE)}')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
