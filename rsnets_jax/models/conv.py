"""Bias-free 2-D convolution with PyTorch's symmetric padding (or TensorFlow's SAME), lowered to
matmuls where XLA's CPU backend is slow.

XLA's CPU convolution is very slow on tiny feature maps (a ResNet-18 ran slower at 64 px than at
96 px), on depthwise kernels and on most 1x1 and strided layers; as patches and one matmul they
run many times faster, while on large maps the native convolution wins. `use_matmul` holds the
rule; the measurements behind it are experiments/cpu_conv.py's, recorded in
experiments/BENCHMARKS.md. GPU and TPU always get the native convolution.
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ('auto', 'native', 'matmul')
# 'symmetric': (k - 1) // 2 on every side, as PyTorch and the full-precision reference;
# 'same': TensorFlow's SAME, one more at the end where the total is odd (the quantized reference).
PADDINGS = ('symmetric', 'same')


def pads(size: int, kernel: int, stride: int, padding: str = 'symmetric') -> Tuple[int, int]:
  """(before, after) zero padding of one spatial dimension."""
  if padding == 'symmetric':
    return (kernel - 1) // 2, (kernel - 1) // 2
  if padding != 'same':
    raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def output_size(size: int, kernel: int, stride: int, padding: str = 'symmetric') -> int:
  before, after = pads(size, kernel, stride, padding)
  return (size + before + after - kernel) // stride + 1


def use_matmul(backend: str, x_shape: Sequence[int], kernel_shape: Sequence[int], stride: int,
               groups: int, padding: str = 'symmetric') -> bool:
  """Whether `conv2d(impl='auto')` uses the matmul lowering for this layer.

  On CPU: always for depthwise and 1x1 convolutions; for larger kernels when the output has at
  most 4 positions, and otherwise when stride 1 has an output area below Cin / 8 or a strided
  convolution has at least 128 input channels. Everything else (large maps, the stem on RGB) is
  native. Other grouped convolutions were not measured and stay native.
  """
  if backend != 'cpu':
    return False
  k, cin = kernel_shape[0], x_shape[-1]
  if groups > 1:
    return groups == cin == kernel_shape[-1]
  if k == 1:
    return True
  area = (output_size(x_shape[1], k, stride, padding) *
          output_size(x_shape[2], k, stride, padding))
  if area <= 4:
    return True
  if stride == 1:
    return 8 * area < cin
  return cin >= 128


def strided_view(padded, row: int, col: int, stride: int, out_h: int, out_w: int):
  """The (N, out_h, out_w, C) view of NHWC `padded` that a window offset (row, col) sees at every
  output position: view[:, y, x] = padded[:, row + stride * y, col + stride * x]."""
  n, _, _, channels = padded.shape
  return lax.slice(padded, (0, row, col, 0),
                   (n, row + stride * (out_h - 1) + 1, col + stride * (out_w - 1) + 1, channels),
                   (1, stride, stride, 1))


def _sees_data(offset: int, stride: int, out: int, before: int, size: int) -> bool:
  return any(before <= offset + stride * o < before + size for o in range(out))


def _matmul_conv(x, kernel, stride: int, groups: int, padding: str):
  """float32 result of the convolution as a sum over shifted views of the padded input."""
  k = kernel.shape[0]
  n, h, w, cin = x.shape
  cout = kernel.shape[-1]
  pad_h, pad_w = pads(h, k, stride, padding), pads(w, k, stride, padding)
  ho, wo = output_size(h, k, stride, padding), output_size(w, k, stride, padding)
  # A tap that reads padding only contributes zero: on a 1x1 map a 3x3 kernel is its centre.
  rows = [i for i in range(k) if _sees_data(i, stride, ho, pad_h[0], h)]
  cols = [j for j in range(k) if _sees_data(j, stride, wo, pad_w[0], w)]
  taps = len(rows) * len(cols)
  # float32 throughout: XLA CPU has no fast bfloat16 kernels for the backward matmuls.
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), pad_h, pad_w, (0, 0)))
  views = [strided_view(xp, i, j, stride, ho, wo) for i in rows for j in cols]
  kernel = kernel.astype(jnp.float32)
  if taps < k * k:
    kernel = jnp.stack([kernel[i, j] for i in rows for j in cols])
  kernel = kernel.reshape(taps, cin // groups, cout)
  if groups > 1 and groups == cin == cout:
    out = views[0] * kernel[0, 0]
    for t in range(1, taps):
      out = out + views[t] * kernel[t, 0]
    return out
  patches = jnp.concatenate(views, axis=-1) if taps > 1 else views[0]
  if groups == 1:
    return lax.dot_general(patches, kernel.reshape(taps * cin, cout), (((3,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)
  cg, og = cin // groups, cout // groups
  patches = patches.reshape((n, ho, wo, taps, groups, cg))
  kernel = kernel.reshape(taps, cg, groups, og)
  out = lax.dot_general(patches, kernel, (((3, 5), (0, 1)), ((4,), (2,))),
                        preferred_element_type=jnp.float32)
  return jnp.moveaxis(out, 0, 3).reshape((n, ho, wo, cout))


def conv2d(x, kernel, stride: int = 1, groups: int = 1, impl: str = 'auto', dtype: Any = None,
           padding: str = 'symmetric'):
  """NHWC `x` convolved with the HWIO `kernel` (k, k, Cin // groups, Cout), zero `padding` (see
  PADDINGS), no bias; `x` and `kernel` are cast to `dtype` (default x's), which the result has,
  as `nn.Conv(dtype=dtype)`. `impl`: 'native' (lax.conv_general_dilated), 'matmul' (the lowering,
  accumulating in float32) or 'auto' (`use_matmul` chooses)."""
  if impl not in IMPLS:
    raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
  k = kernel.shape[0]
  if kernel.shape[1] != k or x.shape[-1] != kernel.shape[2] * groups or kernel.shape[3] % groups:
    raise ValueError(f'kernel {kernel.shape} does not fit input {x.shape} with groups={groups}')
  dtype = x.dtype if dtype is None else dtype
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if impl == 'auto':
    impl = 'matmul' if use_matmul(jax.default_backend(), x.shape, kernel.shape, stride,
                                  groups, padding) else 'native'
  if impl == 'matmul':
    return _matmul_conv(x, kernel, stride, groups, padding).astype(dtype)
  spatial = (pads(x.shape[1], k, stride, padding), pads(x.shape[2], k, stride, padding))
  return lax.conv_general_dilated(x, kernel, (stride, stride), spatial,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=groups)


class Conv(nn.Module):
  """`nn.Conv(features, (k, k), (s, s), padding=((p, p), (p, p)), feature_group_count=g,
  use_bias=False, dtype=dtype)` with p = (k - 1) // 2 (or TF's 'SAME'): the same float32 'kernel'
  parameter (HWIO) and the same result, computed by `conv2d`. `kernel_quantizer`, when given, is a
  module applied to the kernel before the convolution (a learned weight quantizer)."""
  features: int
  kernel_size: int
  strides: int = 1
  feature_group_count: int = 1
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
  impl: str = 'auto'
  padding: str = 'symmetric'
  kernel_quantizer: Optional[Callable[..., nn.Module]] = None

  @nn.compact
  def __call__(self, x):
    k, groups = self.kernel_size, self.feature_group_count
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1] // groups, self.features),
                        jnp.float32)
    if self.kernel_quantizer is not None:
      kernel = self.kernel_quantizer(name='weight_quantizer')(kernel)
    return conv2d(x, kernel, self.strides, groups, self.impl, self.dtype, self.padding)
