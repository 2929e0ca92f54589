"""ResNets as torchvision's (v1.5: the stride on the bottleneck's 3x3), the full-precision
reference's layout: explicit symmetric padding, He (fan-out) initialisation, PyTorch's Linear
initialisation for the classifier."""
import functools
import re
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rsnets_jax.models import pooling
from rsnets_jax.models.architecture import (Architecture, ModuleDef, RSNetModule, classifier,
                                            register)
from rsnets_jax.models.conv import Conv


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
    return classifier(self.num_classes, x.shape[-1], 'fc', torch_default=True)(x)


def torch_name(path: Tuple[str, ...], params) -> str:
  """The reference's module name of the layer at `path`: layer1_0/conv1 -> layer1.0.conv1."""
  del params  # a ResNet's names alone decide
  names = []
  for name in path:
    block = re.fullmatch(r'layer(\d+)_(\d+)', name)
    if block:
      names.append(f'layer{block[1]}.{block[2]}')
    else:
      names.append({'downsample_conv': 'downsample.0',
                    'downsample_bn': 'downsample.1'}.get(name, name))
  return '.'.join(names)


def _family(stage_sizes: Sequence[int], block_cls: ModuleDef):
  def build(width: float = 1.0, weight_bits: int = 32, activation_bits: int = 32, **common):
    del weight_bits, activation_bits  # full precision only
    return ResNet(stage_sizes=tuple(stage_sizes), block_cls=block_cls,
                  width=int(round(64 * width)), **common)
  return build


for _name, _stages, _block in (('resnet18', (2, 2, 2, 2), BasicBlock),
                               ('resnet34', (3, 4, 6, 3), BasicBlock),
                               ('resnet50', (3, 4, 6, 3), Bottleneck)):
  register(Architecture(_name, _family(_stages, _block), torch_name=torch_name))
