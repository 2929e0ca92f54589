"""Command line: an RS-Net as deployable files, one JAX artifact and one ONNX model per resolution.

    python -m rsnets_jax.export --workdir=W --dst=D [--resolutions=224,160] [--which=latest]
        [--platforms=cpu,cuda] [--formats=jax,onnx,onnx_int8] [--class-names=FILE]
        [--data-dir=DIR] [--calibration-images=512] [--eval-images=0]

`--workdir` is anything `rsnets_jax.load` reads: a work directory, one checkpoint, a converted
model or an `add_resolutions` output. For each resolution (default: every trained and added one)
D receives, with that resolution's BatchNorm folded into the convolutions (rsnets_jax/fold.py):
    <res>px.jaxexport  a serialized `jax.export` artifact: any JAX program runs it with
                       `jax.export.deserialize(open(f, 'rb').read()).call(images)`, no rsnets_jax
                       needed, on the platforms of `--platforms` (default: this machine's)
    <res>px.onnx       the same function for onnxruntime (input 'images', output 'logits')
    <res>px.int8.onnx  with --formats=...,onnx_int8: that model quantized to int8
                       (rsnets_jax/int8.py), calibrated on `--calibration-images` training images of the run's data set
                       (or of --data-dir) and evaluated against float32 on `--eval-images`
                       validation images (0: all)
    manifest.json      per resolution: MACs, parameters, top-1/top-5 from the work directory's
                       results.json (added resolutions marked not trained), files and SHA-256
                       checksums, the int8 models' accuracy; the preprocessing, the input and
                       output, class names when known
All take uint8 RGB images (batch, res, res, 3) in [0, 255], NHWC, any batch size: the eval view
of `rsnets_jax.data.eval_view`, the scaling to [0, 1] and any mean/std of the training config are
inside; they return float32 logits (batch, classes), those of `net.apply` up to float32
rounding (tests/test_deploy.py measures how far; the int8 models' up to quantization, measured as
accuracy in the manifest).
"""
import argparse
import importlib.util
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rsnets_jax import checkpoint, cli, data, deploy, fold, int8, preprocess, steps
from rsnets_jax.errors import ConfigError, DataError
from rsnets_jax.network import RSNet

FORMATS = ('jax', 'onnx', 'onnx_int8')
DEFAULT_FORMATS = ('jax', 'onnx')  # int8 needs calibration images
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # what jax.export lowers for
SUFFIX = {'jax': 'jaxexport', 'onnx': 'onnx', 'onnx_int8': 'int8.onnx'}
FORMAT_VERSION = 1
IMAGENET_LABELS = os.path.join('datasets', 'imagenet2012', 'labels.txt')  # in tensorflow-datasets


# -- the inference function and its two serialisations ---------------------------------------------

def inference_fn(net: RSNet, folded, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, platforms: Optional[Sequence[str]] = None):
  """uint8 images (N, r, r, 3) -> float32 logits (N, classes) through the folded tree of
  resolution r (`fold.fold`), with the training input scaling; `platforms` as in
  `fold.folded_apply`."""
  def infer(images):
    return fold.folded_apply(net, folded, preprocess.to_float(images, mean, std), platforms)
  return infer


def input_spec(res: int, batch=None) -> jax.ShapeDtypeStruct:
  """The input of an exported resolution; `batch` None makes the batch dimension symbolic."""
  if batch is None:
    batch, = jax.export.symbolic_shape('batch')
  return jax.ShapeDtypeStruct((batch, res, res, 3), jnp.uint8)


def export_jax(net: RSNet, folded, res: int, mean=None, std=None,
               platforms: Optional[Sequence[str]] = None) -> bytes:
  """The serialized `jax.export` artifact of resolution `res`, for `platforms` (default: this
  process's), the convolutions lowered as conv.py does on each."""
  platforms = tuple(platforms or (jax.default_backend(),))
  fn = inference_fn(net, folded, mean, std, platforms)
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(input_spec(res))
  return bytes(exported.serialize())


def export_onnx(net: RSNet, folded, res: int, mean=None, std=None, doc: str = '') -> bytes:
  """The ONNX model of resolution `res`, read from the function with XLA's own convolutions."""
  from rsnets_jax import onnx_graph  # pylint: disable=import-outside-toplevel  # needs onnx
  fn = inference_fn(net, folded, mean, std, platforms=(onnx_graph.PLATFORM,))
  return onnx_graph.to_onnx(fn, input_spec(res, batch=2), doc=doc).SerializeToString()


# -- what the manifest says ------------------------------------------------------------------------

def _results_rows(path, which: str) -> Dict[int, Dict[str, Any]]:
  """{resolution: results row} of the evaluation that belongs to the checkpoint `load` reads from
  `path`: results.json beside it, when its step (if it records one) is that checkpoint's."""
  directory, _ = checkpoint.find(path, which)
  candidates = [epath.Path(path)]
  if directory.parent.name == checkpoint.CHECKPOINT_SUBDIR:
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


