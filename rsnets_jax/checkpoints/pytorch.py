"""Published PyTorch RS-Net checkpoints, converted for `rsnets_jax.load` (`rsnets_jax.convert`).

The reference saves `{'epoch', 'arch', 'state_dict', 'best_acc0', 'best_acc', 'optimizer'}` of a
DataParallel model: keys start with `module.`, shared layers add `.module.` (ModuleParallel), and
BatchNorm `bn_{i}` is the i-th training resolution's; a bare state dict is read too. Only reading
needs PyTorch, with `weights_only=True`: anything but tensors and plain data is refused, never run.
"""
import os
import pickle
import re
import tarfile
import warnings
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from rsnets_jax.checkpoints import store
from rsnets_jax.errors import ConversionError
from rsnets_jax.models import ARCHITECTURES, RESOLUTION_KEY, RSNet, create_model

PAPER_RESOLUTIONS = (224, 192, 160, 128, 96)
DATA_PARALLEL_PREFIX = 'module.'
SHOWN_PER_PROBLEM = 5  # keys named per kind of mismatch; the rest are counted
# How torch's weights-only unpickler names what it refuses to run (else: not a weights pickle).
UNSAFE_UNPICKLING = re.compile(r'GLOBAL|global|Unsupported class')
ZIP_SIGNATURE = b'PK\x03\x04'


# -- reading the PyTorch file (the only place that needs torch) -------------------------------------

def read_torch_checkpoint(src) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """`(state_dict, info)`: the tensors as float32/int numpy arrays, and the reference dict's
  scalars (epoch, arch, best_acc0, best_acc; empty for a bare state dict)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError('reading a PyTorch checkpoint needs PyTorch: pip install .[torch]') from e
  src = os.fspath(src)
  if not os.path.exists(src):
    raise ConversionError(f'no such file: {src}')
  if not os.path.isfile(src):
    raise ConversionError(f'not a file: {src}')
  if not _looks_like_torch_save(src):
    raise ConversionError(f'{src} is not a PyTorch checkpoint: it is neither the zip archive nor '
                          f'the pickle that torch.save writes')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # torch's notes on pickle protocols: keep errors to one line
      obj = torch.load(src, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    detail = _unpickling_detail(str(e))
    if not UNSAFE_UNPICKLING.search(detail):
      raise ConversionError(f'{src} is not a PyTorch checkpoint, or it is damaged: its pickle data '
                            f'does not read ({detail})') from e
    raise ConversionError(
        f'refusing to load {src}: it needs unsafe unpickling ({detail}); a file that needs '
        f'arbitrary unpickling is never run') from e
  except Exception as e:  # a truncated, corrupt or foreign file: torch raises many kinds
    if 'magic number' in str(e):  # the legacy format opens with torch's magic number
      raise ConversionError(f'{src} is not a PyTorch checkpoint: a pickle, but not one that '
                            f'torch.save wrote') from e
    raise ConversionError(f'cannot read {src} as a PyTorch checkpoint: {_first_line(e)}') from e

  if isinstance(obj, dict) and isinstance(obj.get('state_dict'), dict):
    state_dict = obj['state_dict']
    info = {k: _plain(obj[k]) for k in ('arch', 'epoch', 'best_acc0', 'best_acc') if k in obj}
    info = {k: v for k, v in info.items() if v is not None}
  elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
    state_dict, info = obj, {}
  else:
    raise ConversionError(f'{src} holds neither a state dict nor a dict with a "state_dict" entry')
  not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise ConversionError(f'the state dict of {src} has entries that are not tensors: '
                          f'{_some(not_tensors)}')
  arrays = {}
  for key, tensor in state_dict.items():
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.to(torch.float32)  # numpy has no bfloat16; published weights are float32
    arrays[key] = tensor.numpy()
  return arrays, info


def _looks_like_torch_save(src: str) -> bool:
  """Whether `src` opens as torch.save writes: zip (PyTorch 1.6 on), tar (the oldest), or a
  pickle of protocol 2 or more (legacy, opens with PROTO)."""
  with open(src, 'rb') as f:
    start = f.read(4)
  return start == ZIP_SIGNATURE or start[:1] == pickle.PROTO or tarfile.is_tarfile(src)


def _unpickling_detail(message: str) -> str:
  # torch wraps the reason (e.g. "unsupported GLOBAL posix.system") in paragraphs of advice.
  boilerplate = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
  for line in message.splitlines():
    line = line.strip()
    if line and not line.startswith(boilerplate):
      return line
  return 'the file is not a weights-only checkpoint'


def _first_line(e: Exception) -> str:
  """The first sentence of `e`'s message (torch appends paragraphs of advice)."""
  text = str(e).strip()
  return re.split(r'(?<=[a-z])\. ', text.splitlines()[0])[0] if text else type(e).__name__


