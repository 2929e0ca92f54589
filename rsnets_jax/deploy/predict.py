"""Classify images with an exported RS-Net at the resolution that fits a budget
(`python -m rsnets_jax.predict`): each image through the evaluation view of training and the
model at batch 1, one line per image."""

import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from rsnets_jax import cli, data
from rsnets_jax.deploy import manifest as manifests
from rsnets_jax.errors import ConfigError


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def top_classes(logits: np.ndarray, names: Optional[List[str]], k: int) -> List[Tuple[str, float]]:
  """The `k` most probable classes of one image's logits, as (name, probability)."""
  probs = softmax(np.asarray(logits, np.float64))
  order = np.argsort(-probs, kind='stable')[:k]
  return [(names[i] if names else f'class {i}', float(probs[i])) for i in order]


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
      with warnings.catch_warnings():
        # An image over PIL's pixel limit is refused (PIL itself refuses those over twice it),
        # not decoded with a warning.
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        with data.open_image(path) as image:
          view = data.eval_view(image, res)
    except (*data.DECODE_ERRORS, Image.DecompressionBombWarning) as e:  # a missing file too
      print(f'error: {path}: cannot read the image ({type(e).__name__}: {cli.one_line(e)})',
            file=sys.stderr)
      failed += 1
      continue
    read = time.perf_counter()
    logits = model(view[None])
    done = time.perf_counter()
    classes = ', '.join(f'{name} {100 * p:.1f}%' for name, p in top_classes(logits[0], names, top))
    print(f'{path}: {res} px, {1e3 * (done - read):.2f} ms (+{1e3 * (read - start):.2f} ms to '
          f'read): {classes}', )
  return failed