def _imagenet_labels() -> List[str]:
  spec = importlib.util.find_spec('tensorflow_datasets')  # the file only: no import of tfds
  folder = list(spec.submodule_search_locations)[0]
  with open(os.path.join(folder, IMAGENET_LABELS)) as f:
    return [line.strip() for line in f if line.strip()]


def class_names(meta: Dict[str, Any], num_classes: int, names_file: Optional[str] = None):
  """(names, where they came from), or (None, why not)."""
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
  config_data = meta.get('config', {}).get('data', {})
  dataset = config_data.get('dataset')
  names, source = None, 'unknown: pass --class-names=FILE (one name per line, in label order)'
  if (dataset == 'tfds' and config_data.get('tfds_name') == 'imagenet2012') or (
      'converted_from' in meta and num_classes == 1000):
    names = _imagenet_labels()
    source = f'tensorflow-datasets {IMAGENET_LABELS} (WordNet IDs)'
  elif dataset == 'folder' and config_data.get('data_dir'):
    split = config_data.get('train_split') or 'train'
    root = os.path.join(config_data['data_dir'], split)
    try:
      names = list(data.FolderSource(config_data['data_dir'], split, split).classes)
      source = f'class folders of {root}'
    except DataError:
      source = f'unknown: the class folders of {root} are not readable here; pass --class-names'
  if names is not None and len(names) != num_classes:
    return None, f'{source} lists {len(names)} classes, the network has {num_classes}'
  return names, source


def preprocessing(mean, std) -> Dict[str, Any]:
  return {
      'eval_view': (f'shorter side resized to int(res / {data.CROP_FRACTION}) with antialiased '
                    f'bilinear interpolation (PIL), then the centre res x res crop '
                    f'(rsnets_jax.data.eval_view)'),
      'crop_fraction': data.CROP_FRACTION,
      'input': 'uint8 RGB (batch, res, res, 3), NHWC, values 0..255',
      'in_model': 'x / 255' + ('' if mean is None else ', then (x - mean) / std'),
      'mean': None if mean is None else list(mean),
      'std': None if std is None else list(std),
  }


def _normalisation(meta: Dict[str, Any]):
  config_data = meta.get('config', {}).get('data')
  if not config_data:
    return None, None  # a converted model: the reference's plain [0, 1] input
  return steps.input_normalisation(ml_collections.ConfigDict(config_data))


def parameter_count(folded) -> int:
  """Numbers in the folded network of one resolution (the ensemble weights `alpha` are not used)."""
  return int(sum(np.size(v) for v in jax.tree.leaves({k: v for k, v in folded.items()
                                                      if k != 'alpha'})))


# -- the command -----------------------------------------------------------------------------------

def _prepare_destination(dst: str):
  """Creates `dst`, or clears an earlier export there; refuses any other non-empty directory."""
  if os.path.isdir(dst) and os.listdir(dst):
    if not os.path.exists(os.path.join(dst, deploy.MANIFEST)):
      raise ConfigError(f'--dst {dst} is not empty and holds no export; choose another directory')
    for r in deploy.read_manifest(dst).get('resolutions', []):
      for entry in r.get('files', {}).values():
        path = os.path.join(dst, entry['file'])
        if os.path.exists(path):
          os.remove(path)
    os.remove(os.path.join(dst, deploy.MANIFEST))
  elif os.path.exists(dst) and not os.path.isdir(dst):
    raise ConfigError(f'--dst {dst} is a file')
  os.makedirs(dst, exist_ok=True)


