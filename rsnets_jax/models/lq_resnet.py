"""Quantized RS-Nets: the ResNets of the LQ-Nets reference (TensorFlow/tensorpack), with learned
weight and activation quantizers (quantizers.py). docs/quantization.md gives the reference's
layout and where each choice comes from."""
import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from rsnets_jax.models import pooling, quantizers
from rsnets_jax.models.architecture import Architecture, ModuleDef, RSNetModule, register
from rsnets_jax.models.conv import Conv
from rsnets_jax.models.quantizers import Quantizer


def _identity(name=None):
  del name
  return lambda x: x


def activation_quantizer(bits: int) -> ModuleDef:
  """The activation quantizer as a ModuleDef, or the identity at 32 bits."""
  if not quantizers.quantized(bits):
    return _identity
  return functools.partial(Quantizer, bits, 'activation')


class LQResNet(RSNetModule):
  """The quantized reference's ResNets (quantization/models/resnet.py): TF 'SAME' padding, every
  convolution but the 7x7 stem quantized (1x1 shortcuts included), a full-precision classifier,
  shortcut convolutions only where the channel count changes. `preact=False`: the W2/A32
  post-activation ResNet (`--mode resnet`), each block's last BatchNorm scale initialised to 0;
  `preact=True`: the pre-activation ResNet (`--mode preact`)."""
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
    # The shortcut is the input before pre-activation, so ResNet-50's first bottleneck shortcut
    # sees the unquantized max-pool output (the reference preactivates both as 'basic', RN:75).
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


def _family(stage_sizes: Sequence[int], bottleneck: bool, preact: bool):
  def build(width: float = 1.0, weight_bits: int = 2,
            activation_bits: int = quantizers.FULL_PRECISION, **common):
    return LQResNet(stage_sizes=tuple(stage_sizes), bottleneck=bottleneck, preact=preact,
                    width=int(round(64 * width)), weight_bits=weight_bits,
                    activation_bits=activation_bits, **common)
  return build


for _name, _stages, _bottleneck, _preact in (
    ('lq_resnet18', (2, 2, 2, 2), False, False), ('lq_resnet50', (3, 4, 6, 3), True, False),
    ('lq_preact_resnet18', (2, 2, 2, 2), False, True),
    ('lq_preact_resnet50', (3, 4, 6, 3), True, True)):
  # Only the pre-activation blocks have quantizers on their activations.
  register(Architecture(_name, _family(_stages, _bottleneck, _preact), quantizes_weights=True,
                        quantizes_activations=_preact))
