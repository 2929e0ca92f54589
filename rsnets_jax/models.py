"""RS-Net architectures: shared convolutions, one private BatchNorm per training resolution.

Every network is a plain Flax module called on one resolution at a time. The resolution selects the
BatchNorm affine parameters (`scale_{res}`, `bias_{res}` inside each BatchNorm's params) and the
caller passes that resolution's running statistics as the `batch_stats` collection. Nothing else
depends on the resolution, so the convolution and classifier weights are shared by construction.
BatchNorm exists for the training `resolutions` and for any `extra_resolutions` added after
training (rsnets_jax/recalibrate.py); only the training ones have an ensemble weight in `alpha`.

Arithmetic follows the reference PyTorch code: explicit symmetric padding (never 'SAME'), BatchNorm
eps 1e-5 and PyTorch momentum 0.1 with the unbiased running variance, torchvision ResNet v1.5 and
MobileNetV2 layouts, and the reference's weight initialisation.
"""
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch BatchNorm2d defaults, which the published checkpoints were trained with.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch
# In train mode every BatchNorm also sows, into this collection when the caller makes it mutable,
# the batch mean and unbiased variance that its running statistics move towards.
BATCH_MOMENTS = 'batch_moments'

# Kaiming normal, fan_out, ReLU gain (torchvision ResNet) == std sqrt(2 / (k*k*out)) (MobileNetV2).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_linear_bias_init(fan_in: int) -> Callable:
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def declare_alpha(module: nn.Module):
  """The learnable ensemble weights (one per resolution, init ones) live in the same params tree."""
  module.param('alpha', nn.initializers.ones, (len(module.resolutions),))


def switchable_norm(module: nn.Module) -> Callable:
  """The BatchNorm of a network: private affine parameters for its training resolutions, then for
  the resolutions added after training."""
  return functools.partial(SwitchableBatchNorm,
                           tuple(module.resolutions) + tuple(module.extra_resolutions),
                           module.shared_bn, module.bn_group_size, module.dtype)


def _last(previous, value):
  del previous
  return value


class SwitchableBatchNorm(nn.Module):
  """BatchNorm with private affine parameters per resolution.

  The running statistics of the current resolution live in `batch_stats` (mean, var); the caller
  keeps one such tree per resolution. With `shared=True` there is one affine pair for every
  resolution (the "shared BN" ablation). `group_size` computes training statistics over fixed
  groups of that many examples (G=32 reproduces the reference's per-GPU BatchNorm on 8 GPUs).
  In train mode the batch mean and unbiased variance (averaged over the groups) that update the
  running statistics are also sown into the `BATCH_MOMENTS` collection when it is mutable.
  """
  resolutions: Sequence[int]
  shared: bool = False
  group_size: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, res: int, train: bool):
    features = x.shape[-1]
    keys = ('shared',) if self.shared else tuple(str(r) for r in self.resolutions)
    # All resolutions' affine parameters exist from init on, whichever resolution is called.
    scales = {k: self.param(f'scale_{k}', nn.initializers.ones, (features,)) for k in keys}
    biases = {k: self.param(f'bias_{k}', nn.initializers.zeros, (features,)) for k in keys}
    key = 'shared' if self.shared else str(res)
    if key not in scales:
      raise ValueError(f'no BatchNorm for resolution {res}; this network has {tuple(self.resolutions)}')
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if train:
      n = x32.shape[0]
      g = self.group_size or n
      if n % g:
        raise ValueError(f'batch {n} is not a multiple of the BatchNorm group size {g}')
      xg = x32.reshape((n // g, g) + x32.shape[1:])
      reduce_axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axis=reduce_axes, keepdims=True)
      var = jnp.mean(jnp.square(xg - mean), axis=reduce_axes, keepdims=True)
      y = ((xg - mean) * jax.lax.rsqrt(var + BN_EPS)).reshape(x32.shape)
      if not self.is_initializing():
        count = g * math.prod(x32.shape[1:-1])
        unbiased = var * (count / max(count - 1, 1))
        # With groups, the running estimate is the average of the groups' estimates.
        batch_mean = jnp.mean(mean, axis=reduce_axes + (0,))
        batch_var = jnp.mean(unbiased, axis=reduce_axes + (0,))
        ra_mean.value = (1 - BN_MOMENTUM) * ra_mean.value + BN_MOMENTUM * batch_mean
        ra_var.value = (1 - BN_MOMENTUM) * ra_var.value + BN_MOMENTUM * batch_var
        # Exact, for recalibration: recovering them from the momentum update would lose digits.
        self.sow(BATCH_MOMENTS, 'mean', batch_mean, reduce_fn=_last, init_fn=lambda: None)
        self.sow(BATCH_MOMENTS, 'var', batch_var, reduce_fn=_last, init_fn=lambda: None)
    else:
      y = (x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + BN_EPS)
    y = y * scales[key] + biases[key]
    return y.astype(self.dtype)


class Conv(nn.Module):
  """Bias-free convolution with PyTorch's symmetric padding."""
  features: int
  kernel: int
  stride: int = 1
  groups: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = (self.kernel - 1) // 2
    return nn.Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                   padding=((pad, pad), (pad, pad)), feature_group_count=self.groups,
                   use_bias=False, kernel_init=conv_init, dtype=self.dtype, name='conv')(x)


