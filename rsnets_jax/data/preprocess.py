"""On-device views: from one uint8 crop per image (at the largest resolution) to every training
resolution, inside the jitted step, so the host's cost does not grow with the resolutions."""
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.errors import ConfigError, require

FLIPS = ('per_resolution', 'shared', 'none')
# How the smaller views are made from the crop: antialiased bilinear (the full-precision
# reference's PIL resize), or TF1's nearest neighbour (the quantized reference's in-graph resize).
VIEW_RESIZES = ('antialiased_bilinear', 'nearest_tf1')
# fb.resnet.torch's PCA lighting (RGB), used by the quantized reference through tensorpack.
LIGHTING_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32) * 255.0
LIGHTING_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)
_LIGHTING_STREAM = 1 << 16  # fold_in constant: the lighting draws, apart from the flips'


def check_config(data):
  """The config rules of the on-device preprocessing (`config.data`)."""
  require(data.flip in FLIPS, 'data.flip', data.flip, f'one of {FLIPS}')
  require(data.view_resize in VIEW_RESIZES, 'data.view_resize', data.view_resize,
          f'one of {VIEW_RESIZES}')
  require(data.lighting >= 0, 'data.lighting', data.lighting, '0 (off) or more')
  check_normalisation(data.input_mean, data.input_std)


def check_normalisation(mean, std):
  if (mean is None) != (std is None):
    raise ConfigError('give both data.input_mean and data.input_std, or neither')
  if std is not None and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
    raise ConfigError(f'data.input_mean and data.input_std must be 3 values (RGB), the std '
                      f'positive; got {tuple(mean)} and {tuple(std)}')


def input_normalisation(data):
  """`(mean, std)` of the data config, or `(None, None)` for the reference's plain [0, 1] input."""
  as_tuple = lambda v: tuple(v) if v is not None else None  # pylint: disable=unnecessary-lambda-assignment
  return as_tuple(data.input_mean), as_tuple(data.input_std)


def to_float(images, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
  """uint8 (or [0, 255] float) RGB to [0, 1], then (x - mean) / std when both are given (the
  reference's PyTorch models take plain [0, 1]: the default)."""
  x = images.astype(jnp.float32) / 255.0
  check_normalisation(mean, std)
  if mean is not None:
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x


def resize(images, res: int, method: str = 'antialiased_bilinear'):
  """NHWC images to res x res by `method` (VIEW_RESIZES)."""
  n, h, w, c = images.shape
  if (h, w) == (res, res):
    return images
  if method == 'nearest_tf1':
    rows, cols = nearest_tf1_indices(h, res), nearest_tf1_indices(w, res)
    return jnp.take(jnp.take(images, rows, axis=1), cols, axis=2)
  return jax.image.resize(images, (n, res, res, c), method='linear', antialias=True)


def nearest_tf1_indices(in_size: int, out_size: int) -> np.ndarray:
  """The source index of each output pixel of TF1's nearest-neighbour resize (align_corners and
  half_pixel_centers False): min(floor(float32(i) * float32(in / out)), in - 1). It differs from
  `jax.image.resize(method='nearest')`, which samples pixel centres, floor((i + 0.5) * in / out)."""
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(source, in_size - 1)


def pca_lighting(images, key, std: float):
  """AlexNet PCA lighting of [0, 255] float RGB: eigvec @ (alpha * eigval), alpha ~ N(0, std^2),
  per image, added to every pixel, clipped (tensorpack's Lighting, minus its uint8 truncation)."""
  alpha = std * jax.random.normal(key, (images.shape[0], 3))
  shift = (alpha * LIGHTING_EIGVAL) @ LIGHTING_EIGVEC.T
  return jnp.clip(images + shift[:, None, None, :], 0.0, 255.0)


def random_flip(images, key):
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def train_views(crops, resolutions: Sequence[int], key, flip: str = 'per_resolution',
                mean=None, std=None, view_resize: str = 'antialiased_bilinear',
                lighting: float = 0.0) -> Dict[int, jax.Array]:
  """Every resolution's training input from uint8 crops (N, R, R, 3) at the largest resolution.
  `flip`: 'per_resolution' (a flip drawn per view, the full-precision reference), 'shared' (one
  flip of the crop, the quantized reference) or 'none'. `lighting` > 0: PCA lighting of that std
  on the crop first. `view_resize`: see VIEW_RESIZES."""
  x = crops.astype(jnp.float32)
  keys = jax.random.split(key, len(resolutions))
  if lighting:
    x = pca_lighting(x, jax.random.fold_in(key, _LIGHTING_STREAM), lighting)
  if flip == 'shared':
    x = random_flip(x, keys[0])
  views = {}
  for i, res in enumerate(resolutions):
    v = resize(x, res, view_resize)
    if flip == 'per_resolution':
      v = random_flip(v, keys[i])
    views[res] = to_float(v, mean, std)
  return views
