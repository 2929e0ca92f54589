"""One file that runs every resolution: the shared weights once, each resolution's BatchNorm as a
per-channel scale and shift (y = x * scale + shift), chosen by the input's height.

At inference a BatchNorm is y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift;
an RS-Net's resolutions differ only there, so a file holding the convolutions and the classifier
once and (scale, shift) per resolution is one resolution's size plus a few kilobytes a resolution.
The price against the per-resolution files (fold.py) is the scale and shift left unfolded: one
multiply-add per channel after each convolution (experiments/BENCHMARKS.md measures it).

- ONNX (`onnx_model`): the input's height picks a branch of a chain of `If` nodes, one branch per
  resolution, all reading the same weight initializers; an input of another size fails in the
  last branch's Reshape rather than running a wrong BatchNorm.
- JAX (`jax_archive`, `load_jax`): a zip holding `weights.npz` (shared, once), per resolution
  `batchnorm_<res>px.npz` and `<res>px.jaxexport`, a `jax.export` program of
  (weights, batchnorm, images) -> logits, and `switchable.json` indexing them. A program is
  compiled for one input size (conv.py picks each convolution's lowering by its size on CPU), so
  the selection by height is the loader's: `load_jax` reads the archive, no rsnets_jax needed to
  run it (docs/deployment.md shows the five lines).
"""
import dataclasses
import io
import json
import zipfile
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np

from rsnets_jax.data import preprocess
from rsnets_jax.deploy import fold, formats
from rsnets_jax.errors import ConfigError
from rsnets_jax.models import RSNet, conv
from rsnets_jax.models.batchnorm import SwitchableBatchNorm

INDEX = 'switchable.json'
WEIGHTS = 'weights.npz'
SEPARATOR = '/'


def _flat(tree, prefix: str = '') -> Dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}{SEPARATOR}'))
    else:
      flat[prefix + key] = value
  return flat