def export_model(workdir, dst, resolutions: Optional[Sequence[int]] = None,
                 which: str = 'latest', platforms: Optional[Sequence[str]] = None,
                 formats: Sequence[str] = DEFAULT_FORMATS,
                 names_file: Optional[str] = None, data_dir: Optional[str] = None,
                 calibration_images: int = int8.DEFAULT_CALIBRATION_IMAGES,
                 eval_images: int = 0, log=print) -> Dict[str, Any]:
  """Exports the network in `workdir` to `dst` (see the module docstring); returns the manifest."""
  formats = tuple(formats)
  if not formats or set(formats) - set(FORMATS):
    raise ConfigError(f'--formats must name some of {FORMATS}, got {formats}')
  if platforms is not None and (not platforms or set(platforms) - set(PLATFORMS)):
    raise ConfigError(f'--platforms must name some of {PLATFORMS}, got {tuple(platforms)}')
  if {'onnx', 'onnx_int8'} & set(formats) and importlib.util.find_spec('onnx') is None:
    raise ConfigError("the onnx formats need the onnx package: pip install -e '.[deploy]', or "
                      "pass --formats=jax")
  net, params, stats = checkpoint.load(workdir, which)
  meta = checkpoint.read_meta(workdir)
  resolutions = tuple(net.all_resolutions if not resolutions else
                      sorted({int(r) for r in resolutions}, reverse=True))
  missing = [r for r in resolutions if r not in net.all_resolutions]
  if missing:
    raise ConfigError(f'the network has no BatchNorm for {missing} (it runs at '
                      f'{list(net.all_resolutions)}); add them first with python -m '
                      f'rsnets_jax.add_resolutions')
  fold.conv_bn_pairs(net)  # a network that cannot be folded stops here, before dst is touched
  int8_data = (int8.Calibration(meta, net.num_classes, data_dir, calibration_images, eval_images)
               if 'onnx_int8' in formats else None)
  dst = os.fspath(dst)
  _prepare_destination(dst)
  mean, std = _normalisation(meta)
  accuracy = _results_rows(workdir, which)
  names, names_source = class_names(meta, net.num_classes, names_file)
  rows = []
  for res in resolutions:
    folded = fold.fold(net, params, stats[res], res)
    blobs, int8_accuracy = {}, None
    if 'jax' in formats:
      blobs['jax'] = export_jax(net, folded, res, mean, std, platforms)
    if 'onnx' in formats or int8_data:
      blobs['onnx'] = export_onnx(net, folded, res, mean, std, f'RS-{net.arch} at {res}x{res}')
    if int8_data:
      blobs['onnx_int8'], int8_accuracy = int8_data.quantize(blobs['onnx'], res)
    files = {}
    for kind in formats:
      name = f'{res}px.{SUFFIX[kind]}'
      with open(os.path.join(dst, name), 'wb') as f:
        f.write(blobs[kind])
      files[kind] = {'file': name, 'sha256': deploy.sha256(os.path.join(dst, name)),
                     'bytes': len(blobs[kind])}
    row = accuracy.get(res, {})
    rows.append({'resolution': res, 'trained': res in net.resolutions, 'macs': net.macs(res),
                 'params': parameter_count(folded), 'top1': row.get('top1'),
                 'top5': row.get('top5'), 'files': files})
    log(f'exported {res}px: ' + ', '.join(f'{k} {v["bytes"] / 1e6:.1f} MB'
                                          for k, v in files.items()))
    if int8_accuracy:
      rows[-1]['int8'] = int8_accuracy
      log(f'  int8 at {res}px: ' + (
          f"top-1 {int8_accuracy['top1']:.2f}% (float32 {int8_accuracy['float32_top1']:.2f}%), "
          if int8_data.labelled else '') +
          f"top-1 class that of float32 on {int8_accuracy['top1_agreement']:.2f}% of "
          f"{int8_accuracy['images']} validation images; logits' relative RMS error "
          f"{int8_accuracy['logits_relative_rms_error']:.3f}")

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
  if int8_data:
    manifest['int8'] = int8_data.about
  deploy.write_manifest(dst, manifest)
  return manifest


def _resolution_list(text: str) -> List[int]:
  try:
    values = [int(r) for r in text.split(',') if r.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected resolutions such as 224,160, got {text!r}'
                                     ) from None
  if not values or any(r <= 0 for r in values):
    raise argparse.ArgumentTypeError(f'expected positive resolutions, got {text!r}')
  return values


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rsnets_jax.export',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a work directory, checkpoint or converted model (rsnets_jax.load)')
  parser.add_argument('--dst', required=True, help='the directory to write')
  parser.add_argument('--resolutions', type=_resolution_list, default=None,
                      help='comma-separated; default: every resolution the network runs at')
  parser.add_argument('--which', choices=('latest', 'best'), default='latest',
                      help="a work directory's checkpoint to export")
  parser.add_argument('--platforms', type=lambda t: [p for p in t.split(',') if p], default=None,
                      help='JAX platforms of the artifacts, e.g. cpu,cuda,tpu (default: this one)')
  parser.add_argument('--formats', type=lambda t: [p for p in t.split(',') if p],
                      default=list(DEFAULT_FORMATS),
                      help=f'some of {",".join(FORMATS)} (default: {",".join(DEFAULT_FORMATS)})')
  parser.add_argument('--class-names', default=None,
                      help='a text file with one class name per line, in label order')
  parser.add_argument('--data-dir', default=None,
                      help="onnx_int8: the data set's folder in place of the run's (a converted "
                           "model: class folders in DIR/train and DIR/val)")
  parser.add_argument('--calibration-images', type=int, default=int8.DEFAULT_CALIBRATION_IMAGES,
                      help='onnx_int8: training images that set the activation ranges')
  parser.add_argument('--eval-images', type=int, default=0,
                      help='onnx_int8: validation images to measure it on (0: all)')
  args = parser.parse_args(argv)

  def body():
    manifest = export_model(args.workdir, args.dst, args.resolutions, args.which, args.platforms,
                            args.formats, args.class_names, args.data_dir,
                            args.calibration_images, args.eval_images)
    print(f'wrote {len(manifest["resolutions"])} resolutions of RS-{manifest["arch"]} to '
          f'{os.path.abspath(args.dst)}')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
