"""XLA's native convolution against the matmul lowering of rsnets_jax/conv.py, on this CPU.

    PYTHONPATH=. python experiments/cpu_conv.py layers --res 224 160 96 64 32 --batch 16 32
    PYTHONPATH=. python experiments/cpu_conv.py pool --res 224 96 64 32 --batch 1 32
    PYTHONPATH=. python experiments/cpu_conv.py network --res 224 160 96 64 48 32 --batch 16

`layers` times every distinct convolution of a full-width ResNet-18, and the depthwise convolutions
of MobileNetV2, at each input resolution: forward, and forward+backward (gradients of the input and
of the kernel), each layer jitted on its own. It is the evidence for `conv.use_matmul`. The
network sums weight each layer by how often the network has it.
`pool` times the ResNet stem's max pool, forward+backward with XLA's gradient against pooling.py's
gradient from strided views (the evidence for `pooling.max_pool`'s 'auto').
`network` times inference (jit of `net.apply`, one resolution's BatchNorm) of the full-width
RS-ResNet-18 of whichever `rsnets_jax` is on the path, so that two checkouts can be compared.

Times are the median of `--repeats` calls after one warm-up call. The machine is shared: `others`
is how many cores other processes kept busy meanwhile (as in experiments/BENCHMARKS.md), and only
ratios measured when it is near 0 mean much.
"""
import argparse
import collections
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.models import conv, pooling

Layer = collections.namedtuple('Layer', 'count size cin cout k stride groups')


def resnet18_layers(res: int):
  """Every distinct convolution of a torchvision ResNet-18 at input `res`, with its count."""
  size = conv.output_size(res, 7, 2)
  layers = [Layer(1, res, 3, 64, 7, 2, 1)]
  size = conv.output_size(size, 3, 2)  # the max pool
  cin = 64
  for i, cout in enumerate((64, 128, 256, 512)):
    stride = 2 if i else 1
    if stride == 1:
      layers.append(Layer(4, size, cin, cout, 3, 1, 1))
      continue
    layers.append(Layer(1, size, cin, cout, 3, stride, 1))
    layers.append(Layer(1, size, cin, cout, 1, stride, 1))
    size = conv.output_size(size, 3, stride)
    layers.append(Layer(3, size, cout, cout, 3, 1, 1))
    cin = cout
  return layers


def mobilenet_v2_depthwise_layers(res: int):
  """Every distinct depthwise convolution of MobileNetV2 at input `res`, with its count."""
  size = conv.output_size(res, 3, 2)
  cin, counts = 32, collections.Counter()
  for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1)):
    for i in range(n):
      stride = s if i == 0 else 1
      hidden = cin * t
      counts[size, hidden, hidden, 3, stride, hidden] += 1
      size = conv.output_size(size, 3, stride)
      cin = c
  return [Layer(n, *shape) for shape, n in counts.items()]


ARCHS = {'resnet18': resnet18_layers, 'mobilenet_v2': mobilenet_v2_depthwise_layers}


