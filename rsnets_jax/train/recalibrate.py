"""BatchNorm recalibration: running a trained RS-Net at a resolution it never saw in training.

Only BatchNorm depends on the resolution. Statistics are re-estimated as PyTorch's
`momentum=None` recalibration (reset, then train-mode passes): the plain average over batches of
the batch mean and unbiased variance, with batch statistics normalising, so every layer sees the
inputs it saw in training. The paper's untrained points (208, 176, 144) were made this way.
"""
import dataclasses
import logging
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from rsnets_jax.data import preprocess
from rsnets_jax.errors import ConfigError
from rsnets_jax.models import RESOLUTION_KEY, RSNet

DEFAULT_NUM_IMAGES = 2048
# How an added size is made, by measurement (experiments/imagenette/RESULTS.md, "Resolutions
# between the trained ones"): odd inputs of the strided convolutions padded from the edge, and
# statistics from the evaluation views of training images.
DEFAULT_PADDING, DEFAULT_VIEWS = 'edge', 'eval'
# The affine pair of an added size, interpolated between its trained neighbours: as good as or
# better than the nearest's in every measured setting, and what between-size training uses.
AFFINES = ('interpolated', 'nearest')
DEFAULT_AFFINE = 'interpolated'

log = logging.getLogger('rsnets_jax')


def nearest_resolution(resolutions: Sequence[int], res: int) -> int:
  """The training resolution nearest `res` by |r - res|; a tie goes to the larger one (the more
  accurate of the two)."""
  return min(resolutions, key=lambda r: (abs(r - res), -r))


def affine_sources(resolutions: Sequence[int], res: int,
                   affine: str = DEFAULT_AFFINE) -> Dict[int, float]:
  """{training resolution: weight} whose BatchNorm affine parameters, so weighted, make `res`'s.
  'nearest': `nearest_resolution` alone. 'interpolated': the two training neighbours, linearly in
  pixels (outside the trained range, the nearest alone)."""
  if affine not in AFFINES:
    raise ConfigError(f'affine must be one of {AFFINES}, got {affine!r}')
  below = [r for r in resolutions if r < res]
  above = [r for r in resolutions if r > res]
  if affine == 'nearest' or not below or not above:
    return {nearest_resolution(resolutions, res): 1.0}
  small, large = max(below), min(above)
  w = (res - small) / (large - small)
  return {small: 1.0 - w, large: w}


def blended_affine(params, sources: Dict[int, float], res: int):
  """`params` plus, in every BatchNorm, `scale_{res}` and `bias_{res}`: the sum of `sources`'
  (weight-scaled) pairs. Pure and differentiable: the training step draws sizes through it."""
  if not isinstance(params, dict):
    return params
  out = {k: blended_affine(v, sources, res) for k, v in params.items()}
  if f'scale_{next(iter(sources))}' in params:
    for name in ('scale', 'bias'):
      # New arrays, never the source's buffer: both are donated to a jitted step.
      out[f'{name}_{res}'] = sum(w * jnp.asarray(params[f'{name}_{src}'])
                                 for src, w in sources.items())
  return out


def _images(batch, res: int):
  """A batch's images: an array, a training batch {'image': ...} or per-resolution views
  {'images': {res: ...}} (`data.recalibration_batches`)."""
  if isinstance(batch, dict):
    return batch['images'][res] if 'images' in batch else batch['image']
  return batch


def recalibrated_stats(net: RSNet, params, res: int, batches: Iterable[Any],
                       num_images: int = DEFAULT_NUM_IMAGES, mean: Optional[Sequence[float]] = None,
                       std: Optional[Sequence[float]] = None) -> Dict[str, Any]:
  """`stats[res]` of `net` (tagged, as `net.init` makes it) from `batches` of uint8 images
  (B, H, W, 3), dicts of them under 'image' (as `data.train_iterator`), or views per resolution
  (`data.recalibration_batches`), resized (when not `res` already) and scaled as the training
  step does. Whole batches until `num_images` are seen; statistics per batch/group."""
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
    images = _images(batch, res)
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


