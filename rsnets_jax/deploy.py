"""An exported RS-Net at run time: its manifest, a runtime per resolution, and the resolution that
fits a budget.

`python -m rsnets_jax.export` writes a model directory: one JAX artifact and one ONNX model per
resolution (and, when asked, an int8 ONNX model) and `manifest.json`, whose `resolutions` rows hold
each resolution's MACs, accuracy, files and, once `python -m rsnets_jax.profile` has run, its
measured latency per runtime. `choose_resolution` reads those rows; `load_runtime` gives one
resolution's function from uint8 images to logits, in JAX (no other dependency) or in onnxruntime
(`pip install .[deploy]`), float32 or int8.
"""
import hashlib
import json
import os
from typing import Any, Callable, Dict, Optional

import numpy as np

from rsnets_jax.errors import CheckpointError, ConfigError

MANIFEST = 'manifest.json'
RUNTIMES = ('jax', 'onnxruntime', 'onnxruntime_int8')
# which of a row's files a runtime runs
FILE_KIND = {'jax': 'jax', 'onnxruntime': 'onnx', 'onnxruntime_int8': 'onnx_int8'}
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
  raise ConfigError(f'the model has no resolution {res}; it has {have}')


def top1(r: Dict[str, Any], runtime: str) -> Optional[float]:
  """A row's top-1 (%) as `runtime` runs it: the int8 model's own where it was measured, else the
  network's evaluation (None when there was none, or for an int8 model measured without labels)."""
  if runtime == 'onnxruntime_int8':
    return r.get('int8', {}).get('top1')
  return r.get('top1')


def measured_latency(r: Dict[str, Any], runtime: str) -> Optional[float]:
  """A row's measured batch-1 latency on `runtime` for budgets, or None when not profiled."""
  measured = r.get('latency', {}).get(runtime)
  return None if measured is None else measured[BUDGET_PERCENTILE]


# -- choosing by budget ----------------------------------------------------------------------------

def choose_resolution(manifest: Dict[str, Any], latency_ms: Optional[float] = None,
                      macs: Optional[float] = None, runtime: str = 'jax') -> int:
  """The most accurate resolution whose measured batch-1 latency on `runtime` (its p90, in ms)
  is at most `latency_ms` and whose MACs are at most `macs`; with no budget, the most accurate.

  Accuracy is the manifest's top-1 of what `runtime` runs (`top1`). When a resolution in the
  running has none (a network with no evaluation, or an int8 model measured without labels), the
  larger resolution counts as the more accurate, the RS-Net's trade-off. Equal
  top-1: the cheaper one (lower latency, then fewer MACs). A ConfigError when nothing fits or
  the latency was never measured on `runtime`.
  """
  rows = manifest['resolutions']
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
  if all(top1(r, runtime) is not None for r in fits):
    best = max(fits, key=lambda r: (top1(r, runtime), -(measured_latency(r, runtime) or 0.0),
                                    -r['macs']))
  else:
    best = max(fits, key=lambda r: r['resolution'])
  return int(best['resolution'])


# -- running one resolution ------------------------------------------------------------------------

def model_file(model_dir, r: Dict[str, Any], runtime: str) -> str:
  """The path of the file `runtime` runs for row `r`, after checking it against its checksum."""
  if runtime not in RUNTIMES:
    raise ConfigError(f'runtime must be one of {RUNTIMES}, got {runtime!r}')
  entry = r['files'].get(FILE_KIND[runtime])
  if entry is None:
    raise ConfigError(f'resolution {r["resolution"]} was exported without a '
                      f'{FILE_KIND[runtime]} file; export it again with that format')
  path = os.path.join(os.fspath(model_dir), entry['file'])
  try:
    digest = sha256(path)
  except OSError as e:
    raise CheckpointError(f'cannot read {path}: {e}') from e
  if digest != entry['sha256']:
    raise CheckpointError(f'{path} does not match the checksum in {MANIFEST}: the file changed '
                          f'after export; export the model again')
  return path


def onnx_session(path, options=None):
  """An onnxruntime session of the ONNX model at `path` (or of the serialized model) as the
  product runs it: on CPU, with every graph optimisation (on top of `options`, e.g. profiling,
  when given)."""
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("onnxruntime is not installed: pip install -e '.[deploy]', or use the "
                      "jax runtime") from None
  options = options or onnxruntime.SessionOptions()
  options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
  return onnxruntime.InferenceSession(os.fspath(path), options,
                                      providers=['CPUExecutionProvider'])


def load_runtime(model_dir, manifest: Dict[str, Any], res: int,
                 runtime: str = 'jax') -> Callable[[np.ndarray], np.ndarray]:
  """Resolution `res`'s function from uint8 images (N, res, res, 3) to float32 logits
  (N, classes), as numpy arrays, on `runtime` (one of RUNTIMES)."""
  path = model_file(model_dir, row(manifest, res), runtime)
  if runtime == 'jax':
    import jax  # pylint: disable=import-outside-toplevel
    platforms = manifest.get('jax_platforms', [])
    if jax.default_backend() not in platforms:
      raise ConfigError(f'the JAX files were exported for {platforms}, this machine runs JAX on '
                        f'{jax.default_backend()}: export with --platforms={jax.default_backend()}')
    with open(path, 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    call = jax.jit(exported.call)
    return lambda images: np.asarray(call(images))
  return onnx_function(path)


def onnx_function(path) -> Callable[[np.ndarray], np.ndarray]:
  """uint8 images -> logits of the exported ONNX model at `path` (or serialized), in onnxruntime."""
  session = onnx_session(path)
  name = session.get_inputs()[0].name
  return lambda images: session.run(None, {name: np.asarray(images, np.uint8)})[0]
