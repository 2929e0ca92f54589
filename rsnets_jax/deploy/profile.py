"""What each exported resolution costs on the machine this runs on (`python -m rsnets_jax.profile`).

For every resolution of an export and each runtime that can run it here (formats.py), on random
uint8 images: warm-up calls at batch 1 and one at the throughput batch (compilation happens
there), then timed calls at batch 1 (latency p50 and p90, ms) and at the batch (throughput,
images/s), each loop going on for at least a minimum time. The figures go into the manifest (each
row's `latency`, and `profile`: the machine, the date, the settings), latency.md (the table) and,
when the manifest has accuracies, accuracy_vs_latency.png.
"""

import datetime
import importlib.util
import os
import platform
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import numpy as np

from rsnets_jax.deploy import formats, manifest as manifests
from rsnets_jax.errors import ConfigError

TABLE = 'latency.md'
FIGURE = 'accuracy_vs_latency.png'
# Each timed loop also runs for at least this long by default: a few calls of a tiny network are
# too short for the clock and the scheduler.
MIN_SECONDS = 1.0


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def last_level_cache() -> Optional[str]:
  """The size of the CPU's largest cache (e.g. '32768K'), or None where Linux does not say: a
  batch-1 call reads every weight, from memory when they do not fit there."""
  caches = {}
  base = '/sys/devices/system/cpu/cpu0/cache'
  try:
    for index in (name for name in os.listdir(base) if name.startswith('index')):
      with open(os.path.join(base, index, 'level')) as f, \
          open(os.path.join(base, index, 'size')) as g:
        caches[int(f.read())] = g.read().strip()
  except (OSError, ValueError):
    return None
  return caches[max(caches)] if caches else None


def machine() -> Dict[str, Any]:
  """What the figures were measured on, and how busy the machine was when profiling began."""
  versions = {'jax': jax.__version__}
  if importlib.util.find_spec('onnxruntime') is not None:
    import onnxruntime  # pylint: disable=import-outside-toplevel
    versions['onnxruntime'] = onnxruntime.__version__
  cores = os.cpu_count()
  return {'cpu': cpu_name(), 'cores': cores, 'last_level_cache': last_level_cache(),
          'jax_backend': jax.default_backend(),
          'jax_device': jax.devices()[0].device_kind, 'versions': versions,
          'load_average_1min': round(os.getloadavg()[0], 2),
          'description': f'{cpu_name()}, {cores} cores, jax {jax.__version__} on '
                         f'{jax.default_backend()}' +
                         ''.join(f', {k} {v}' for k, v in versions.items() if k != 'jax')}


def measure(fn: Callable[[np.ndarray], Any], res: int, batch: int = 32, iters: int = 50,
            batch_iters: int = 5, warmup: int = 10, min_seconds: float = MIN_SECONDS,
            seed: int = 0) -> Dict[str, float]:
  """Batch-1 latency (p50, p90, mean; ms) and throughput at `batch` (images/s) of `fn` on uint8
  images (N, res, res, 3), each over at least `iters` / `batch_iters` calls and `min_seconds`;
  `fn` must return only when its result is ready (a numpy array)."""
  rng = np.random.default_rng(seed)
  one = rng.integers(0, 256, (1, res, res, 3), np.uint8)
  many = rng.integers(0, 256, (batch, res, res, 3), np.uint8)
  for _ in range(warmup):
    fn(one)
  fn(many)
  times = []
  begin = time.perf_counter()
  while len(times) < iters or time.perf_counter() - begin < min_seconds:
    start = time.perf_counter()
    fn(one)
    times.append(time.perf_counter() - start)
  calls, begin = 0, time.perf_counter()
  while calls < batch_iters or time.perf_counter() - begin < min_seconds:
    fn(many)
    calls += 1
  seconds = time.perf_counter() - begin
  times_ms = 1e3 * np.asarray(times)
  return {'p50_ms': float(np.percentile(times_ms, 50)),
          'p90_ms': float(np.percentile(times_ms, 90)), 'mean_ms': float(times_ms.mean()),
          'calls': len(times), 'batch': batch, 'batch_calls': calls,
          'throughput_img_s': batch * calls / seconds}


# -- reports ---------------------------------------------------------------------------------------