def check_padding(net: RSNet, padding: str, resolutions: Sequence[int]):
  """A ConfigError unless `resolutions` can be added with `padding`: a network's added sizes
  share one (`RSNet.added_padding`)."""
  if net.extra_resolutions and padding != net.added_padding:
    raise ConfigError(f'the sizes already added to this network ({list(net.extra_resolutions)}) '
                      f'use padding {net.added_padding!r} (--padding={net.added_padding}); add '
                      f'{", ".join(map(str, resolutions))} the same way')


def _extend(net: RSNet, params, res: int, sources: Dict[int, float],
            padding: Optional[str] = None) -> Tuple[RSNet, Any]:
  """`net` with `res` added (its added sizes padded as `padding`, see `RSNet.added_padding`;
  None: as the net's) and `params` with its BatchNorm affine blended from `sources`'."""
  res = int(res)
  if res <= 0:
    raise ValueError(f'a resolution must be positive, got {res}')
  if res in net.all_resolutions:
    kind = 'a training' if res in net.resolutions else 'an added'
    raise ValueError(f'{res} is already {kind} resolution of this network')
  for source in sources:
    if source not in net.resolutions:
      raise ValueError(f'{source} is not a training resolution of this network {net.resolutions}')
  padding = net.added_padding if padding is None else padding
  check_padding(net, padding, [res])
  net2 = added_network(net, res, padding)
  # With a shared BatchNorm one affine pair serves every resolution already.
  params2 = params if net.shared_bn else blended_affine(params, sources, res)
  want = net2.init_shapes()[0]
  if jax.tree.structure(params2) != jax.tree.structure(want):
    raise ValueError(f'params do not fit a {net.arch} with resolutions {net.all_resolutions}')
  return net2, params2


def added_network(net: RSNet, res: int, padding: str) -> RSNet:
  """`net` that also runs at `res` (an added size, padded as `padding`); no parameters."""
  return dataclasses.replace(net, extra_resolutions=net.extra_resolutions + (int(res),),
                             added_padding=padding)


def add_resolution(net: RSNet, params, stats: Dict[int, Any], res: int, batches: Iterable[Any],
                   num_images: int = DEFAULT_NUM_IMAGES, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None, padding: str = DEFAULT_PADDING,
                   affine: str = DEFAULT_AFFINE) -> Tuple[RSNet, Any, Dict[int, Any]]:
  """`(net2, params2, stats2)`: the network extended to the untrained `res` (an extra resolution),
  its BatchNorm affine from `affine_sources(..., affine)` ('interpolated' between the trained
  neighbours, or the 'nearest'), `stats2[res]` by `recalibrated_stats` from `batches` (best:
  `data.recalibration_batches`' evaluation views), its strided convolutions padded as `padding`
  ('edge', or 'zeros' as before 2026-12-05: `RSNet.added_padding`). Training resolutions,
  `alpha` and the ensemble are unchanged; no input is modified."""
  res = int(res)
  net2, params2 = _extend(net, params, res, affine_sources(net.resolutions, res, affine), padding)
  new_stats = recalibrated_stats(net2, params2, res, batches, num_images, mean, std)
  return net2, params2, {**stats, res: new_stats}


def reuse_batchnorm(net: RSNet, params, stats: Dict[int, Any], res: int,
                    source: Optional[int] = None) -> Tuple[RSNet, Any, Dict[int, Any]]:
  """`(net2, params2, stats2)`: the network run at `res` with training resolution `source`'s
  BatchNorm as it is (default: the nearest): a network simply fed another size, the paper's
  "I-224" column. `add_resolution` re-estimates the statistics instead."""
  res = int(res)
  source = nearest_resolution(net.resolutions, res) if source is None else int(source)
  net2, params2 = _extend(net, params, res, {source: 1.0})
  copied = jax.tree.map(lambda x: jnp.array(x, copy=True), net.check_stats(stats[source], source))
  return net2, params2, {**stats, res: {RESOLUTION_KEY: jnp.int32(res), **copied}}