def _nested(flat: Dict[str, Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for key, value in flat.items():
    *path, leaf = key.split(SEPARATOR)
    node = tree
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def shared_weights(net: RSNet, params) -> Dict[str, np.ndarray]:
  """The weights every resolution uses (convolutions, classifier), flat by '/'-joined path: the
  params without the BatchNorms (`fold.conv_bn_pairs` also refuses a quantized network)."""
  tree = jax.tree.map(np.asarray, params)
  for bn_path in fold.conv_bn_pairs(net):
    tree = fold.without(tree, bn_path)
  return _flat(tree)


def batchnorm_affine(net: RSNet, params, stats, res: int) -> Dict[str, np.ndarray]:
  """Resolution `res`'s BatchNorms as {'<path>/scale', '<path>/shift'}, computed in float64 and
  rounded once to float32 as `fold.fold_batchnorm` folds them."""
  batch_stats = net.check_stats(stats, res)
  key = 'shared' if net.shared_bn else str(res)
  affine = {}
  for bn_path in fold.conv_bn_pairs(net):
    bn, moments = fold.subtree(params, bn_path), fold.subtree(batch_stats, bn_path)
    scale, shift = fold.scale_shift(bn[f'scale_{key}'], bn[f'bias_{key}'], moments['mean'],
                                    moments['var'])
    name = SEPARATOR.join(bn_path)
    affine[f'{name}{SEPARATOR}scale'] = scale.astype(np.float32)
    affine[f'{name}{SEPARATOR}shift'] = shift.astype(np.float32)
  return affine


def affine_apply(net: RSNet, weights: Dict[str, Any], affine: Dict[str, Any], x,
                 platforms: Optional[Sequence[str]] = None):
  """Logits of float images `x` (N, r, r, 3) from the shared `weights` and resolution r's
  BatchNorm `affine` (both flat, as above), in float32; `platforms` as `fold.folded_apply`."""
  module = dataclasses.replace(net, dtype='float32').module

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    if isinstance(mod, SwitchableBatchNorm):
      name = SEPARATOR.join(mod.path)
      return args[0] * affine[f'{name}{SEPARATOR}scale'] + affine[f'{name}{SEPARATOR}shift']
    if isinstance(mod, conv.Conv):
      kernel = mod.variables['params']['kernel']
      return fold.lowered_conv(args[0], kernel, mod.strides, mod.feature_group_count,
                               mod.padding, platforms)
    return next_fun(*args, **kwargs)

  with net.padding_at(x.shape[1]), nn.intercept_methods(interceptor):
    return module.apply({'params': _nested(dict(weights))}, x)


def _resolutions(net: RSNet, resolutions: Sequence[int]) -> Tuple[int, ...]:
  if len(set(resolutions)) != len(resolutions) or not resolutions:
    raise ConfigError(f'a switchable file needs distinct resolutions, got {list(resolutions)}')
  return tuple(sorted(resolutions, reverse=True))


# -- ONNX ------------------------------------------------------------------------------------------

def onnx_model(net: RSNet, params, stats, resolutions: Sequence[int], mean=None, std=None,
               doc: str = '') -> bytes:
  """The switchable ONNX model (input 'images' (batch, res, res, 3) uint8, output 'logits')."""
  from rsnets_jax.deploy import onnx_graph  # pylint: disable=import-outside-toplevel  # needs onnx
  weights = shared_weights(net, params)
  functions = {}
  for res in _resolutions(net, resolutions):
    affine = batchnorm_affine(net, params, stats[res], res)
    functions[res] = (lambda a: lambda images: affine_apply(
        net, weights, a, preprocess.to_float(images, mean, std),
        platforms=(onnx_graph.PLATFORM,)))(affine)
  return onnx_graph.to_switchable_onnx(functions, doc=doc).SerializeToString()


# -- JAX -------------------------------------------------------------------------------------------

def _npz(arrays: Dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def jax_archive(net: RSNet, params, stats, resolutions: Sequence[int], mean=None, std=None,
                platforms: Optional[Sequence[str]] = None) -> bytes:
  """The switchable JAX archive (the module docstring), its programs lowered for `platforms`
  (default: this process's)."""
  platforms = tuple(platforms or (jax.default_backend(),))
  weights = shared_weights(net, params)
  index = {'resolutions': [], 'weights': WEIGHTS, 'programs': {}, 'batchnorm': {},
           'call': 'program.call(weights, batchnorm, images): uint8 images (batch, res, res, 3) '
                   '-> float32 logits', 'platforms': list(platforms)}
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_STORED) as archive:
    archive.writestr(WEIGHTS, _npz(weights))
    for res in _resolutions(net, resolutions):
      affine = batchnorm_affine(net, params, stats[res], res)

      def program(w, a, images):
        return affine_apply(net, w, a, preprocess.to_float(images, mean, std), platforms)

      spec = lambda tree: {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tree.items()}
      exported = jax.export.export(jax.jit(program), platforms=platforms)(
          spec(weights), spec(affine), formats.input_spec(res))
      index['resolutions'].append(res)
      index['programs'][str(res)] = f'{res}px.jaxexport'
      index['batchnorm'][str(res)] = f'batchnorm_{res}px.npz'
      archive.writestr(f'{res}px.jaxexport', bytes(exported.serialize()))
      archive.writestr(f'batchnorm_{res}px.npz', _npz(affine))
    archive.writestr(INDEX, json.dumps(index, indent=1))
  return buffer.getvalue()


def _read_npz(archive: zipfile.ZipFile, name: str) -> Dict[str, np.ndarray]:
  with np.load(io.BytesIO(archive.read(name))) as arrays:
    return dict(arrays)


def load_jax(path) -> Any:
  """uint8 images (N, res, res, 3) -> logits (numpy) at any resolution of the archive at
  `path`; each resolution's program is compiled on its first call."""
  try:
    with zipfile.ZipFile(path) as archive:
      index = json.loads(archive.read(INDEX))
      weights = _read_npz(archive, index['weights'])
      programs = {int(r): (archive.read(index['programs'][r]),
                           _read_npz(archive, index['batchnorm'][r])) for r in index['programs']}
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ConfigError(f'{path} is not a switchable JAX archive: {e}') from e
  weights = jax.device_put(weights)
  calls: Dict[int, Any] = {}

  def run(images):
    images = np.asarray(images, np.uint8)
    res = images.shape[1] if images.ndim == 4 else None
    if res not in programs or images.shape[2] != res or images.shape[3] != 3:
      raise ConfigError(f'the switchable model takes uint8 images (batch, res, res, 3) with res in '
                        f'{sorted(programs, reverse=True)}, got {images.shape}')
    if res not in calls:
      exported = jax.export.deserialize(bytearray(programs[res][0]))
      affine = jax.device_put(programs[res][1])
      call = jax.jit(exported.call)
      calls[res] = lambda x, call=call, affine=affine: call(weights, affine, x)
    return np.asarray(calls[res](images))

  run.resolutions = tuple(sorted(programs, reverse=True))
  run.platforms = tuple(index.get('platforms', ()))
  return run
