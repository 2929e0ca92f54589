"""BatchNorm with private affine parameters per resolution: the one layer an RS-Net switches.
PyTorch BatchNorm2d's arithmetic, as the published checkpoints were trained: eps 1e-5, momentum
0.1 (PyTorch's convention), the unbiased batch variance in the running estimate."""
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention: running = (1 - m) * running + m * batch
# Where train mode sows each BatchNorm's batch mean and unbiased variance (when mutable).
BATCH_MOMENTS = 'batch_moments'


def last(previous, value):
  """A `sow` reduction that keeps the newest value."""
  del previous
  return value


class SwitchableBatchNorm(nn.Module):
  """`resolution` picks the affine pair; `batch_stats` (mean, var) is that resolution's running
  statistics (the caller keeps one tree per resolution). `shared=True`: one pair for all (the
  "shared BN" ablation). `group_size`: training statistics over groups of that many examples (32
  reproduces the reference's per-GPU BatchNorm on 8 GPUs), sown moments averaged over them."""
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
        self.sow(BATCH_MOMENTS, 'mean', batch_mean, reduce_fn=last, init_fn=lambda: None)
        self.sow(BATCH_MOMENTS, 'var', batch_var, reduce_fn=last, init_fn=lambda: None)
    y = y * scales[key] + biases[key]
    return y.astype(self.dtype)
