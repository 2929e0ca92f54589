"""BatchNorm recalibration: running a trained RS-Net at a resolution it never saw in training.

Only BatchNorm depends on the resolution, so a new resolution needs only BatchNorm parameters and
statistics. `add_resolution` takes the affine parameters (scale, bias) of the nearest training
resolution and re-estimates the running statistics at the new resolution from training images;
the paper's points at untrained resolutions (208, 176, 144) were obtained this way.

The statistics follow PyTorch's recalibration with `momentum=None` (reset_running_stats, then
forward passes in train mode): each BatchNorm's running mean and variance become the plain average
over the batches of its batch mean and of its unbiased batch variance. In train mode the batch
statistics also normalise the activations, so every layer sees the inputs it saw in training.
"""
import dataclasses
import logging
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from rsnets_jax import preprocess
from rsnets_jax.network import RESOLUTION_KEY, RSNet

DEFAULT_NUM_IMAGES = 2048

log = logging.getLogger(__name__)


def nearest_resolution(resolutions: Sequence[int], res: int) -> int:
  """The training resolution whose BatchNorm affine parameters a new resolution `res` starts from:
  the nearest by |r - res|; a tie goes to the larger one (the more accurate of the two)."""
  return min(resolutions, key=lambda r: (abs(r - res), -r))


def copy_affine(params, src: int, res: int):
  """`params` plus, in every BatchNorm, `scale_{res}` and `bias_{res}`: copies of resolution
  `src`'s."""
  if not isinstance(params, dict):
    return params
  out = {k: copy_affine(v, src, res) for k, v in params.items()}
  if f'scale_{src}' in params:
    for name in ('scale', 'bias'):
      # A copy: two leaves sharing a buffer could not both be donated to a jitted step.
      out[f'{name}_{res}'] = jnp.array(params[f'{name}_{src}'], copy=True)
  return out


def _images(batch):
  return batch['image'] if isinstance(batch, dict) else batch


def recalibrated_stats(net: RSNet, params, res: int, batches: Iterable[Any],
                       num_images: int = DEFAULT_NUM_IMAGES, mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None) -> Dict[str, Any]:
  """`stats[res]` of `net` (tagged, as `net.init` makes it) estimated from `batches`.

  `batches` yields uint8 images (B, H, W, 3), or dicts holding them under 'image' (what
  `data.train_iterator` yields); each batch is resized to res x res on device (bilinear,
  antialiased, as the training step makes its views) and scaled as the training input
  (`mean`/`std` as in the config). Whole batches are used until `num_images` images have been
  seen; BatchNorm statistics are computed per batch (or per `bn_group_size` group), as in training.
  """
  if num_images < 1:
    raise ValueError(f'num_images must be positive, got {num_images}')
  _, shapes = net.init_shapes()
  totals = {k: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), v)
            for k, v in shapes[res].items() if k != RESOLUTION_KEY}

  @jax.jit
  def add_batch(totals, params, images):
    x = preprocess.to_float(preprocess.resize(images.astype(jnp.float32), res), mean, std)
    return jax.tree.map(jnp.add, totals, net.batch_moments(params, x))

  num_batches, seen = 0, 0
  for batch in batches:
    if seen >= num_images:
      break
    images = _images(batch)
    totals = add_batch(totals, params, images)
    num_batches += 1
    seen += int(images.shape[0])
  if not num_batches:
    raise ValueError(f'no images to recalibrate BatchNorm at resolution {res}')
  if seen < num_images:
    log.warning('recalibrating resolution %d on %d images, fewer than the %d asked for', res, seen,
                num_images)
  stats = jax.tree.map(lambda t: t / num_batches, totals)
  return {RESOLUTION_KEY: jnp.int32(res), **stats}


def _extend(net: RSNet, params, res: int, source: int) -> Tuple[RSNet, Any]:
  """`net` with `res` in `extra_resolutions` and `params` with, in every BatchNorm, `res`'s
  affine parameters copied from training resolution `source`."""
  res = int(res)
  if res <= 0:
    raise ValueError(f'a resolution must be positive, got {res}')
  if res in net.all_resolutions:
    kind = 'a training' if res in net.resolutions else 'an added'
    raise ValueError(f'{res} is already {kind} resolution of this network')
  if source not in net.resolutions:
    raise ValueError(f'{source} is not a training resolution of this network {net.resolutions}')
  net2 = dataclasses.replace(net, extra_resolutions=net.extra_resolutions + (res,))
  # With a shared BatchNorm one affine pair serves every resolution already.
  params2 = params if net.shared_bn else copy_affine(params, source, res)
  want = net2.init_shapes()[0]
  if jax.tree.structure(params2) != jax.tree.structure(want):
    raise ValueError(f'params do not fit a {net.arch} with resolutions {net.all_resolutions}')
  return net2, params2


def add_resolution(net: RSNet, params, stats: Dict[int, Any], res: int, batches: Iterable[Any],
                   num_images: int = DEFAULT_NUM_IMAGES, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> Tuple[RSNet, Any, Dict[int, Any]]:
  """`(net2, params2, stats2)`: the network extended to run at the untrained resolution `res`.

  `net2` has `res` in `extra_resolutions`; `params2` adds to every BatchNorm `scale_{res}` and
  `bias_{res}`, copies of the nearest training resolution's (`nearest_resolution`: by |r - res|,
  ties to the larger); `stats2[res]` is estimated from `batches` at `res`
  (`recalibrated_stats`). Everything else is passed through unchanged, so the training
  resolutions, `alpha` and the ensemble behave exactly as before. Reads `batches`, changes no input.
  """
  res = int(res)
  net2, params2 = _extend(net, params, res, nearest_resolution(net.resolutions, res))
  new_stats = recalibrated_stats(net2, params2, res, batches, num_images, mean, std)
  return net2, params2, {**stats, res: new_stats}


def reuse_batchnorm(net: RSNet, params, stats: Dict[int, Any], res: int,
                    source: Optional[int] = None) -> Tuple[RSNet, Any, Dict[int, Any]]:
  """`(net2, params2, stats2)`: the network run at `res` with training resolution `source`'s
  BatchNorm as it is, affine parameters and running statistics (default: the nearest training
  resolution). This is what a network trained at one size does when simply fed another (the
  paper's "I-224" column); `add_resolution` re-estimates the statistics instead."""
  res = int(res)
  source = nearest_resolution(net.resolutions, res) if source is None else int(source)
  net2, params2 = _extend(net, params, res, source)
  copied = jax.tree.map(lambda x: jnp.array(x, copy=True), net.check_stats(stats[source], source))
  return net2, params2, {**stats, res: {RESOLUTION_KEY: jnp.int32(res), **copied}}
