"""An RS-Net as deployable files: for each resolution, its BatchNorm folded into the convolutions
(fold.py), one file per export format (formats.py), and `manifest.json` (manifest.py).

The manifest gives per resolution its MACs, parameters, top-1/top-5 from the work directory's
results.json (added resolutions marked not trained), files and SHA-256 checksums and what each
format records (the int8 models' accuracy); the preprocessing, the input and output, and class
names when known. Every file takes uint8 RGB images (batch, res, res, 3) in [0, 255], NHWC, any
batch size, and returns float32 logits (batch, classes): those of `net.apply` up to float32
rounding (tests/test_deploy.py measures how far; the int8 models' up to quantization, measured as
accuracy in the manifest).
"""
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional, Sequence

from etils import epath
import jax
import ml_collections
import numpy as np

from rsnets_jax import checkpoints, data
from rsnets_jax.data import preprocess, transforms
from rsnets_jax.deploy import fold, int8, manifest as manifests
from rsnets_jax.deploy import formats as export_formats
from rsnets_jax.errors import ConfigError
from rsnets_jax.models import RSNet

FORMAT_VERSION = 1


# -- what the manifest says ------------------------------------------------------------------------

def _results_rows(path, which: str) -> Dict[int, Dict[str, Any]]:
  """{resolution: results row} of the evaluation that belongs to the checkpoint `load` reads from
  `path`: results.json beside it, when its step (if it records one) is that checkpoint's."""
  directory, _ = checkpoints.find(path, which)
  candidates = [epath.Path(path)]
  if directory.parent.name == checkpoints.CHECKPOINT_SUBDIR:
    candidates.append(directory.parent.parent)
  for folder in candidates:
    results = folder / 'results.json'
    if results.exists():
      table = json.loads(results.read_text())
      step = table.get('step')
      if step is not None and directory.name.isdigit() and int(directory.name) != int(step):
        return {}  # the evaluation of another step
      return {int(r['resolution']): r for r in table.get('rows', [])}
  return {}


def class_names(meta: Dict[str, Any], num_classes: int, names_file: Optional[str] = None):
  """(names, where they came from), or (None, why not): the --class-names file, else the class
  names of the data set the network was trained on (a converted 1000-class model: ImageNet's)."""
  if names_file:
    try:
      with open(names_file) as f:
        names = [line.strip() for line in f if line.strip()]
    except OSError as e:
      raise ConfigError(f'cannot read --class-names {names_file}: {e}') from e
    if len(names) != num_classes:
      raise ConfigError(f'--class-names {names_file} has {len(names)} names, the network '
                        f'{num_classes} classes')
    return names, names_file
  trained_on = meta.get('config', {}).get('data')
  if not trained_on and 'converted_from' in meta and num_classes == 1000:
    trained_on = data.PUBLISHED_CHECKPOINTS_DATA
  unknown = 'unknown: pass --class-names=FILE (one name per line, in label order)'
  if not trained_on:
    return None, unknown
  names, source = data.class_names(trained_on)
  if names is None:
    return None, f'{unknown}; {source}' if source else unknown
  if len(names) != num_classes:
    return None, f'{source} lists {len(names)} classes, the network has {num_classes}'
  return names, source


def preprocessing(mean, std) -> Dict[str, Any]:
  return {
      'eval_view': (f'shorter side resized to int(res / {transforms.CROP_FRACTION}) with '
                    f'antialiased bilinear interpolation (PIL), then the centre res x res crop '
                    f'(rsnets_jax.data.eval_view)'),
      'crop_fraction': transforms.CROP_FRACTION,
      'input': 'uint8 RGB (batch, res, res, 3), NHWC, values 0..255',
      'in_model': 'x / 255' + ('' if mean is None else ', then (x - mean) / std'),
      'mean': None if mean is None else list(mean),
      'std': None if std is None else list(std),
  }


