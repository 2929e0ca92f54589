"""Native XLA convolution against the matmul lowering of rsnets_jax/conv.py, on this machine's CPU.

    PYTHONPATH=. python experiments/cpu_conv.py layers --res 224 160 96 64 32 --batch 16 32
    PYTHONPATH=. python experiments/cpu_conv.py network --res 224 160 96 64 48 32 --batch 16

`layers` times every distinct convolution of a full-width ResNet-18 and the depthwise convolutions
of MobileNetV2 at each input resolution, forward and forward+backward (gradients of the input and
the kernel), each jitted on its own; this is the evidence for the rule of `conv.use_matmul`.
`others` is how many cores other processes used meanwhile. `network` times inference (jit of `net.apply`, one resolution's BatchNorm) of the full-width
RS-ResNet-18 with whatever `rsnets_jax` is on the path, so that two checkouts can be compared.
Times are the median of `--repeats` calls after one warm-up call; the machine's load average is
printed first, since only same-session ratios on an idle machine mean anything.
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax import conv


def resnet18_layers(res: int):
  """(input size, Cin, Cout, kernel, stride, groups) of every distinct ResNet-18 convolution."""
  size = conv.output_size(res, 7, 2)
  layers = [(res, 3, 64, 7, 2, 1)]
  size = (size + 2 - 3) // 2 + 1  # the 3x3 stride-2 max pool
  cin = 64
  for i, cout in enumerate((64, 128, 256, 512)):
    stride = 2 if i else 1
    layers.append((size, cin, cout, 3, stride, 1))
    if stride != 1:
      layers.append((size, cin, cout, 1, stride, 1))
    size = conv.output_size(size, 3, stride)
    if stride != 1 or cin != cout:
      layers.append((size, cout, cout, 3, 1, 1))
    cin = cout
  return layers


def mobilenet_v2_depthwise_layers(res: int):
  """(input size, C, C, 3, stride, C) of every distinct MobileNetV2 depthwise convolution."""
  size = conv.output_size(res, 3, 2)
  cin, layers = 32, []
  for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1)):
    for i in range(n):
      stride = s if i == 0 else 1
      hidden = cin * t
      layers.append((size, hidden, hidden, 3, stride, hidden))
      size = conv.output_size(size, 3, stride)
      cin = c
  return sorted(set(layers), key=layers.index)


class OtherLoad:
  """Cores that other processes kept busy while the block ran: /proc/stat busy time minus this
  process's CPU time, over the wall time (the machine is shared)."""

  def __enter__(self):
    self.start = self._snapshot()
    return self

  def __exit__(self, *exc):
    end = self._snapshot()
    busy, own, wall = (e - s for e, s in zip(end, self.start))
    self.cores = max(0.0, (busy - own) / wall)

  @staticmethod
  def _snapshot():
    with open('/proc/stat') as f:
      ticks = [int(v) for v in f.readline().split()[1:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf('SC_CLK_TCK')
    return busy, sum(os.times()[:2]), time.perf_counter()


def timed(fn, args, repeats: int) -> float:
  """Median seconds per call of the jitted `fn`, after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def conv_fns(impl, stride, groups, dtype):
  def forward(x, kernel):
    return conv.conv2d(x, kernel, stride, groups, impl, dtype)

  def forward_backward(x, kernel, cotangent):
    out, vjp = jax.vjp(forward, x, kernel)
    return out, vjp(cotangent)

  return jax.jit(forward), jax.jit(forward_backward)


def time_layer(batch, size, cin, cout, k, stride, groups, dtype, repeats):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, cin), np.float32), dtype)
  kernel = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout), np.float32) * 0.05)
  out = conv.output_size(size, k, stride)
  cotangent = jnp.asarray(rng.standard_normal((batch, out, out, cout), np.float32), dtype)
  ms = {}
  with OtherLoad() as load:
    for impl in ('native', 'matmul'):
      forward, forward_backward = conv_fns(impl, stride, groups, dtype)
      ms[impl, 'fwd'] = 1e3 * timed(forward, (x, kernel), repeats)
      ms[impl, 'fwd+bwd'] = 1e3 * timed(forward_backward, (x, kernel, cotangent), repeats)
  return ms, load.cores


def layers_table(args):
  dtype = jnp.dtype(args.dtype)
  print('| arch | batch | res | in | Cin | Cout | k | s | g | out | native fwd ms | matmul fwd ms | '
        'fwd ratio | native f+b ms | matmul f+b ms | f+b ratio | auto | others |')
  print('|' + '---|' * 18)
  totals = {}
  for arch in args.arch:
    layer_fn = resnet18_layers if arch == 'resnet18' else mobilenet_v2_depthwise_layers
    for batch in args.batch:
      for res in args.res:
        for size, cin, cout, k, stride, groups in layer_fn(res):
          ms, others = time_layer(batch, size, cin, cout, k, stride, groups, dtype, args.repeats)
          x_shape, k_shape = (batch, size, size, cin), (k, k, cin // groups, cout)
          auto = 'matmul' if conv.use_matmul('cpu', x_shape, k_shape, stride, groups) else 'native'
          for key, value in ms.items():
            totals[arch, batch, res, key] = totals.get((arch, batch, res, key), 0) + value
          totals[arch, batch, res, 'auto'] = totals.get((arch, batch, res, 'auto'), 0) + ms[
              auto, 'fwd+bwd']
          g = 'dw' if groups > 1 else '1'
          print(f'| {arch} | {batch} | {res} | {size} | {cin} | {cout} | {k} | {stride} | {g} | '
                f'{conv.output_size(size, k, stride)} | {ms["native", "fwd"]:.2f} | '
                f'{ms["matmul", "fwd"]:.2f} | {ms["native", "fwd"] / ms["matmul", "fwd"]:.2f} | '
                f'{ms["native", "fwd+bwd"]:.2f} | {ms["matmul", "fwd+bwd"]:.2f} | '
                f'{ms["native", "fwd+bwd"] / ms["matmul", "fwd+bwd"]:.2f} | {auto} | {others:.1f} |',
                flush=True)
  print('\nSums over the distinct layers (each counted once), forward+backward ms:')
  print('| arch | batch | res | native | matmul | auto |')
  print('|---|---|---|---|---|---|')
  for arch in args.arch:
    for batch in args.batch:
      for res in args.res:
        t = {i: totals[arch, batch, res, (i, 'fwd+bwd') if i != 'auto' else 'auto']
             for i in ('native', 'matmul', 'auto')}
        print(f'| {arch} | {batch} | {res} | {t["native"]:.1f} | {t["matmul"]:.1f} | '
              f'{t["auto"]:.1f} |')


def network_table(args):
  import rsnets_jax  # pylint: disable=import-outside-toplevel
  net = rsnets_jax.create_model('resnet18', resolutions=(224, 192, 160, 128, 96, 64, 48, 32),
                                num_classes=1000)
  params, stats = net.init(jax.random.key(0))
  forward = jax.jit(net.apply)
  rng = np.random.default_rng(0)
  print(f'rsnets_jax from {os.path.dirname(rsnets_jax.__file__)} {args.label}')
  for batch in args.batch:
    row = {}
    for res in args.res:
      x = jnp.asarray(rng.standard_normal((batch, res, res, 3), np.float32))
      with OtherLoad() as load:
        row[res] = batch / timed(forward, (params, stats[res], x), args.repeats)
      print(f'  batch {batch} res {res}: {row[res]:.1f} img/s (others {load.cores:.1f} cores)',
            flush=True)
    print('| batch | ' + ' | '.join(f'{r} px' for r in args.res) + ' |')
    print('|---|' + '---|' * len(args.res))
    print(f'| {batch} | ' + ' | '.join(f'{row[r]:.1f}' for r in args.res) + ' |')


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('mode', choices=['layers', 'network'])
  ap.add_argument('--res', type=int, nargs='+', default=[224, 160, 96, 64, 32])
  ap.add_argument('--batch', type=int, nargs='+', default=[16, 32])
  ap.add_argument('--arch', nargs='+', default=['resnet18', 'mobilenet_v2'])
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--label', default='', help='network: printed with the table')
  args = ap.parse_args()
  print(f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}  load average {os.getloadavg()}  '
        f'jax {jax.__version__} {jax.default_backend()}  XLA_FLAGS={os.environ.get("XLA_FLAGS", "")}')
  if args.mode == 'layers':
    layers_table(args)
  else:
    network_table(args)


if __name__ == '__main__':
  main()
