"""RS-Net architectures: shared convolutions, one private BatchNorm per training resolution.

Every network is a plain Flax module called on one resolution at a time. The resolution (and the
train flag) is bound once into the network's `norm`, as Flax's ImageNet example binds
`use_running_average`; blocks are `__call__(self, x)`. The resolution selects the BatchNorm affine
parameters (`scale_{res}`, `bias_{res}` inside each BatchNorm's params) and the caller passes that
resolution's running statistics as the `batch_stats` collection. Nothing else depends on the
resolution, so the convolution and classifier weights are shared by construction. BatchNorm exists for the training `resolutions` and for any `extra_resolutions` added
after training (rsnets_jax/recalibrate.py); only the training ones have an ensemble weight in `alpha`.

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

from rsnets_jax import pooling, quantizers
from rsnets_jax.conv import Conv

ModuleDef = Any

# PyTorch BatchNorm2d defaults, which the published checkpoints were trained with.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch
# In train mode every BatchNorm also sows, into this collection when the caller makes it mutable,
# the batch mean and unbiased variance that its running statistics move towards.
BATCH_MOMENTS = 'batch_moments'
# The learned quantizers' state (basis, biased, step), shared by every resolution, and the
# least-squares basis each quantizer computes in a forward pass (sown when the caller makes it
# mutable), which the train step folds into the state after the optimiser update.
QUANTIZERS = 'quantizers'
QUANTIZER_TARGETS = 'quantizer_targets'


def torch_linear_bias_init(fan_in: int) -> Callable:
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _last(previous, value):
  del previous
  return value


class SwitchableBatchNorm(nn.Module):
  """BatchNorm with private affine parameters per resolution; `resolution` picks the pair in use.

  The running statistics of the current resolution live in `batch_stats` (mean, var); the caller
  keeps one such tree per resolution. With `shared=True` there is one affine pair for every
  resolution (the "shared BN" ablation). `group_size` computes training statistics over fixed
  groups of that many examples (G=32 reproduces the reference's per-GPU BatchNorm on 8 GPUs).
  In train mode the batch mean and unbiased variance (averaged over the groups) that update the
  running statistics are also sown into the `BATCH_MOMENTS` collection when it is mutable.
  """
  resolutions: Sequence[int]
  resolution: int
  use_running_average: bool
  shared: bool = False
  group_size: Optional[int] = None
  dtype: Any = jnp.float32
  scale_init: Callable = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    keys = ('shared',) if self.shared else tuple(str(r) for r in self.resolutions)
    # All resolutions' affine parameters exist from init on, whichever resolution is called.
    scales = {k: self.param(f'scale_{k}', self.scale_init, (features,)) for k in keys}
    biases = {k: self.param(f'bias_{k}', nn.initializers.zeros, (features,)) for k in keys}
    key = 'shared' if self.shared else str(self.resolution)
    if key not in scales:
      raise ValueError(f'no BatchNorm for resolution {self.resolution}; this network has '
                       f'{tuple(self.resolutions)}')
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    x32 = x.astype(jnp.float32)
    if self.use_running_average:
      y = (x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + BN_EPS)
    else:
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
    y = y * scales[key] + biases[key]
    return y.astype(self.dtype)


class RSNetModule(nn.Module):
  """What every RS-Net architecture shares: its resolutions, BatchNorm options and `alpha`.

  `__call__(x, train, resolution)` runs at `resolution` (default: the input size) and binds it,
  with the train flag, into the `norm` that every layer uses."""
  resolutions: Sequence[int]
  num_classes: int = 1000
  shared_bn: bool = False
  bn_group_size: Optional[int] = None
  dtype: Any = jnp.float32
  extra_resolutions: Sequence[int] = ()

  def declare_alpha(self):
    """The learnable ensemble weights (one per training resolution, init ones), in params."""
    self.param('alpha', nn.initializers.ones, (len(self.resolutions),))

  def bind_norm(self, resolution: int, train: bool) -> ModuleDef:
    return functools.partial(SwitchableBatchNorm,
                             tuple(self.resolutions) + tuple(self.extra_resolutions), resolution,
                             use_running_average=not train, shared=self.shared_bn,
                             group_size=self.bn_group_size, dtype=self.dtype)


class BasicBlock(nn.Module):
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, 3, self.strides, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, 3, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.conv(self.features, 1, self.strides, name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: the stride sits on the 3x3 convolution."""
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out = self.features * self.expansion
    y = self.conv(self.features, 1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, 3, self.strides, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out, 1, name='conv3')(y)
    y = self.norm(name='bn3')(y)
    if self.strides != 1 or x.shape[-1] != out:
      x = self.conv(out, 1, self.strides, name='downsample_conv')(x)
      x = self.norm(name='downsample_bn')(x)
    return nn.relu(y + x)


def _dense(features, fan_in, name, torch_default: bool):
  if torch_default:  # PyTorch's nn.Linear default (ResNet classifier)
    return nn.Dense(features, name=name,
                    kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                    bias_init=torch_linear_bias_init(fan_in))
  return nn.Dense(features, name=name, kernel_init=nn.initializers.normal(0.01),
                  bias_init=nn.initializers.zeros)


class ResNet(RSNetModule):
  stage_sizes: Sequence[int] = ()
  block_cls: ModuleDef = BasicBlock
  width: int = 64

  @nn.compact
  def __call__(self, x, train: bool = False, resolution: Optional[int] = None):
    self.declare_alpha()
    norm = self.bind_norm(resolution or x.shape[1], train)
    conv = functools.partial(Conv, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = conv(self.width, 7, 2, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = pooling.max_pool(x, 3, 2)
    for i, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        strides = 2 if i > 0 and b == 0 else 1
        x = self.block_cls(self.width * 2**i, strides, conv, norm, name=f'layer{i + 1}_{b}')(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return _dense(self.num_classes, x.shape[-1], 'fc', torch_default=True)(x)


def _make_divisible(v, divisor=8):
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
  features: int
  strides: int
  expand_ratio: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    hidden = int(round(x.shape[-1] * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = self.conv(hidden, 1, name='expand_conv')(y)
      y = nn.relu6(self.norm(name='expand_bn')(y))
    y = self.conv(hidden, 3, self.strides, feature_group_count=hidden, name='depthwise_conv')(y)
    y = nn.relu6(self.norm(name='depthwise_bn')(y))
    y = self.conv(self.features, 1, name='project_conv')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides == 1 and x.shape[-1] == self.features:
      y = y + x
    return y


class MobileNetV2(RSNetModule):
  width: float = 1.0
  # (expansion, channels, repeats, first stride), as torchvision and the reference.
  settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))

  @nn.compact
  def __call__(self, x, train: bool = False, resolution: Optional[int] = None):
    self.declare_alpha()
    norm = self.bind_norm(resolution or x.shape[1], train)
    conv = functools.partial(Conv, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = conv(_make_divisible(32 * self.width), 3, 2, name='stem_conv')(x)
    x = nn.relu6(norm(name='stem_bn')(x))
    k = 1
    for t, c, n, s in self.settings:
      for i in range(n):
        x = InvertedResidual(_make_divisible(c * self.width), s if i == 0 else 1, t, conv, norm,
                             name=f'block{k}')(x)
        k += 1
    last = _make_divisible(1280 * max(1.0, self.width))
    x = conv(last, 1, name='head_conv')(x)
    x = nn.relu6(norm(name='head_bn')(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return _dense(self.num_classes, x.shape[-1], 'classifier', torch_default=False)(x)


# -- quantized RS-Nets: the LQ-Nets reference's TensorFlow ResNets -------------------------------

class Quantizer(nn.Module):
  """A learned LQ-Nets quantizer of `bits` bits (rsnets_jax/quantizers.py) for a kernel
  (`kind='weight'`, one basis per output channel) or activations (`kind='activation'`, one basis).
  Its state lives in the QUANTIZERS collection, which no resolution owns; the refit target is sown
  into QUANTIZER_TARGETS under the name of its kind."""
  bits: int
  kind: str

  @nn.compact
  def __call__(self, x):
    if self.kind == 'weight':
      init, quantize = quantizers.init_weight_basis(self.bits, x.shape), quantizers.quantize_weight
    else:
      init, quantize = quantizers.init_activation_basis(self.bits), quantizers.quantize_activation
    state = {name: self.variable(QUANTIZERS, name, lambda v=v: v).value
             for name, v in quantizers.init_state(init).items()}
    y, target = quantize(x, state['basis'])
    if not self.is_initializing():
      self.sow(QUANTIZER_TARGETS, self.kind, target, reduce_fn=_last, init_fn=lambda: None)
    return y.astype(x.dtype)


def _identity(name=None):
  del name
  return lambda x: x


def activation_quantizer(bits: int) -> ModuleDef:
  """The activation quantizer as a ModuleDef, or the identity at 32 bits."""
  if not quantizers.quantized(bits):
    return _identity
  return functools.partial(Quantizer, bits, 'activation')


class LQResNet(RSNetModule):
  """The ResNets of the quantized reference (quantization/models/resnet.py): TF 'SAME' padding,
  every convolution but the 7x7 stem quantized to `weight_bits` (1x1 shortcuts included), a full
  precision classifier; shortcut convolutions only where the channel count changes.

  `preact=False`: the post-activation ResNet of the reference's W2/A32 models (`--mode resnet`),
  the last BatchNorm of each block with scale initialised to 0. `preact=True`: its pre-activation
  ResNet (`--mode preact`) with `activation_bits` quantizers where the reference has them.
  """
  stage_sizes: Sequence[int] = ()
  bottleneck: bool = False
  preact: bool = False
  width: int = 64
  weight_bits: int = 2
  activation_bits: int = quantizers.FULL_PRECISION

  @nn.compact
  def __call__(self, x, train: bool = False, resolution: Optional[int] = None):
    self.declare_alpha()
    norm = self.bind_norm(resolution or x.shape[1], train)
    # TF1 contrib's variance_scaling_initializer(mode='FAN_OUT'): a truncated normal, He scale.
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
    conv = functools.partial(Conv, dtype=self.dtype, padding='same', kernel_init=init)
    quantized_conv = conv
    if quantizers.quantized(self.weight_bits):
      quantized_conv = functools.partial(
          conv, kernel_quantizer=functools.partial(Quantizer, self.weight_bits, 'weight'))
    quantize = activation_quantizer(self.activation_bits)
    block_cls = LQPreActBlock if self.preact else LQBlock
    x = x.astype(self.dtype)
    x = conv(self.width, 7, 2, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = pooling.max_pool(x, 3, 2, padding='same')
    for i, blocks in enumerate(self.stage_sizes):
      for b in range(blocks):
        strides = 2 if i > 0 and b == 0 else 1
        if not self.preact:
          preact = None
        elif b == 0:
          # A stride-2 stage's first block takes the previous stage's already quantized output.
          preact = 'quantize' if strides == 1 else 'none'
        else:
          preact = 'bn_relu_quantize'
        x = block_cls(self.width * 2**i, strides, quantized_conv, norm, self.bottleneck,
                      quantize=quantize, preact=preact, name=f'layer{i + 1}_{b}')(x)
      if self.preact:
        # The end of each stage: BN-ReLU, quantized except before the pooling and classifier.
        x = nn.relu(norm(name=f'layer{i + 1}_bn_last')(x))
        if i + 1 < len(self.stage_sizes):
          x = quantize(name=f'layer{i + 1}_quant_last')(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # tensorpack's FullyConnected default: He (fan-in) truncated normal, zero bias.
    return nn.Dense(self.num_classes, name='fc',
                    kernel_init=nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal'))(x)


class _LQBlockBase(nn.Module):
  """What both blocks of the quantized reference take; `quantize` is the activation quantizer."""
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  bottleneck: bool = False
  quantize: ModuleDef = _identity
  preact: Optional[str] = None


class LQBlock(_LQBlockBase):
  """Post-activation basic block or bottleneck (stride on the 3x3) of the W2/A32 models."""

  @nn.compact
  def __call__(self, x):
    zeros = nn.initializers.zeros
    if self.bottleneck:
      out = 4 * self.features
      y = nn.relu(self.norm(name='bn1')(self.conv(self.features, 1, name='conv1')(x)))
      y = nn.relu(self.norm(name='bn2')(self.conv(self.features, 3, self.strides, name='conv2')(y)))
      y = self.norm(name='bn3', scale_init=zeros)(self.conv(out, 1, name='conv3')(y))
    else:
      out = self.features
      y = nn.relu(self.norm(name='bn1')(self.conv(out, 3, self.strides, name='conv1')(x)))
      y = self.norm(name='bn2', scale_init=zeros)(self.conv(out, 3, name='conv2')(y))
    if x.shape[-1] != out:
      x = self.norm(name='downsample_bn')(self.conv(out, 1, self.strides, name='downsample_conv')(x))
    return nn.relu(y + x)


class LQPreActBlock(_LQBlockBase):
  """Pre-activation basic block or bottleneck of the W2/A2 models. `preact`: 'bn_relu_quantize'
  (shortcut = x, input Q(ReLU(BN(x)))), 'quantize' (a stride-1 stage's first block: shortcut = x,
  input Q(x)) or 'none' (a stride-2 stage's first block, whose input is already quantized)."""

  @nn.compact
  def __call__(self, x):
    # The shortcut is always the block's input before the pre-activation. For the bottleneck of
    # ResNet-50's first block that means its shortcut convolution sees the unquantized max-pool
    # output: the reference passes 'basic' to apply_preactivation for both block kinds (RN:75).
    shortcut = x
    if self.preact == 'bn_relu_quantize':
      x = self.quantize(name='quant1')(nn.relu(self.norm(name='bn_preact')(x)))
    elif self.preact == 'quantize':
      x = self.quantize(name='quant1')(x)
    if self.bottleneck:
      out = 4 * self.features
      y = self.quantize(name='quant2')(
          nn.relu(self.norm(name='bn1')(self.conv(self.features, 1, name='conv1')(x))))
      y = self.quantize(name='quant3')(
          nn.relu(self.norm(name='bn2')(self.conv(self.features, 3, self.strides, name='conv2')(y))))
      y = self.norm(name='bn3')(self.conv(out, 1, name='conv3')(y))
    else:
      out = self.features
      y = self.quantize(name='quant2')(
          nn.relu(self.norm(name='bn1')(self.conv(out, 3, self.strides, name='conv1')(x))))
      y = self.norm(name='bn2')(self.conv(out, 3, name='conv2')(y))
    if shortcut.shape[-1] != out:
      shortcut = self.norm(name='downsample_bn')(
          self.conv(out, 1, self.strides, name='downsample_conv')(shortcut))
    return y + shortcut


ARCHITECTURES = {
    'resnet18': functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    'resnet34': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    'resnet50': functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck),
    'mobilenet_v2': MobileNetV2,
    'lq_resnet18': functools.partial(LQResNet, stage_sizes=(2, 2, 2, 2)),
    'lq_resnet50': functools.partial(LQResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True),
    'lq_preact_resnet18': functools.partial(LQResNet, stage_sizes=(2, 2, 2, 2), preact=True),
    'lq_preact_resnet50': functools.partial(LQResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True,
                                            preact=True),
}
# The architectures whose convolutions (and, pre-activation, activations) can be quantized.
QUANTIZABLE = ('lq_resnet18', 'lq_resnet50', 'lq_preact_resnet18', 'lq_preact_resnet50')
ACTIVATION_QUANTIZABLE = ('lq_preact_resnet18', 'lq_preact_resnet50')