def _normalisation(meta: Dict[str, Any]):
  config_data = meta.get('config', {}).get('data')
  if not config_data:
    return None, None  # a converted model: the reference's plain [0, 1] input
  return preprocess.input_normalisation(ml_collections.ConfigDict(config_data))


def parameter_count(folded) -> int:
  """Numbers in the folded network of one resolution (the ensemble weights `alpha` are not used)."""
  return int(sum(np.size(v) for v in jax.tree.leaves({k: v for k, v in folded.items()
                                                      if k != 'alpha'})))


# -- the command -----------------------------------------------------------------------------------

def _check_destination(dst: str, overwrite: bool):
  """Refuses a `dst` that is a file, that holds something other than an export, or that holds an
  export when `overwrite` is not set."""
  if os.path.exists(dst) and not os.path.isdir(dst):
    raise ConfigError(f'--dst {dst} is a file')
  if os.path.isdir(dst) and os.listdir(dst):
    if not os.path.exists(os.path.join(dst, manifests.MANIFEST)):
      raise ConfigError(f'--dst {dst} is not empty and holds no export; choose another directory')
    if not overwrite:
      raise ConfigError(f'--dst {dst} already holds an export; pass --overwrite to replace it')


def _swap_in(written: str, dst: str):
  """Puts the finished export `written` (a folder beside `dst`) in the place of `dst`, replacing
  a previous export whole: no file of it (a latency table, a figure) stays behind."""
  if os.path.isdir(dst):
    old = f'{written}.old'
    os.rename(dst, old)
    os.rename(written, dst)
    shutil.rmtree(old)
  else:
    os.rename(written, dst)


@dataclasses.dataclass
class Export:
  """What the formats' writers read: the network, its training input scaling and the options."""
  net: RSNet
  params: Any
  stats: Dict[int, Any]
  meta: Dict[str, Any]
  mean: Optional[Sequence[float]]
  std: Optional[Sequence[float]]
  platforms: Optional[Sequence[str]] = None
  data_dir: Optional[str] = None
  calibration_images: int = int8.DEFAULT_CALIBRATION_IMAGES
  eval_images: int = 0


