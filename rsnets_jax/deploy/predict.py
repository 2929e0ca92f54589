"""Classify images with an exported RS-Net (`python -m rsnets_jax.predict`): at the resolution
that fits a budget, each image through the evaluation view of training and the model at batch 1
(`predict`), or each at the resolutions the anytime cascade sends it through, in batches
(`predict_cascade`, deploy/cascade.py); one line per image."""

import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from rsnets_jax import cli, data
from rsnets_jax.deploy import cascade as cascades, manifest as manifests
from rsnets_jax.deploy.cascade import softmax
from rsnets_jax.errors import ConfigError, DataError


def top_probabilities(probs: np.ndarray, names: Optional[List[str]],
                      k: int) -> List[Tuple[str, float]]:
  """The `k` most probable classes of one image's class probabilities, as (name, probability)."""
  order = np.argsort(-probs, kind='stable')[:k]
  return [(names[i] if names else f'class {i}', float(probs[i])) for i in order]


def top_classes(logits: np.ndarray, names: Optional[List[str]], k: int) -> List[Tuple[str, float]]:
  """The `k` most probable classes of one image's logits, as (name, probability)."""
  return top_probabilities(softmax(np.asarray(logits, np.float64)), names, k)


def read_image(path) -> Image.Image:
  """The decoded RGB image at `path`; a DataError naming it when it cannot be read (a missing
  file too). An image over PIL's pixel limit is refused (PIL itself refuses those over twice
  it), not decoded with a warning."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with data.open_image(path) as image:
        return image.convert('RGB')
  except (*data.DECODE_ERRORS, Image.DecompressionBombWarning) as e:
    raise DataError(f'{path}: cannot read the image ({type(e).__name__}: {cli.one_line(e)})'
                    ) from e


def pick_resolution(manifest: Dict[str, Any], resolution: Optional[int],
                    latency_ms: Optional[float], macs: Optional[float],
                    runtime: str) -> Tuple[int, str]:
  """(resolution, why) from the flags."""
  if resolution is not None:
    if latency_ms is not None or macs is not None:
      raise ConfigError('give --resolution or a budget (--latency-ms, --macs), not both')
    manifests.row(manifest, resolution)
    return resolution, 'as asked'
  res = manifests.choose_resolution(manifest, latency_ms, macs, runtime)
  if latency_ms is None and macs is None:
    return res, 'the most accurate; no budget given'
  measured = manifests.measured_latency(manifests.row(manifest, res), runtime)
  about = f', {measured:.2f} ms p90 on {runtime}' if measured is not None else ''
  return res, f'the most accurate within the budget{about}'


def predict(model_dir, images: Sequence[str], resolution: Optional[int] = None,
            latency_ms: Optional[float] = None, macs: Optional[float] = None,
            runtime: str = 'jax', top: int = 5) -> int:
  """Prints one line per image (stdout; errors on stderr); returns the number of images that
  could not be read."""
  manifest = manifests.read_manifest(model_dir)
  res, why = pick_resolution(manifest, resolution, latency_ms, macs, runtime)
  print(f'resolution {res} px ({why})', file=sys.stderr)
  model = manifests.load_runtime(model_dir, manifest, res, runtime)
  model(np.zeros((1, res, res, 3), np.uint8))  # compiles: the times below are steady-state
  names, failed = manifest.get('class_names'), 0
  for path in images:
    start = time.perf_counter()
    try:
      view = data.eval_view(read_image(path), res)
    except DataError as e:
      print(f'error: {e}', file=sys.stderr)
      failed += 1
      continue
    read = time.perf_counter()
    logits = model(view[None])
    done = time.perf_counter()
    classes = ', '.join(f'{name} {100 * p:.1f}%' for name, p in top_classes(logits[0], names, top))
    print(f'{path}: {res} px, {1e3 * (done - read):.2f} ms (+{1e3 * (read - start):.2f} ms to '
          f'read): {classes}', )
  return failed


# -- the cascade -----------------------------------------------------------------------------------

def numbers(text: Optional[str], kind, flag: str) -> Optional[Tuple]:
  """A comma-separated flag's values, or None when not given; a ConfigError when one is not a
  number of `kind`."""
  if text is None:
    return None
  try:
    return tuple(kind(v) for v in text.split(',') if v.strip())
  except ValueError:
    raise ConfigError(f'{flag} takes comma-separated numbers, got {text!r}') from None


def cascade_from_flags(model_dir, manifest: Dict[str, Any], cascade_file: Optional[str] = None,
                       resolutions: Optional[str] = None, thresholds: Optional[str] = None,
                       rule: Optional[str] = None) -> Tuple[cascades.Cascade, str]:
  """(cascade, where it came from): `resolutions` and `thresholds` as given (comma-separated,
  smallest resolution first; `rule`, default cascade.DEFAULT_RULE), else the calibration file
  (`cascade_file`, default the model directory's). Every resolution must be exported."""
  res = numbers(resolutions, int, '--cascade-resolutions')
  cuts = numbers(thresholds, float, '--thresholds')
  if (res is None) != (cuts is None):
    raise ConfigError('give --cascade-resolutions and --thresholds together (a threshold per '
                      'resolution but the largest), or neither to use the calibration file')
  if res is not None:
    if cascade_file is not None:
      raise ConfigError('give --cascade-file or --cascade-resolutions with --thresholds, not both')
    cascade = cascades.Cascade(res, cuts, cascades.rule_named(rule or cascades.DEFAULT_RULE))
    where = 'as given'
  else:
    path = cascade_file or os.path.join(os.fspath(model_dir), cascades.CASCADE_FILE)
    cascade, record = cascades.read_cascade(path)
    if rule is not None and rule != cascade.rule.name:
      raise ConfigError(f'{path} was calibrated for the rule {cascade.rule.name}; --rule '
                        f'{rule} needs its own calibration (--cascade-calibrate --rule={rule})')
    target = record.get('target', {}).get('about')
    where = f'from {path}' + (f", calibrated on {record['runtime']} for {target}"
                              if target and 'runtime' in record else '')
  for r in cascade.resolutions:
    manifests.row(manifest, r)
  return cascade, where


def predict_cascade(model_dir, images: Sequence[str], cascade: cascades.Cascade,
                    runtime: str = 'jax', batch_size: int = cascades.DEFAULT_BATCH, top: int = 5,
                    group: int = 16) -> int:
  """Prints one line per image (its resolutions and top classes; errors on stderr): the images
  read, up to `group` batches at a time, go through `cascade` on `runtime`, which makes each
  image's eval view at a resolution only when the image gets there. Returns the number of
  images that could not be read."""
  cascades.bucket_sizes(batch_size)  # checks it
  manifest = manifests.read_manifest(model_dir)
  models = cascades.load_models(model_dir, manifest, cascade.resolutions, runtime)
  names, failed, counts, seconds, done = manifest.get('class_names'), 0, None, 0.0, 0
  for start in range(0, len(images), group * batch_size):
    paths, pixels = [], []
    for path in images[start:start + group * batch_size]:
      try:
        pixels.append(read_image(path))
        paths.append(path)
      except DataError as e:
        print(f'error: {e}', file=sys.stderr)
        failed += 1
    if not paths:
      continue
    begin = time.perf_counter()
    routed = cascades.run(
        cascade, models, lambda res, idx: np.stack([data.eval_view(pixels[i], res) for i in idx]),
        len(paths), batch_size)
    seconds += time.perf_counter() - begin
    done += len(paths)
    exits = np.asarray(routed.exit_counts(len(cascade.resolutions)))
    counts = exits if counts is None else counts + exits
    for path, stage, probs in zip(paths, routed.stage, routed.probs):
      went = ' -> '.join(str(r) for r in cascade.resolutions[:stage + 1])
      classes = ', '.join(f'{name} {100 * p:.1f}%' for name, p in
                          top_probabilities(probs, names, top))
      print(f'{path}: {went} px: {classes}')
  if done:
    left = ', '.join(f'{r} px {c}' for r, c in zip(cascade.resolutions, counts))
    print(f'{done} images in {1e3 * seconds:.1f} ms ({1e3 * seconds / done:.2f} ms per image, '
          f'views and first-call compilation included); left the cascade at {left}',
          file=sys.stderr)
  return failed
