"""The Imagenette comparison (experiments/imagenette/): a driver of the product's loop, end to end
on a tiny folder of generated photographs, resumable; and its report's rule that turns small
differences into ties."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, 'experiments', 'imagenette')


def load(name):
  spec = importlib.util.spec_from_file_location(f'imagenette_{name}', os.path.join(HERE, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, HERE)  # run.py imports report
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(HERE)
  return module


report = load('report')
run = load('run')


def test_balanced_subset_spreads_over_the_sorted_list():
  np.testing.assert_array_equal(run.balanced_subset(10, 0), np.arange(10))
  np.testing.assert_array_equal(run.balanced_subset(10, 5), [0, 2, 4, 7, 9])


def _table(top1_by_res, per_seed=None):
  rows = []
  for res, top1 in top1_by_res.items():
    row = {'resolution': res, 'macs': res, 'trained': True, 'top1': top1, 'top5': None}
    if per_seed:
      row['top1_per_seed'] = per_seed[res]
      row['top1_spread'] = max(per_seed[res]) - min(per_seed[res])
    rows.append(row)
  return {'rows': rows, 'seeds': [0, 1] if per_seed else [0]}


def test_differences_within_the_seed_spread_are_ties():
  tables = {
      'inets': _table({32: 50.0, 16: 40.0}, {32: [49.0, 51.0], 16: [39.5, 40.5]}),
      'ens_topdown': _table({32: 51.5, 16: 42.0}, {32: [51.0, 52.0], 16: [41.9, 42.1]}),
  }
  verdicts = {x['resolution']: x for x in report.compare(tables, (32, 16))}
  assert verdicts[32]['verdict'] == 'tie' and verdicts[32]['seed_spread'] == 2.0
  assert verdicts[16]['verdict'] == 'a better' and verdicts[16]['holds']
  assert abs(verdicts[16]['delta'] - 2.0) < 1e-9


def make_photos(root, classes=2, per_class=8, size=24):
  """Class k: a bright square in corner k on noise, saved as JPEG in class folders."""
  rng = np.random.default_rng(0)
  for split in ('train', 'val'):
    for k in range(classes):
      os.makedirs(root / split / f'c{k}')
      for i in range(per_class):
        image = rng.integers(0, 90, (size, size, 3))
        h = size // 2
        image[(k // 2) * h:(k // 2 + 1) * h, (k % 2) * h:(k % 2 + 1) * h] += 150
        Image.fromarray(image.astype(np.uint8)).save(root / split / f'c{k}' / f'{i}.jpg')


def test_every_row_is_a_resumable_run_of_the_product_loop(tmp_path):
  make_photos(tmp_path / 'photos')
  out = tmp_path / 'out'
  cmd = [sys.executable, 'experiments/imagenette/run.py',
         '--config=experiments/imagenette/config.py:smoke', f'--out={out}',
         f'--config.data.data_dir={tmp_path / "photos"}', '--config.model.num_classes=2',
         '--config.model.resolutions=(16, 12)', '--config.model.width=0.0625',
         '--config.data.batch_size=8', '--config.data.eval_batch_size=8',
         '--config.train_subset=0', '--config.val_subset=0', '--config.compilation_cache_dir=',
         '--config.seeds.inets=(0,)', '--config.seeds.shared_bn=()',
         '--config.seeds.private_bn=()', '--config.seeds.ens=()', '--config.seeds.ens_topdown=(0, 1)']
  env = {**os.environ, 'PYTHONPATH': ROOT}
  first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  result = json.loads((out / 'results.json').read_text())
  assert result['train_count'] == 16 and result['val_count'] == 16
  assert set(result['tables']) == {'inets', 'inet_largest', 'ens_topdown'}
  assert result['tables']['ens_topdown']['seeds'] == [0, 1]
  cross = next(r for r in result['runs'] if r['row'] == 'inet_largest')['accuracies']
  assert {'top1/16', 'top1/12'} <= set(cross)  # the I-16 network at both sizes
  assert (out / 'results.md').read_text().startswith('# Imagenette')
  # Each training is a product run: checkpoints, TensorBoard and the loop's own reports.
  for run_dir in ('inet_16/seed0', 'inet_12/seed0', 'ens_topdown/seed0', 'ens_topdown/seed1'):
    workdir = out / 'runs' / run_dir
    assert (workdir / 'checkpoints').is_dir() and (workdir / 'tensorboard').is_dir(), run_dir
    assert json.loads((workdir / 'results.json').read_text())['count'] == 16
  assert 'step 2/2' in first.stderr  # the loop's progress line: 16 images, batch 8, 1 epoch

  # The same command again finds every run finished: nothing trains, the table is the same.
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'step 1/2' not in again.stderr and again.stderr.count('already holds the final step') == 4
  rerun = json.loads((out / 'results.json').read_text())
  assert rerun['tables'] == result['tables']
