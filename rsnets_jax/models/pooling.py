"""Max pooling whose gradient XLA's CPU backend runs fast.

XLA's CPU backend differentiates a max `reduce_window` as select-and-scatter, which it expands
into reductions over materialised index arrays and a scatter: several times slower than the
gradient computed here from strided views of the input, and a large share of the small-resolution
train step (`experiments/cpu_conv.py pool`; experiments/BENCHMARKS.md). Only differentiation
changes: a pool that is not differentiated (inference, export, ONNX) is XLA's reduction on every
backend, and GPU and TPU keep XLA's gradient too.
"""
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rsnets_jax.models import conv

IMPLS = ('auto', 'native', 'views')


def _pads(x, window: int, stride: int, padding: str) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  return (conv.pads(x.shape[1], window, stride, padding),
          conv.pads(x.shape[2], window, stride, padding))


def _native(x, window: int, stride: int, pads: Tuple[Tuple[int, int], Tuple[int, int]]):
  return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


def _views(padded, window: int, stride: int, out_h: int, out_w: int):
  """The window*window strided views of `padded`, one per window offset, row-major."""
  return [conv.strided_view(padded, i, j, stride, out_h, out_w)
          for i in range(window) for j in range(window)]


def _max_pool_views(x, window: int, stride: int, padding: str):
  (top, bottom), (left, right) = pads = _pads(x, window, stride, padding)
  out_h = conv.output_size(x.shape[1], window, stride, padding)
  out_w = conv.output_size(x.shape[2], window, stride, padding)

  @jax.custom_vjp
  def pool(x):
    return _native(x, window, stride, pads)

  def forward(x):
    # Under differentiation the maximum of the views: they are needed for the gradient anyway,
    # and on small maps this beats XLA's reduction.
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)),
                     constant_values=-jnp.inf)
    views = _views(padded, window, stride, out_h, out_w)
    out = views[0]
    for view in views[1:]:
      out = jnp.maximum(out, view)
    return out, (padded, out)

  def backward(residuals, grad):
    # As select-and-scatter: each output's gradient goes to the first position (row-major) of
    # its window that holds the maximum, and overlapping windows add up.
    padded, out = residuals
    height, width = padded.shape[1:3]
    taken = jnp.zeros(out.shape, bool)
    grad_padded = jnp.zeros(padded.shape, grad.dtype)
    zero = jnp.zeros((), grad.dtype)
    for t, view in enumerate(_views(padded, window, stride, out_h, out_w)):
      i, j = divmod(t, window)
      first = (view == out) & ~taken
      taken = taken | first
      # The transpose of the strided view: interior padding puts each value back in its place.
      grad_padded = grad_padded + lax.pad(
          jnp.where(first, grad, zero), zero,
          ((0, 0, 0), (i, height - i - stride * (out_h - 1) - 1, stride - 1),
           (j, width - j - stride * (out_w - 1) - 1, stride - 1), (0, 0, 0)))
    return (grad_padded[:, top:height - bottom, left:width - right],)

  pool.defvjp(forward, backward)
  return pool(x)


def max_pool(x, window: int, stride: int, padding: str = 'symmetric', impl: str = 'auto'):
  """Max pooling of NHWC `x` over `window` x `window`, padded with -inf as conv.PADDINGS says
  ('symmetric': (window - 1) // 2 on every side; 'same': TensorFlow's SAME): `nn.max_pool`, with
  XLA's gradient ('native') or the gradient from strided views ('views', equal up to the order of
  additions); 'auto' takes 'views' on CPU only."""
  if impl not in IMPLS:
    raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
  if impl == 'auto':
    impl = 'views' if jax.default_backend() == 'cpu' else 'native'
  if impl == 'views':
    return _max_pool_views(x, window, stride, padding)
  return _native(x, window, stride, _pads(x, window, stride, padding))