def _plain(value):
  """A JSON-able copy of a scalar stored beside the state dict (None for anything else)."""
  if hasattr(value, 'item') and getattr(value, 'ndim', 0) == 0:
    value = value.item()
  return value if isinstance(value, (str, int, float, bool)) else None


# -- the mapping --------------------------------------------------------------------------------------

class Entry(NamedTuple):
  """Where one tensor of the PyTorch state dict goes in `(params, stats)`."""
  collection: Any            # 'params', or a resolution for stats[resolution]
  path: Tuple[str, ...]      # inside that tree
  torch_shape: Tuple[int, ...]
  to_jax: Callable[[np.ndarray], np.ndarray]


def _identity(x):
  return x


def _oihw_to_hwio(w):
  # A depthwise kernel [C, 1, 3, 3] becomes [3, 3, 1, C], Flax's layout with feature_group_count=C.
  return np.transpose(w, (2, 3, 1, 0))


def _hwio_to_oihw_shape(shape):
  h, w, i, o = shape
  return (o, i, h, w)


def _layers(tree, path=()) -> Iterator[Tuple[Tuple[str, ...], str]]:
  """`(path, kind)` of every convolution, BatchNorm and dense layer of a params tree."""
  for name, sub in tree.items():
    if not isinstance(sub, dict):
      continue  # alpha
    here = path + (name,)
    if set(sub) == {'kernel'}:
      yield here, 'conv'
    elif set(sub) == {'kernel', 'bias'}:
      yield here, 'dense'
    elif sub and all(k.startswith(('scale_', 'bias_')) for k in sub):
      yield here, 'bn'
    else:
      yield from _layers(sub, here)


def expected_entries(net: RSNet, params) -> Tuple[Dict[str, Entry], List[str]]:
  """`(entries, ignored)`: every state-dict key (no DataParallel prefix) `net` needs for params
  shaped like `params`, and keys that may be present but carry nothing (num_batches_tracked)."""
  if net.shared_bn:
    raise ConversionError('published checkpoints have a BatchNorm per resolution; '
                          'a shared_bn network cannot be converted')
  module_name = ARCHITECTURES[net.arch].torch_name
  if module_name is None:
    raise ConversionError(f'{net.arch} has no published PyTorch layout to convert from; '
                          f'choose one of {convertible()}')
  entries = {'alpha': Entry('params', ('alpha',), tuple(params['alpha'].shape), _identity)}
  ignored = []
  for path, kind in _layers(params):
    layer = params
    for name in path:
      layer = layer[name]
    prefix = module_name(path, params)
    if kind == 'conv':
      kernel = layer['kernel']
      entries[f'{prefix}.module.weight'] = Entry(
          'params', path + ('kernel',), _hwio_to_oihw_shape(kernel.shape), _oihw_to_hwio)
    elif kind == 'dense':
      kernel, bias = layer['kernel'], layer['bias']
      entries[f'{prefix}.module.weight'] = Entry(
          'params', path + ('kernel',), tuple(kernel.shape[::-1]), np.transpose)
      entries[f'{prefix}.module.bias'] = Entry('params', path + ('bias',), tuple(bias.shape), _identity)
    else:
      for i, res in enumerate(net.resolutions):
        channels = tuple(layer[f'scale_{res}'].shape)
        bn = f'{prefix}.bn_{i}'
        entries[f'{bn}.weight'] = Entry('params', path + (f'scale_{res}',), channels, _identity)
        entries[f'{bn}.bias'] = Entry('params', path + (f'bias_{res}',), channels, _identity)
        entries[f'{bn}.running_mean'] = Entry(res, path + ('mean',), channels, _identity)
        entries[f'{bn}.running_var'] = Entry(res, path + ('var',), channels, _identity)
        ignored.append(f'{bn}.num_batches_tracked')
  return entries, ignored


def convertible() -> Tuple[str, ...]:
  """The architectures whose PyTorch layout the converter maps."""
  return tuple(sorted(name for name, a in ARCHITECTURES.items() if a.torch_name is not None))


def strip_data_parallel_prefix(state_dict: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
  """`(state_dict without the prefix, the prefix)`: DataParallel's `module.` on every key, or ''."""
  if state_dict and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state_dict):
    n = len(DATA_PARALLEL_PREFIX)
    return {k[n:]: v for k, v in state_dict.items()}, DATA_PARALLEL_PREFIX
  return dict(state_dict), ''


