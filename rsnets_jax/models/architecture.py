"""What every RS-Net architecture shares, and the registry of architectures by name.

An architecture family (resnet.py, mobilenet.py, lq_resnet.py) defines its Flax module on
`RSNetModule` and registers each of its networks as an `Architecture`, which says what the network
supports: how `width` scales its channels, whether its weights and activations can be quantized,
and the PyTorch layout that the converter maps (`torch_name`). Nothing elsewhere reads a
capability from a name.
"""
import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rsnets_jax.errors import ConfigError
from rsnets_jax.models.batchnorm import SwitchableBatchNorm

ModuleDef = Any
Path = Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A registered network. `build(width=..., weight_bits=..., activation_bits=..., **common)`
  returns its Flax module (`common`: resolutions, num_classes, shared_bn, bn_group_size, dtype,
  extra_resolutions); `width` is the channel multiplier (1.0: the paper's network).
  `torch_name(path, params)` names the PyTorch module of the layer at `path` of a params tree in
  the reference code's state dict (None: no published PyTorch layout to convert from)."""
  name: str
  build: Callable[..., nn.Module]
  quantizes_weights: bool = False
  quantizes_activations: bool = False
  torch_name: Optional[Callable[[Path, Any], str]] = None


ARCHITECTURES: Dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
  ARCHITECTURES[architecture.name] = architecture
  return architecture


def get(name: str) -> Architecture:
  if name not in ARCHITECTURES:
    raise ConfigError(f'unknown arch {name!r}; choose one of {sorted(ARCHITECTURES)}')
  return ARCHITECTURES[name]


def torch_linear_bias_init(fan_in: int) -> Callable:
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


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


def classifier(features, fan_in, name, torch_default: bool):
  if torch_default:  # PyTorch's nn.Linear default (ResNet classifier)
    return nn.Dense(features, name=name,
                    kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                    bias_init=torch_linear_bias_init(fan_in))
  return nn.Dense(features, name=name, kernel_init=nn.initializers.normal(0.01),
                  bias_init=nn.initializers.zeros)
