"""One resolution's inference network with BatchNorm folded into the convolutions before it.

At inference y = (conv(x, W) - mean) * s + bias, s = scale / sqrt(var + eps), is
conv(x, W * s) + (bias - mean * s): one convolution with a bias. `fold` computes the folded
weights; `folded_apply` runs the network's own Flax modules (method interception, as
`RSNet.macs`) with folded BatchNorms skipped, so the architectures exist once, in models/.
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.errors import ConfigError
from rsnets_jax.models import RSNet, conv
from rsnets_jax.models.batchnorm import BN_EPS, SwitchableBatchNorm

Path = Tuple[str, ...]


def conv_bn_pairs(net: RSNet) -> Dict[Path, Path]:
  """{BatchNorm path: its convolution's path}, by tracing: paired only when its input is that
  convolution's very output; else (pre-activation blocks), or if quantized: ConfigError."""
  if net.quantized:
    raise ConfigError(f'RS-{net.arch} has quantized weights or activations ({net.weight_bits}/'
                      f'{net.activation_bits} bits); only full-precision networks can be folded')
  pairs, last = {}, {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    mod = context.module
    if context.method_name != '__call__':
      return out
    if isinstance(mod, conv.Conv):
      last['path'], last['out'] = mod.path, out
    elif isinstance(mod, SwitchableBatchNorm):
      if last.get('out') is not args[0]:
        raise ConfigError(f'RS-{net.arch} cannot be folded: BatchNorm {"/".join(mod.path)} does '
                          f'not directly follow a convolution')
      pairs[mod.path] = last['path']
    return out

  res = net.resolutions[0]
  x = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda x: net.module.init(jax.random.key(0), x), x)
  return pairs


def subtree(tree, path: Path):
  for name in path:
    tree = tree[name]
  return tree


def without(tree, path: Path):
  """`tree` (nested dicts) with the entry at `path` removed; the rest shared, not copied."""
  if len(path) == 1:
    return {k: v for k, v in tree.items() if k != path[0]}
  return {**tree, path[0]: without(tree[path[0]], path[1:])}


def _with(tree, path: Path, value):
  if len(path) == 1:
    return {**tree, path[0]: value}
  return {**tree, path[0]: _with(tree.get(path[0], {}), path[1:], value)}


def scale_shift(scale, bias, mean, var, eps: float = BN_EPS):
  """(s, t) in float64 with BatchNorm(y) == y * s + t at inference."""
  s = np.asarray(scale, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
  return s, np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * s


def fold_batchnorm(kernel, scale, bias, mean, var, eps: float = BN_EPS):
  """(kernel', bias') with conv(x, kernel') + bias' == BatchNorm(conv(x, kernel)), `kernel` HWIO.
  Computed in float64 and rounded once to float32, so folding adds no error of its own."""
  s, t = scale_shift(scale, bias, mean, var, eps)
  return (np.asarray(kernel, np.float64) * s).astype(np.float32), t.astype(np.float32)


def fold(net: RSNet, params, stats, res: int) -> Dict[str, Any]:
  """Resolution `res`'s folded params (numpy, for export): each convolution before a BatchNorm
  holds the folded `kernel` and `bias`, the BatchNorms are gone, the rest is unchanged."""
  batch_stats = net.check_stats(stats, res)
  key = 'shared' if net.shared_bn else str(res)
  folded = jax.tree.map(np.asarray, params)
  for bn_path, conv_path in conv_bn_pairs(net).items():
    bn, moments = subtree(params, bn_path), subtree(batch_stats, bn_path)
    kernel, bias = fold_batchnorm(subtree(params, conv_path)['kernel'], bn[f'scale_{key}'],
                                  bn[f'bias_{key}'], moments['mean'], moments['var'])
    folded = _with(without(folded, bn_path), conv_path, {'kernel': kernel, 'bias': bias})
  return folded


def lowered_conv(x, kernel, stride: int, groups: int, padding: str,
          platforms: Optional[Sequence[str]]):
  """conv.conv2d lowered as conv.py chooses on each of `platforms` (None: this process's)."""
  if platforms is None:
    return conv.conv2d(x, kernel, stride, groups, 'auto', jnp.float32, padding)
  impls = {p: 'matmul' if conv.use_matmul(p, x.shape, kernel.shape, stride, groups, padding)
           else 'native' for p in platforms}
  branches = {p: functools.partial(conv.conv2d, stride=stride, groups=groups, impl=impl,
                                   dtype=jnp.float32, padding=padding) for p, impl in impls.items()}
  if len(set(impls.values())) == 1:
    return next(iter(branches.values()))(x, kernel)
  # One artifact for several platforms: each runs the lowering that is fast on it.
  return jax.lax.platform_dependent(x, kernel, **branches)


def folded_apply(net: RSNet, folded, x, platforms: Optional[Sequence[str]] = None):
  """Logits of float images `x` (N, r, r, 3) from resolution r's `fold` tree, in float32 whatever
  `net.dtype`. `platforms` ('cpu', 'cuda', 'tpu', ...; None: this process's) are those it will be
  lowered for, each getting the convolution conv.py uses there."""
  module = dataclasses.replace(net, dtype='float32').module

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(mod, SwitchableBatchNorm) and 'params' not in mod.variables:
      return args[0]
    if isinstance(mod, conv.Conv) and 'bias' in mod.variables.get('params', {}):
      weights = mod.variables['params']
      y = lowered_conv(args[0], weights['kernel'], mod.strides, mod.feature_group_count,
                       mod.padding, platforms)
      return y + weights['bias']
    return next_fun(*args, **kwargs)

  # The added size's padding (outermost: it runs first) reaches the convolutions below.
  with net.padding_at(x.shape[1]), nn.intercept_methods(interceptor):
    return module.apply({'params': folded}, x)