def torch_to_jax(state_dict: Dict[str, np.ndarray], net: RSNet) -> Tuple[Any, Dict[int, Any]]:
  """`(params, stats)` for `net` from a reference state dict of numpy arrays. Every key and
  shape is checked first; all problems are reported in one ConversionError."""
  state_dict, prefix = strip_data_parallel_prefix(state_dict)
  params_shapes, stats_shapes = net.init_shapes()
  entries, ignored = expected_entries(net, params_shapes)
  ignored = set(ignored)
  missing = sorted((k for k in entries if k not in state_dict), key=_natural_order)
  unexpected = [k for k in state_dict if k not in entries and k not in ignored]
  wrong_shape = [f'{prefix}{k} {list(np.shape(v))} (expected {list(entries[k].torch_shape)})'
                 for k, v in state_dict.items()
                 if k in entries and tuple(np.shape(v)) != entries[k].torch_shape]
  if missing or unexpected or wrong_shape:
    problems = [_count_and_name(keys, *names) for keys, names in (
        ([prefix + k for k in missing], ('missing key', 'missing keys')),
        ([prefix + k for k in unexpected], ('unexpected key', 'unexpected keys')),
        (wrong_shape, ('key with the wrong shape', 'keys with the wrong shape'))) if keys]
    raise ConversionError(f'the checkpoint does not match {_describe(net)}: ' + '; '.join(problems))

  params: Dict[str, Any] = {}
  stats: Dict[int, Any] = {res: {RESOLUTION_KEY: np.asarray(res, np.int32)} for res in net.resolutions}
  for key, entry in entries.items():
    tree = params if entry.collection == 'params' else stats[entry.collection]
    _set(tree, entry.path, np.ascontiguousarray(entry.to_jax(state_dict[key]), dtype=np.float32))
  for name, got, want in (('params', params, params_shapes), ('stats', stats, stats_shapes)):
    shapes = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), got)
    if shapes != jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), want):
      # Only reachable if an architecture gains a layer kind that `_layers` does not know.
      raise ConversionError(f'internal error: the converted {name} do not have the layout of '
                            f'{_describe(net)}')
  return params, stats


def _natural_order(key: str):
  return [(0, int(part), '') if part.isdigit() else (1, 0, part) for part in key.split('.')]


def _set(tree: Dict[str, Any], path: Tuple[str, ...], value):
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _some(keys: Sequence[str]) -> str:
  shown = ', '.join(keys[:SHOWN_PER_PROBLEM])
  more = len(keys) - SHOWN_PER_PROBLEM
  return shown + (f', ... ({more} more)' if more > 0 else '')


def _count_and_name(keys: Sequence[str], singular: str, plural: str) -> str:
  return f'{len(keys)} {singular if len(keys) == 1 else plural}: {_some(keys)}'


def _describe(net: RSNet) -> str:
  return (f'{net.arch} with resolutions {" ".join(map(str, net.resolutions))} '
          f'and {net.num_classes} classes')


# -- the command ----------------------------------------------------------------------------------

def infer_num_classes(state_dict: Dict[str, np.ndarray]) -> Optional[int]:
  """Rows of the classifier weight (fc for ResNets, classifier for MobileNetV2), if there is one."""
  state_dict, _ = strip_data_parallel_prefix(state_dict)
  for key in ('fc.module.weight', 'classifier.module.weight'):
    if key in state_dict and np.ndim(state_dict[key]) == 2:
      return int(np.shape(state_dict[key])[0])
  return None


def convert(arch: str, src, dst, resolutions: Sequence[int] = PAPER_RESOLUTIONS,
            num_classes: Optional[int] = None, overwrite: bool = False) -> RSNet:
  """Reads the PyTorch checkpoint `src` and writes `dst`, which `rsnets_jax.load` reads."""
  state_dict, info = read_torch_checkpoint(src)
  alpha = strip_data_parallel_prefix(state_dict)[0].get('alpha')
  if alpha is not None and alpha.ndim == 1 and len(alpha) != len(resolutions):
    raise ConversionError(f'the checkpoint was trained at {len(alpha)} resolutions (alpha has '
                          f'{len(alpha)} entries), but {len(resolutions)} resolutions were given: '
                          f'pass them all, largest first, with --resolutions')
  if num_classes is None:
    num_classes = infer_num_classes(state_dict) or 1000
  net = create_model(arch, resolutions, num_classes)
  try:
    params, stats = torch_to_jax(state_dict, net)
  except ConversionError as e:
    if 'arch' in info:  # the reference stores e.g. 'parallel_resnet50': a likely cause of a mismatch
      raise ConversionError(f'{e} (the checkpoint says arch {info["arch"]!r})') from e
    raise

  dst = os.path.abspath(os.fspath(dst))
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)) and not overwrite:
    # Orbax replaces the whole directory: never do that to a directory the user did not name for it.
    raise ConversionError(f'{dst} exists and is not an empty directory; pass --overwrite to '
                          f'replace it')
  meta = {'converted_from': os.fspath(src), 'source_checkpoint': info}
  try:
    store.save_model(dst, net, params, stats, extra_meta=meta)
  except OSError as e:
    raise ConversionError(f'cannot write {dst}: {_first_line(e)}') from e
  return net
