"""MobileNetV2 as torchvision's and the full-precision reference's: channels rounded to multiples
of 8, ReLU6, a 1280-channel head, a normal(0.01) classifier."""
import functools
import re
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rsnets_jax.models.architecture import (Architecture, ModuleDef, RSNetModule, classifier,
                                            register)
from rsnets_jax.models.conv import Conv


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
    return classifier(self.num_classes, x.shape[-1], 'classifier', torch_default=False)(x)


# The reference's nn.Sequential indices (ReLU6 layers take the missing ones).
_TORCH_TOP = {'stem_conv': 'features.0.0', 'stem_bn': 'features.0.1', 'head_conv': 'conv.0',
              'head_bn': 'conv.1', 'classifier': 'classifier'}
_TORCH_BLOCK = {
    False: {'depthwise_conv': 0, 'depthwise_bn': 1, 'project_conv': 3, 'project_bn': 4},
    True: {'expand_conv': 0, 'expand_bn': 1, 'depthwise_conv': 3, 'depthwise_bn': 4,
           'project_conv': 6, 'project_bn': 7},
}


def torch_name(path: Tuple[str, ...], params) -> str:
  """The reference's module name of the layer at `path`: block3/expand_conv -> features.3.conv.0."""
  if len(path) == 1:
    return _TORCH_TOP[path[0]]
  block, layer = path
  k = re.fullmatch(r'block(\d+)', block)[1]
  expands = 'expand_conv' in params[block]
  return f'features.{k}.conv.{_TORCH_BLOCK[expands][layer]}'


def _build(width: float = 1.0, weight_bits: int = 32, activation_bits: int = 32, **common):
  del weight_bits, activation_bits  # full precision only
  return MobileNetV2(width=float(width), **common)


register(Architecture('mobilenet_v2', _build, torch_name=torch_name))
