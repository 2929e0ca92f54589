"""On-device views: from one uint8 crop per image to every training resolution.

The host sends only the crop at the largest resolution; resizing, flipping and scaling happen inside
the jitted step, so the input pipeline's cost does not grow with the number of resolutions.
"""
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from rsnets_jax.errors import ConfigError

FLIPS = ('per_resolution', 'shared', 'none')


def to_float(images, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
  """uint8 (or [0, 255] float) RGB to [0, 1]; then (x - mean) / std when both are given.

  The reference's PyTorch models take [0, 1] RGB with no normalisation, so that is the default.
  """
  x = images.astype(jnp.float32) / 255.0
  if (mean is None) != (std is None):
    raise ConfigError('give both data.input_mean and data.input_std, or neither')
  if mean is not None:
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x


def resize(images, res: int):
  """Bilinear, antialiased resize of float NHWC images to res x res (as PIL and torchvision do)."""
  n, h, w, c = images.shape
  if (h, w) == (res, res):
    return images
  return jax.image.resize(images, (n, res, res, c), method='linear', antialias=True)


def random_flip(images, key):
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def train_views(crops, resolutions: Sequence[int], key, flip: str = 'per_resolution',
                mean=None, std=None) -> Dict[int, jax.Array]:
  """Every resolution's training input from uint8 crops (N, R, R, 3) at the largest resolution.

  `flip='per_resolution'` draws an independent horizontal flip for each resolution, as the
  reference; `'shared'` flips an image the same way at every resolution; `'none'` never flips.
  """
  if flip not in FLIPS:
    raise ConfigError(f'data.flip must be one of {FLIPS}, got {flip!r}')
  x = crops.astype(jnp.float32)
  keys = jax.random.split(key, len(resolutions))
  views = {}
  for i, res in enumerate(resolutions):
    v = resize(x, res)
    if flip != 'none':
      v = random_flip(v, keys[0] if flip == 'shared' else keys[i])
    views[res] = to_float(v, mean, std)
  return views