def markdown(manifest: Dict[str, Any]) -> str:
  profile = manifest['profile']
  runtimes, batch = profile['runtimes'], profile['batch']
  # The network's top-1, and that of each profiled format which measures its own (int8).
  own = [formats.by_runtime(rt) for rt in runtimes if formats.by_runtime(rt).accuracy_key]
  head = ['resolution', 'MACs', 'top-1 (%)'] + [f'{f.accuracy_key} top-1 (%)' for f in own]
  for runtime in runtimes:
    head += [f'{runtime} p50 / p90 (ms)', f'{runtime} img/s (batch {batch})']
  lines = [f"Measured {profile['date']} on {profile['machine']['description']} "
           f"(1-minute load average {profile['machine']['load_average_1min']} at the start).",
           f"Batch-1 latency over at least {profile['iters']} calls after {profile['warmup']} "
           f"warm-up calls; throughput over at least {profile['batch_iters']} calls at batch "
           f"{batch}; each for at least {profile['min_seconds']:g} s.", '',
           '| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
  for r in manifest['resolutions']:
    name = f"{r['resolution']}" + ('' if r['trained'] else ' (not trained)')
    cells = [name, f"{r['macs'] / 1e6:.1f}M"]
    for top1 in [r.get('top1')] + [f.top1(r) for f in own]:
      cells.append('-' if top1 is None else f'{top1:.2f}')
    for runtime in runtimes:
      m = r['latency'][runtime]
      cells += [f"{m['p50_ms']:.2f} / {m['p90_ms']:.2f}", f"{m['throughput_img_s']:.1f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot(manifest: Dict[str, Any], path: str) -> bool:
  """Top-1 against batch-1 p50 latency, one line per runtime with accuracies; False (nothing
  written) when no row has a top-1."""
  curves = {runtime: [r for r in manifest['resolutions']
                      if formats.by_runtime(runtime).top1(r) is not None]
            for runtime in manifest['profile']['runtimes']}
  if not any(curves.values()):
    return False
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for runtime, rows in curves.items():
    if not rows:
      continue
    points = sorted(rows, key=lambda r: r['resolution'])
    x = [r['latency'][runtime]['p50_ms'] for r in points]
    y = [formats.by_runtime(runtime).top1(r) for r in points]
    line, = ax.plot(x, y, marker='o', markersize=5, label=runtime)
    for xi, yi, r in zip(x, y, points):
      if not r['trained']:
        ax.plot(xi, yi, 'o', mfc='white', mec=line.get_color(), markersize=7)
      ax.annotate(str(r['resolution']), (xi, yi), fontsize=7, textcoords='offset points',
                  xytext=(3, -9))
  ax.set_xlabel('batch-1 latency, p50 (ms)')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(f"RS-{manifest['arch']}: accuracy vs measured latency\n"
               f"{manifest['profile']['machine']['cpu']}", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


# -- the command -----------------------------------------------------------------------------------

def profile_model(model_dir, runtimes: Optional[Sequence[str]] = None, batch: int = 32,
                  iters: int = 50, batch_iters: int = 5, warmup: int = 10,
                  min_seconds: float = MIN_SECONDS, log=print) -> Dict[str, Any]:
  """Measures every resolution of the export in `model_dir` and writes the reports there."""
  manifest = manifests.read_manifest(model_dir)
  available = manifests.runnable_runtimes(manifest)
  runtimes = list(runtimes or available)
  missing = [r for r in runtimes if r not in available]
  if missing or not runtimes:
    raise ConfigError(f'cannot run {missing or "any runtime"} here; available: {available} '
                      f"(onnxruntime: pip install -e '.[deploy]'; jax: the artifact's platforms "
                      f"{manifest.get('jax_platforms')} must include {jax.default_backend()})")
  settings = {'batch': batch, 'iters': iters, 'batch_iters': batch_iters, 'warmup': warmup}
  for name, value in settings.items():
    if value < 1:
      raise ConfigError(f'--{name.replace("_", "-")} must be at least 1, got {value}')
  about = machine()
  for r in manifest['resolutions']:
    r['latency'] = {}
    for runtime in runtimes:
      fn = manifests.load_runtime(model_dir, manifest, r['resolution'], runtime)
      r['latency'][runtime] = m = measure(fn, r['resolution'], batch, iters, batch_iters, warmup,
                                          min_seconds)
      log(f"{r['resolution']}px {runtime}: p50 {m['p50_ms']:.2f} ms, p90 {m['p90_ms']:.2f} ms, "
          f"{m['throughput_img_s']:.1f} img/s at batch {batch}")
  manifest['profile'] = {
      'machine': about, 'runtimes': runtimes, **settings, 'min_seconds': min_seconds,
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
  manifests.write_manifest(model_dir, manifest)
  with open(os.path.join(model_dir, TABLE), 'w') as f:
    f.write(markdown(manifest))
  if not plot(manifest, os.path.join(model_dir, FIGURE)):
    log(f'no top-1 in the manifest (the network was never evaluated): {FIGURE} not written')
  return manifest
