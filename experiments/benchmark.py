"""Speed of the RS-Net training step and of evaluation, as one JSON line shaped like the PyTorch
anchor (`torch_rs_resnet18.py`), so that the two can be compared as a ratio on the same machine.

    PYTHONPATH=. python experiments/benchmark.py --arch resnet18 --batch 256 --dtype bfloat16
    PYTHONPATH=. python experiments/benchmark.py --arch lq_preact_resnet18 --weight-bits 2 \
        --activation-bits 2 [--no-refit]
    PYTHONPATH=. python experiments/benchmark.py --res 64 56 48 40 32 --batch 32 --trace=/tmp/t
    PYTHONPATH=. python experiments/benchmark.py --res 64 56 48 40 32 --between 60 52 44 36

The step is the product's own (`rsnets_jax.train.step.make_train_step`: on-device views of every
resolution, forward and backward through the shared weights, RS-Nets loss, SGD), fed the same
uint8 batch at every step.
Fields: `warmup_s` runs from the start of model creation to the end of the first step (state,
compile, first step); `warmup3_s` to the end of the third warm-up step, the anchor's `warmup_s`
window (3 steps) plus model creation; `compile_s` traces and compiles the step; `train_img_s` counts
each image once, all resolutions included; `eval_img_s_per_res` is one resolution's forward with its
own BatchNorm, on float inputs on device.

`--no-refit` times a quantized network's step without the quantizers' least-squares refits (the
step's quantizer update is replaced by the identity here, so XLA drops the refit computations):
the difference to the same run without the flag is what the refit costs.
`--trace` also records 3 more steps with jax.profiler and prints, to stderr, where their time
goes by kind of XLA operation (on CPU each operation is one traced event).
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time

import jax
import numpy as np

from rsnets_jax import cli, defaults
from rsnets_jax.data import preprocess
from rsnets_jax.train import optim, sharding, step as steps
from rsnets_jax.models import RSNet

WARMUP_STEPS = 3  # as the anchor


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--arch', default='resnet18')
  ap.add_argument('--res', type=int, nargs='+', default=[224, 192, 160, 128, 96])
  ap.add_argument('--batch', type=int, default=256, help='global batch, split over the devices')
  ap.add_argument('--iters', type=int, default=20, help='timed steps (and timed eval calls)')
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--classes', type=int, default=1000)
  ap.add_argument('--width', type=float, default=1.0)
  ap.add_argument('--devices', type=int, default=None, help='use the first N devices (default all)')
  ap.add_argument('--weight-bits', type=int, default=32)
  ap.add_argument('--activation-bits', type=int, default=32)
  ap.add_argument('--between', type=int, nargs='*', default=[],
                  help='config.between_resolutions: sizes of which each step also trains one')
  ap.add_argument('--no-refit', action='store_true', help='quantized networks: skip the refits')
  ap.add_argument('--trace', metavar='DIR', help='also trace 3 steps with jax.profiler into DIR '
                  'and print where their time goes (CPU: per kind of XLA operation)')
  return ap.parse_args(argv)


def make_config(args):
  config = defaults.get_config()
  config.model.update(arch=args.arch, resolutions=tuple(sorted(args.res, reverse=True)),
                      dtype=args.dtype, num_classes=args.classes, width=args.width,
                      weight_bits=args.weight_bits, activation_bits=args.activation_bits)
  config.data.batch_size = args.batch
  config.between_resolutions = tuple(args.between)
  return config


def peak_memory_gib(devices) -> float:
  """Peak bytes in use on the busiest device since the process started (compilation and warm-up
  included: JAX cannot reset the counter, unlike torch.cuda.reset_peak_memory_stats)."""
  if devices[0].platform != 'gpu':
    return 0.0
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use', 0) for d in devices]
  return max(peaks) / 2**30


def step_breakdown(trace_dir: str, hlo_text: str, steps_traced: int, top: int = 15):
  """Lines of the traced steps' operation time (summed over both CPU threads, so more than the
  wall time when operations overlap) by kind: the XLA operation's name without its number, the
  JAX primitive it came from, and whether that was in the forward or the backward pass."""
  kinds = {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.-]+) = ', line)
    if match:
      op_name = re.search(r'op_name="([^"]*)"', line)
      op_name = op_name.group(1) if op_name else ''
      direction = 'backward' if 'transpose(' in op_name else 'forward'
      source = re.sub(r'\[.*?\]', '', op_name).split('/')[-1]
      operation = re.sub(r'[.]\d+$', '', match.group(1))
      kinds[match.group(1)] = f'{operation} {source} ({direction})'
  trace = glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  with gzip.open(max(trace, key=os.path.getmtime)) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in kinds:
      totals[kinds[e['name']]] += e['dur'] / 1e3 / steps_traced
  everything = sum(totals.values())
  lines = [f'operation time per step, {everything:.1f} ms in all:']
  lines += [f'{ms:9.1f} ms {100 * ms / everything:5.1f}%  {kind}'
            for kind, ms in totals.most_common(top)]
  return lines


def time_calls(fn, iters: int) -> float:
  """Seconds per call, after the anchor's warm-up; dispatch is asynchronous, so only the last
  result is waited for."""
  for _ in range(WARMUP_STEPS):
    out = fn()
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(iters):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / iters


def main(argv=None):
  args = parse_args(argv)
  devices = jax.devices()[:args.devices] if args.devices else jax.devices()
  if args.batch % len(devices):
    raise SystemExit(f'--batch {args.batch} must be a multiple of the {len(devices)} devices')
  config = make_config(args)
  if args.no_refit:
    RSNet.update_quantizers = lambda self, params, *unused: params
  rng = np.random.default_rng(0)
  res_max = max(config.model.resolutions)
  host_batch = {'image': rng.integers(0, 256, (args.batch, res_max, res_max, 3), dtype=np.uint8),
                'label': rng.integers(0, args.classes, (args.batch,), dtype=np.int32)}

  # -- time to the first step: model, state, compile, one step ---------------------------------
  t_start = time.perf_counter()
  net = RSNet(**config.model)
  total_steps = 1000 * config.num_epochs
  optimizer = optim.create_optimizer(config.optim, total_steps, 1000)
  mesh = sharding.make_mesh(devices)
  init_key, step_key = steps.run_keys(config.seed)
  state = sharding.replicate(steps.create_train_state(net, optimizer, init_key), mesh)
  step_key = sharding.replicate(step_key, mesh)
  batch = sharding.shard_batch(host_batch, mesh)
  step = steps.make_train_step(net, config, mesh)
  jax.block_until_ready((state, batch))
  t_compile = time.perf_counter()
  compiled = step.lower(state, batch, step_key).compile()
  compile_s = time.perf_counter() - t_compile
  # The state is donated: always carry the returned one.
  state, metrics = compiled(state, batch, step_key)
  jax.block_until_ready(metrics)
  warmup_s = time.perf_counter() - t_start
  for _ in range(WARMUP_STEPS - 1):
    state, metrics = compiled(state, batch, step_key)
  jax.block_until_ready(metrics)
  warmup3_s = time.perf_counter() - t_start

  # -- training steps ---------------------------------------------------------------------------
  t0 = time.perf_counter()
  for _ in range(args.iters):
    state, metrics = compiled(state, batch, step_key)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / args.iters
  peak = peak_memory_gib(devices)
  loss = float(metrics['loss'])
  if args.trace:
    with jax.profiler.trace(args.trace, create_perfetto_trace=True):
      for _ in range(3):
        state, traced = compiled(state, batch, step_key)
      jax.block_until_ready((state, traced))
    print('\n'.join(step_breakdown(args.trace, compiled.as_text(), 3)), file=sys.stderr)

  # -- evaluation: one resolution at a time, its own BatchNorm ---------------------------------
  forward = jax.jit(net.apply)
  images = jax.device_put(host_batch['image'], sharding.batch_sharded(mesh))
  eval_img_s = {}
  for res in config.model.resolutions:
    resize = jax.jit(lambda x, res=res: preprocess.resize(preprocess.to_float(x), res))
    x = jax.block_until_ready(resize(images))
    stats = state.stats[res]
    dt = time_calls(lambda: forward(state.params, stats, x), args.iters)
    eval_img_s[res] = round(args.batch / dt, 1)

  print(json.dumps({
      'framework': 'jax ' + jax.__version__, 'variant': args.dtype,
      'device': devices[0].device_kind, 'devices': len(devices), 'arch': args.arch,
      'bits': f'W{args.weight_bits}/A{args.activation_bits}', 'refit': not args.no_refit,
      'batch': args.batch, 'res': list(config.model.resolutions), 'between': list(args.between),
      'warmup_s': round(warmup_s, 1), 'warmup3_s': round(warmup3_s, 1),
      'compile_s': round(compile_s, 1), 'step_ms': round(step_s * 1e3, 2),
      'train_img_s': round(args.batch / step_s, 1), 'peak_mem_gib': round(peak, 2), 'loss': loss,
      'eval_img_s_per_res': eval_img_s,
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES')}))


if __name__ == '__main__':
  cli.restart_with_huge_pages()  # as the product's commands run
  main()
