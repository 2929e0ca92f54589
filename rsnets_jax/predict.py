"""Command line: classify images with an exported RS-Net at the resolution that fits a budget.

    python -m rsnets_jax.predict --model=D [--latency-ms=5] [--macs=300e6] [--resolution=160]
        [--runtime=jax] [--top=5] photo1.jpg photo2.jpg ...

The resolution is `--resolution` when given, else `deploy.choose_resolution`: the most accurate
one whose batch-1 p90 latency measured by `python -m rsnets_jax.profile` on `--runtime` is at most
`--latency-ms` and whose MACs are at most `--macs` (with neither, the most accurate). Each image
goes through the eval view of training (`rsnets_jax.data.eval_view`) and the model at batch 1; one
line per image gives the resolution, the model's time, the time to read the image and make its
view, and the top classes with their probabilities. An image that cannot be read gets one
`error:` line on stderr and the others still run; the exit status is then 1.
"""
import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rsnets_jax import cli, data, deploy
from rsnets_jax.errors import ConfigError, DataError


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
    deploy.row(manifest, resolution)
    return resolution, 'as asked'
  res = deploy.choose_resolution(manifest, latency_ms, macs, runtime)
  if latency_ms is None and macs is None:
    return res, 'the most accurate; no budget given'
  measured = deploy.measured_latency(deploy.row(manifest, res), runtime)
  about = f', {measured:.2f} ms p90 on {runtime}' if measured is not None else ''
  return res, f'the most accurate within the budget{about}'


def predict(model_dir, images: Sequence[str], resolution: Optional[int] = None,
            latency_ms: Optional[float] = None, macs: Optional[float] = None,
            runtime: str = 'jax', top: int = 5) -> int:
  """Prints one line per image (stdout; errors on stderr); returns the number of images that
  could not be read."""
  manifest = deploy.read_manifest(model_dir)
  res, why = pick_resolution(manifest, resolution, latency_ms, macs, runtime)
  print(f'resolution {res} px ({why})', file=sys.stderr)
  model = deploy.load_runtime(model_dir, manifest, res, runtime)
  model(np.zeros((1, res, res, 3), np.uint8))  # compiles: the times below are steady-state
  names, failed = manifest.get('class_names'), 0
  for path in images:
    start = time.perf_counter()
    try:
      with data.open_image(path) as image:
        view = data.eval_view(image, res)
    except data.DECODE_ERRORS as e:  # includes a missing file (OSError)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m rsnets_jax.predict',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True, help='a directory written by rsnets_jax.export')
  parser.add_argument('--latency-ms', type=float, default=None,
                      help='budget: batch-1 p90 latency measured by rsnets_jax.profile')
  parser.add_argument('--macs', type=float, default=None, help='budget: MACs per image')
  parser.add_argument('--resolution', type=int, default=None, help='this resolution, no budget')
  parser.add_argument('--runtime', choices=deploy.RUNTIMES, default='jax')
  parser.add_argument('--top', type=int, default=5, help='classes printed per image')
  parser.add_argument('images', nargs='+', help='image files (JPEG, PNG, ...)')
  args = parser.parse_args(argv)

  def body():
    failed = predict(args.model, args.images, args.resolution, args.latency_ms, args.macs,
                     args.runtime, args.top)
    if failed:
      raise DataError(f'{failed} of {len(args.images)} images could not be read')
  return cli.run_command(body, prog=parser.prog)


if __name__ == '__main__':
  sys.exit(main())