class OtherLoad:
  """Cores that other processes kept busy while the block ran: /proc/stat busy time minus this
  process's CPU time, over the wall time."""

  def __enter__(self):
    self.start = self._snapshot()
    return self

  def __exit__(self, *exc):
    busy, own, wall = (e - s for e, s in zip(self._snapshot(), self.start))
    self.cores = max(0.0, (busy - own) / wall)

  @staticmethod
  def _snapshot():
    with open('/proc/stat') as f:
      ticks = [int(v) for v in f.readline().split()[1:8]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf('SC_CLK_TCK')
    return busy, sum(os.times()[:2]), time.perf_counter()


def timed(fn, args, repeats: int) -> float:
  """Median seconds per call of the jitted `fn`, after one warm-up call (which compiles)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def time_layer(batch: int, layer: Layer, dtype, repeats: int):
  """{(impl, 'fwd' | 'fwd+bwd'): ms} and the cores other processes used meanwhile."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, layer.size, layer.size, layer.cin), np.float32),
                  dtype)
  kernel = jnp.asarray(rng.standard_normal(
      (layer.k, layer.k, layer.cin // layer.groups, layer.cout), np.float32) * 0.05)
  out = conv.output_size(layer.size, layer.k, layer.stride)
  cotangent = jnp.asarray(rng.standard_normal((batch, out, out, layer.cout), np.float32), dtype)
  ms = {}
  with OtherLoad() as load:
    for impl in ('native', 'matmul'):
      def forward(x, kernel, impl=impl):
        return conv.conv2d(x, kernel, layer.stride, layer.groups, impl, dtype)

      def forward_backward(x, kernel, cotangent, forward=forward):
        out, vjp = jax.vjp(forward, x, kernel)
        return out, vjp(cotangent)

      ms[impl, 'fwd'] = 1e3 * timed(jax.jit(forward), (x, kernel), repeats)
      ms[impl, 'fwd+bwd'] = 1e3 * timed(jax.jit(forward_backward), (x, kernel, cotangent),
                                        repeats)
  return ms, load.cores


def layers_table(args):
  dtype = jnp.dtype(args.dtype)
  print('| arch | batch | res | count | in | Cin | Cout | k | s | g | out | native fwd | '
        'matmul fwd | native f+b | matmul f+b | native/matmul f+b | auto | others |')
  print('|' + '---|' * 18)
  sums = collections.defaultdict(float)
  for arch in args.arch:
    for batch in args.batch:
      for res in args.res:
        for layer in ARCHS[arch](res):
          ms, others = time_layer(batch, layer, dtype, args.repeats)
          x_shape = (batch, layer.size, layer.size, layer.cin)
          k_shape = (layer.k, layer.k, layer.cin // layer.groups, layer.cout)
          auto = conv.use_matmul('cpu', x_shape, k_shape, layer.stride, layer.groups)
          auto = 'matmul' if auto else 'native'
          for impl in ('native', 'matmul', 'auto'):
            for kind in ('fwd', 'fwd+bwd'):
              sums[arch, batch, res, impl, kind] += layer.count * ms[
                  auto if impl == 'auto' else impl, kind]
          g = 'dw' if layer.groups > 1 else '1'
          out = conv.output_size(layer.size, layer.k, layer.stride)
          print(f'| {arch} | {batch} | {res} | {layer.count} | {layer.size} | {layer.cin} | '
                f'{layer.cout} | {layer.k} | {layer.stride} | {g} | {out} | '
                f'{ms["native", "fwd"]:.2f} | {ms["matmul", "fwd"]:.2f} | '
                f'{ms["native", "fwd+bwd"]:.2f} | {ms["matmul", "fwd+bwd"]:.2f} | '
                f'{ms["native", "fwd+bwd"] / ms["matmul", "fwd+bwd"]:.2f} | {auto} | '
                f'{others:.1f} |', flush=True)
  print('\nWhole network, every convolution counted as often as it occurs (ms):')
  print('| arch | batch | res | native fwd | matmul fwd | auto fwd | native f+b | matmul f+b | '
        'auto f+b |')
  print('|' + '---|' * 9)
  for arch in args.arch:
    for batch in args.batch:
      for res in args.res:
        cells = ' | '.join(f'{sums[arch, batch, res, impl, kind]:.1f}'
                           for kind in ('fwd', 'fwd+bwd') for impl in ('native', 'matmul', 'auto'))
        print(f'| {arch} | {batch} | {res} | {cells} |')


def pool_table(args):
  """The ResNet stem's 3x3 stride-2 max pool (64 channels, after a ReLU), forward+backward with
  XLA's gradient (select-and-scatter) against pooling.py's gradient from strided views, and the
  forward alone, which is XLA's reduction either way."""
  print('| batch | res | map | fwd | native f+b | views f+b | native/views f+b | others |')
  print('|' + '---|' * 8)
  rng = np.random.default_rng(0)
  for batch in args.batch:
    for res in args.res:
      size = conv.output_size(res, 7, 2)
      x = jnp.asarray(np.maximum(rng.standard_normal((batch, size, size, 64)), 0), jnp.float32)
      out = conv.output_size(size, 3, 2)
      cotangent = jnp.asarray(rng.standard_normal((batch, out, out, 64)), jnp.float32)
      ms = {}
      with OtherLoad() as load:
        ms['fwd'] = 1e3 * timed(jax.jit(lambda x: pooling.max_pool(x, 3, 2)), (x,), args.repeats)
        for impl in ('native', 'views'):
          def forward_backward(x, cotangent, impl=impl):
            out, vjp = jax.vjp(lambda x: pooling.max_pool(x, 3, 2, impl=impl), x)
            return out, vjp(cotangent)

          ms[impl] = 1e3 * timed(jax.jit(forward_backward), (x, cotangent), args.repeats)
      print(f'| {batch} | {res} | {size} | {ms["fwd"]:.2f} | {ms["native"]:.2f} | '
            f'{ms["views"]:.2f} | {ms["native"] / ms["views"]:.1f} | {load.cores:.1f} |',
            flush=True)


def network_table(args):
  import rsnets_jax  # pylint: disable=import-outside-toplevel
  net = rsnets_jax.create_model('resnet18', resolutions=(224, 192, 160, 128, 96, 64, 48, 32),
                                num_classes=1000)
  params, stats = net.init(jax.random.key(0))
  forward = jax.jit(net.apply)
  rng = np.random.default_rng(0)
  print(f'rsnets_jax from {os.path.dirname(rsnets_jax.__file__)} {args.label}')
  print('| batch | res | img/s | others |')
  print('|---|---|---|---|')
  for batch in args.batch:
    for res in args.res:
      x = jnp.asarray(rng.standard_normal((batch, res, res, 3), np.float32))
      with OtherLoad() as load:
        img_s = batch / timed(forward, (params, stats[res], x), args.repeats)
      print(f'| {batch} | {res} | {img_s:.1f} | {load.cores:.1f} |', flush=True)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('mode', choices=['layers', 'pool', 'network'])
  ap.add_argument('--res', type=int, nargs='+', default=[224, 160, 96, 64, 32])
  ap.add_argument('--batch', type=int, nargs='+', default=[16, 32])
  ap.add_argument('--arch', nargs='+', default=list(ARCHS), choices=list(ARCHS))
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--label', default='', help='printed above the network table')
  args = ap.parse_args()
  print(f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")}  load average '
        f'{" ".join(f"{v:.2f}" for v in os.getloadavg())}  jax {jax.__version__} '
        f'{jax.default_backend()}  XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  if args.mode == 'layers':
    layers_table(args)
  elif args.mode == 'pool':
    pool_table(args)
  else:
    network_table(args)


if __name__ == '__main__':
  main()
