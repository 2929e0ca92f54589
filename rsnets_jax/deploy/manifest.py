"""An exported RS-Net at run time: its manifest, one resolution's function on a runtime, and the
resolution that fits a budget.

`python -m rsnets_jax.export` writes a model directory: a file per resolution and format
(formats.py) and `manifest.json`, whose `resolutions` rows hold each resolution's MACs, accuracy,
files and, once `python -m rsnets_jax.profile` has run, its measured latency per runtime.
`choose_resolution` reads those rows; `load_runtime` gives one resolution's function from uint8
images to logits.
"""
import hashlib
import json
import os
from typing import Any, Callable, Dict, Optional

import numpy as np

from rsnets_jax.deploy import formats
from rsnets_jax.errors import CheckpointError, ConfigError

MANIFEST = 'manifest.json'
# A budget is a limit on every request, so the slow tail of the measured latencies decides.
BUDGET_PERCENTILE = 'p90_ms'


def sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def read_manifest(model_dir) -> Dict[str, Any]:
  path = os.path.join(os.fspath(model_dir), MANIFEST)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f'no {MANIFEST} in {model_dir}: write one with python -m '
                          f'rsnets_jax.export --workdir=W --dst={model_dir}') from None
  except (OSError, ValueError) as e:
    raise CheckpointError(f'cannot read {path}: {e}') from e


def write_manifest(model_dir, manifest: Dict[str, Any]):
  path = os.path.join(os.fspath(model_dir), MANIFEST)
  with open(path + '.tmp', 'w') as f:
    json.dump(manifest, f, indent=1)
  os.replace(path + '.tmp', path)  # a reader never sees half a manifest


def row(manifest: Dict[str, Any], res: int) -> Dict[str, Any]:
  for r in manifest['resolutions']:
    if r['resolution'] == res:
      return r
  have = [r['resolution'] for r in manifest['resolutions']]
  raise ConfigError(f'the model has no resolution {res}; it has {have} (add one to the network '
                    f'with python -m rsnets_jax.add_resolutions, then export it again)')


def measured_latency(r: Dict[str, Any], runtime: str) -> Optional[float]:
  """A row's measured batch-1 latency on `runtime` for budgets, or None when not profiled."""
  measured = r.get('latency', {}).get(runtime)
  return None if measured is None else measured[BUDGET_PERCENTILE]


# -- choosing by budget ----------------------------------------------------------------------------

def choose_resolution(manifest: Dict[str, Any], latency_ms: Optional[float] = None,
                      macs: Optional[float] = None, runtime: str = 'jax') -> int:
  """The most accurate resolution whose measured batch-1 latency on `runtime` (its p90, in ms)
  is at most `latency_ms` and whose MACs are at most `macs`; with no budget, the most accurate.

  Accuracy is the manifest's top-1 of what `runtime` runs (its format's `top1`). When a resolution
  in the running has none (a network with no evaluation, or an int8 model measured without labels), the
  larger resolution counts as the more accurate, the RS-Net's trade-off. Equal
  top-1: the cheaper one (lower latency, then fewer MACs). A ConfigError when nothing fits or
  the latency was never measured on `runtime`.
  """
  rows = manifest['resolutions']
  top1 = formats.by_runtime(runtime).top1
  fits = rows
  if latency_ms is not None:
    missing = [r['resolution'] for r in rows if measured_latency(r, runtime) is None]
    if missing:
      raise ConfigError(f'resolutions {missing} have no measured latency on {runtime}: run '
                        f'python -m rsnets_jax.profile --model=DIR first')
    fits = [r for r in fits if measured_latency(r, runtime) <= latency_ms]
  if macs is not None:
    fits = [r for r in fits if r['macs'] <= macs]
  if not fits:
    limits = [f'{latency_ms:g} ms (p90 on {runtime})' if latency_ms is not None else '',
              f'{macs / 1e6:g}M MACs' if macs is not None else '']
    costs = [f'{r["resolution"]} px ' + (f'{measured_latency(r, runtime):.2f} ms, '
                                         if latency_ms is not None else '') +
             f'{r["macs"] / 1e6:.1f}M MACs' for r in rows]
    raise ConfigError(f'no resolution fits the budget of {" and ".join(l for l in limits if l)}: '
                      f'{"; ".join(costs)}')
  if all(top1(r) is not None for r in fits):
    best = max(fits, key=lambda r: (top1(r), -(measured_latency(r, runtime) or 0.0),
                                    -r['macs']))
  else:
    best = max(fits, key=lambda r: r['resolution'])
  return int(best['resolution'])


# -- running one resolution ------------------------------------------------------------------------

def model_file(model_dir, r: Dict[str, Any], runtime: str) -> str:
  """The path of the file `runtime` runs for row `r`, after checking it against its checksum."""
  kind = formats.by_runtime(runtime).name
  entry = r['files'].get(kind)
  if entry is None:
    raise ConfigError(f'resolution {r["resolution"]} was exported without a {kind} file; export '
                      f'it again with that format')
  path = os.path.join(os.fspath(model_dir), entry['file'])
  try:
    digest = sha256(path)
  except OSError as e:
    raise CheckpointError(f'cannot read {path}: {e}') from e
  if digest != entry['sha256']:
    raise CheckpointError(f'{path} does not match the checksum in {MANIFEST}: the file changed '
                          f'after export; export the model again')
  return path


def load_runtime(model_dir, manifest: Dict[str, Any], res: int,
                 runtime: str = 'jax') -> Callable[[np.ndarray], np.ndarray]:
  """Resolution `res`'s function from uint8 images (N, res, res, 3) to float32 logits
  (N, classes), as numpy arrays, on `runtime` (one of formats.RUNTIMES)."""
  path = model_file(model_dir, row(manifest, res), runtime)
  return formats.by_runtime(runtime).load(path, manifest)


def runnable_runtimes(manifest: Dict[str, Any]):
  """The runtimes that can run every exported resolution of `manifest` here."""
  return [f.runtime for f in formats.FORMATS.values()
          if f.runnable(manifest) and all(f.name in r['files'] for r in manifest['resolutions'])]