def export_model(workdir, dst, resolutions: Optional[Sequence[int]] = None,
                 which: str = 'latest', platforms: Optional[Sequence[str]] = None,
                 formats: Sequence[str] = export_formats.DEFAULT_FORMATS,
                 names_file: Optional[str] = None, data_dir: Optional[str] = None,
                 calibration_images: int = int8.DEFAULT_CALIBRATION_IMAGES,
                 eval_images: int = 0, overwrite: bool = False, log=print) -> Dict[str, Any]:
  """Exports the network in `workdir` (anything `rsnets_jax.load` reads) to `dst` in the export
  formats `formats` (see the module docstring); returns the manifest. An export already in `dst`
  is replaced whole with `overwrite` (written beside it first, then swapped in), else refused."""
  asked = tuple(formats)
  if not asked or set(asked) - set(export_formats.FORMATS):
    raise ConfigError(f'--formats must name some of {tuple(export_formats.FORMATS)}, got {asked}')
  if platforms is not None and (not platforms or set(platforms) - set(export_formats.PLATFORMS)):
    raise ConfigError(f'--platforms must name some of {export_formats.PLATFORMS}, got '
                      f'{tuple(platforms)}')
  net, params, stats = checkpoints.load(workdir, which)
  meta = checkpoints.read_meta(workdir)
  resolutions = tuple(net.all_resolutions if not resolutions else
                      sorted({int(r) for r in resolutions}, reverse=True))
  missing = [r for r in resolutions if r not in net.all_resolutions]
  if missing:
    raise ConfigError(f'the network has no BatchNorm for {missing} (it runs at '
                      f'{list(net.all_resolutions)}); add them first with python -m '
                      f'rsnets_jax.add_resolutions')
  fold.conv_bn_pairs(net)  # a network that cannot be folded stops here, before dst is touched
  dst = os.path.abspath(os.fspath(dst))
  _check_destination(dst, overwrite)
  mean, std = _normalisation(meta)
  export = Export(net, params, stats, meta, mean, std, platforms, data_dir, calibration_images,
                  eval_images)
  # Every format to make, those another one reads first; each checks what it needs here.
  made_formats = [name for name in export_formats.FORMATS if name in asked or
                  any(name in export_formats.FORMATS[a].requires for a in asked)]
  writers = {name: export_formats.FORMATS[name].writer(export) for name in made_formats}
  parent, name = os.path.split(dst)
  os.makedirs(parent, exist_ok=True)
  final, dst = dst, tempfile.mkdtemp(prefix=f'.{name}.', suffix='.export', dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(dst, 0o777 & ~umask)  # as a new directory, not mkdtemp's 0700
  try:
    manifest = _write(export, writers, asked, workdir, which, resolutions, names_file, platforms,
                      dst, log)
    manifests.write_manifest(dst, manifest)
    _swap_in(dst, final)
  except BaseException:
    shutil.rmtree(dst, ignore_errors=True)
    raise
  return manifest


def _write_file(dst: str, file_name: str, content: bytes) -> Dict[str, Any]:
  """Writes one file of the export; returns its manifest entry."""
  with open(os.path.join(dst, file_name), 'wb') as f:
    f.write(content)
  return {'file': file_name, 'sha256': manifests.sha256(os.path.join(dst, file_name)),
          'bytes': len(content)}


def _write(export: Export, writers, asked, workdir, which, resolutions, names_file, platforms,
           dst: str, log) -> Dict[str, Any]:
  """Every file of the export into `dst`; returns its manifest."""
  net, meta, mean, std = export.net, export.meta, export.mean, export.std
  params, stats = export.params, export.stats
  accuracy = _results_rows(workdir, which)
  names, names_source = class_names(meta, net.num_classes, names_file)
  by_name = export_formats.FORMATS
  whole = {name: _write_file(dst, by_name[name].file_name(0), writers[name](resolutions))
           for name in asked if by_name[name].switchable}
  for name, entry in whole.items():
    log(f'exported {resolutions} px in one file: {name} {entry["bytes"] / 1e6:.1f} MB')
  rows = []
  for res in resolutions:
    folded = fold.fold(net, params, stats[res], res)
    made, entries = {}, {}
    for name, write in writers.items():
      if not by_name[name].switchable:
        made[name], entries[name] = write(res, folded, made)
    files = {name: _write_file(dst, by_name[name].file_name(res), made[name])
             for name in asked if not by_name[name].switchable}
    row = accuracy.get(res, {})
    rows.append({'resolution': res, 'trained': res in net.resolutions, 'macs': net.macs(res),
                 'params': parameter_count(folded), 'top1': row.get('top1'),
                 'top5': row.get('top5'), 'files': files})
    if files:
      log(f'exported {res}px: ' + ', '.join(f'{k} {v["bytes"] / 1e6:.1f} MB'
                                            for k, v in files.items()))
    files.update(whole)
    for name in asked:
      key = export_formats.FORMATS[name].accuracy_key
      if key and entries[name]:
        rows[-1][key] = entries[name]
        log(f'  {key} at {res}px: {export_formats.FORMATS[name].describe(entries[name])}')

  manifest = {
      'format': FORMAT_VERSION,
      'arch': net.arch, 'width': net.width, 'num_classes': net.num_classes,
      'trained_resolutions': list(net.resolutions),
      'source': {'path': os.fspath(workdir), 'checkpoint': which},
      'preprocessing': preprocessing(mean, std),
      'output': 'float32 logits (batch, num_classes)',
      'jax_platforms': list(platforms or (jax.default_backend(),)),
      'class_names': names, 'class_names_source': names_source,
      'resolutions': rows,
  }
  for name in asked:
    about = export_formats.FORMATS[name].about(writers[name])
    if about is not None:
      manifest[export_formats.FORMATS[name].accuracy_key] = about
  return manifest