class BasicBlock(nn.Module):
  features: int
  stride: int
  norm: Callable
  dtype: Any
  expansion = 1

  @nn.compact
  def __call__(self, x, res, train):
    conv = functools.partial(Conv, dtype=self.dtype)
    y = conv(self.features, 3, self.stride, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, res, train))
    y = conv(self.features, 3, name='conv2')(y)
    y = self.norm(name='bn2')(y, res, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.stride, name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x, res, train)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: the stride sits on the 3x3 convolution."""
  features: int
  stride: int
  norm: Callable
  dtype: Any
  expansion = 4

  @nn.compact
  def __call__(self, x, res, train):
    conv = functools.partial(Conv, dtype=self.dtype)
    out = self.features * self.expansion
    y = conv(self.features, 1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y, res, train))
    y = conv(self.features, 3, self.stride, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y, res, train))
    y = conv(out, 1, name='conv3')(y)
    y = self.norm(name='bn3')(y, res, train)
    if self.stride != 1 or x.shape[-1] != out:
      x = conv(out, 1, self.stride, name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x, res, train)
    return nn.relu(y + x)


def _dense(features, fan_in, name, torch_default: bool):
  if torch_default:  # PyTorch's nn.Linear default (ResNet classifier)
    return nn.Dense(features, name=name,
                    kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                    bias_init=torch_linear_bias_init(fan_in))
  return nn.Dense(features, name=name, kernel_init=nn.initializers.normal(0.01),
                  bias_init=nn.initializers.zeros)


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block_cls: Any
  resolutions: Sequence[int]
  num_classes: int = 1000
  width: int = 64
  shared_bn: bool = False
  bn_group_size: Optional[int] = None
  dtype: Any = jnp.float32
  extra_resolutions: Sequence[int] = ()

  @nn.compact
  def __call__(self, x, res: int, train: bool = False):
    declare_alpha(self)
    norm = switchable_norm(self)
    x = x.astype(self.dtype)
    x = Conv(self.width, 7, 2, dtype=self.dtype, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x, res, train))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        stride = 2 if i > 0 and b == 0 else 1
        x = self.block_cls(self.width * 2**i, stride, norm, self.dtype,
                           name=f'layer{i + 1}_{b}')(x, res, train)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return _dense(self.num_classes, x.shape[-1], 'fc', torch_default=True)(x)


def _make_divisible(v, divisor=8):
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
  features: int
  stride: int
  expand_ratio: int
  norm: Callable
  dtype: Any

  @nn.compact
  def __call__(self, x, res, train):
    conv = functools.partial(Conv, dtype=self.dtype)
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = conv(hidden, 1, name='expand_conv')(y)
      y = nn.relu6(self.norm(name='expand_bn')(y, res, train))
    y = conv(hidden, 3, self.stride, groups=hidden, name='depthwise_conv')(y)
    y = nn.relu6(self.norm(name='depthwise_bn')(y, res, train))
    y = conv(self.features, 1, name='project_conv')(y)
    y = self.norm(name='project_bn')(y, res, train)
    if self.stride == 1 and x.shape[-1] == self.features:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  resolutions: Sequence[int]
  num_classes: int = 1000
  width: float = 1.0
  shared_bn: bool = False
  bn_group_size: Optional[int] = None
  dtype: Any = jnp.float32
  extra_resolutions: Sequence[int] = ()
  # (expansion, channels, repeats, first stride), as torchvision and the reference.
  settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

  @nn.compact
  def __call__(self, x, res: int, train: bool = False):
    declare_alpha(self)
    norm = switchable_norm(self)
    x = x.astype(self.dtype)
    x = Conv(_make_divisible(32 * self.width), 3, 2, dtype=self.dtype, name='stem_conv')(x)
    x = nn.relu6(norm(name='stem_bn')(x, res, train))
    k = 1
    for t, c, n, s in self.settings:
      for i in range(n):
        x = InvertedResidual(_make_divisible(c * self.width), s if i == 0 else 1, t, norm,
                             self.dtype, name=f'block{k}')(x, res, train)
        k += 1
    last = _make_divisible(1280 * max(1.0, self.width))
    x = Conv(last, 1, dtype=self.dtype, name='head_conv')(x)
    x = nn.relu6(norm(name='head_bn')(x, res, train))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return _dense(self.num_classes, x.shape[-1], 'classifier', torch_default=False)(x)


ARCHITECTURES = {
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
    'mobilenet_v2': MobileNetV2,
}
