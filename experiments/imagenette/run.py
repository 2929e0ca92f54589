"""Imagenette: the paper's comparison on real images, every row a run of the product's loop.

    PYTHONPATH=. python experiments/imagenette/run.py --config=experiments/imagenette/config.py:cpu \
        --config.data.data_dir=DIR   # Imagenette's class folders (config.py says where to get them)

Rows (config.seeds says which run, and with which seeds):
  inets        one ResNet-18 per resolution, trained and tested there (an RS-Net with a single
               resolution, no distillation); the largest one is also tested at every other size
               with its one BatchNorm (`rsnets_jax.reuse_batchnorm`), the paper's "I-224" column
  inets_lr2/5  the same at 2x and 5x the recipe's learning rate; with them the report adds
               "best-tuned I-Net per size" (the learning rate with the best mean at each size)
  shared_bn    RS-ResNet-18, one BatchNorm shared by every resolution, no distillation
  private_bn   RS-ResNet-18, private BatchNorm, no distillation (the paper's "parallel")
  ens          private BatchNorm, vanilla ensemble distillation
  ens_topdown  private BatchNorm, full ensemble distillation (the published RS-Nets)

This file only drives: the images are decoded once into memory (`data.DecodedSource`), and each
(row, seed) is `loop.train_and_evaluate` on the product's input pipeline over them, in its own work
directory under --out (`runs/<row>/seed<s>`), with checkpoints, resume, the non-finite-loss stop
and TensorBoard. Rerunning the command resumes an interrupted comparison. Rows of one seed see the
same image order and the same crop boxes (both drawn from the seed and the position in the
stream); the seed also decides the initial weights and the flips. The loop's compiled steps are
shared: a second seed of a row compiles nothing. The tables and verdicts are report.py's.

Writes results.json, results.md, accuracy_vs_macs.png, largest_at_every_size.png and claims.png
(each figure also as SVG) to --out (default runs/imagenette/<variant>).
"""
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List

from absl import app, flags
import jax
import numpy as np

import rsnets_jax
from rsnets_jax import cli, data
from rsnets_jax.data import folder
from rsnets_jax.train import evaluate, loop, sharding
from rsnets_jax.errors import DataError, TrainingError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  pylint: disable=wrong-import-position

log = logging.getLogger('rsnets_jax')


def balanced_subset(num: int, size: int) -> np.ndarray:
  """Indices of `size` examples spread evenly over a class-sorted list (all when size is 0)."""
  if not size or size >= num:
    return np.arange(num)
  return np.linspace(0, num - 1, size).round().astype(np.int64)


def load_sources(config):
  """(train, val) sources of the config's class folders, decoded into memory once."""
  if not config.data.data_dir:
    raise DataError('pass the Imagenette photos as --config.data.data_dir=DIR (class folders '
                    'DIR/train/<class>/ and DIR/val/<class>/, from '
                    'https://github.com/fastai/imagenette)')
  sources = []
  for split, subset in (('train', config.train_subset), ('val', config.val_subset)):
    images = folder.FolderSource(config.data.data_dir, split)
    if len(images.classes) != config.model.num_classes:
      raise DataError(f'{config.data.data_dir} has {len(images.classes)} classes, the config '
                      f'{config.model.num_classes}')
    records = [images[int(i)] for i in balanced_subset(len(images), subset)]
    sources.append(data.DecodedSource(records, config.data.read_threads))
  return tuple(sources)


def row_config(config, resolutions, seed: int, row: report.Row):
  """The recipe with a row's network, distillation and adjustments, at `resolutions`."""
  c = config.copy_and_resolve_references()
  c.model.resolutions = tuple(resolutions)
  c.model.shared_bn = row.shared_bn
  c.model.update(dict(row.model))
  c.distillation = row.distillation
  c.seed = seed
  if row.adjust:
    c.update_from_flattened_dict(row.adjust(c))
  return c


def train_row(config, workdir: str, train_source, val_source) -> Dict[str, Any]:
  """One training through the product's loop; its final accuracies and wall time."""
  t0 = time.perf_counter()
  accuracies = loop.train_and_evaluate(
      config, workdir, data.train_iterator(config, source=train_source),
      data.eval_batches(config, source=val_source),
      steps_per_epoch=len(train_source) // config.data.batch_size)
  if not accuracies:
    raise TrainingError(f'{workdir} stopped before its end; rerun the same command to resume')
  return {'accuracies': accuracies, 'wall_s': round(time.perf_counter() - t0, 1)}


def at_every_size(config, workdir: str, resolutions, val_source) -> Dict[str, float]:
  """The one-resolution network of `workdir` tested at every resolution with its one BatchNorm."""
  net, params, stats = rsnets_jax.load(workdir)
  for res in resolutions:
    if res not in net.all_resolutions:
      net, params, stats = rsnets_jax.reuse_batchnorm(net, params, stats, res, net.resolutions[0])
  mesh = sharding.make_mesh()
  params, stats = sharding.replicate((params, stats), mesh)
  return evaluate.run_eval(config, net, params, stats, mesh,
                       data.eval_batches(config, resolutions, source=val_source))


def train_inets(config, out: str, seed: int, train_source, val_source,
                name: str = 'inets') -> List[Dict[str, Any]]:
  """One network per resolution (seed `seed`) for I-Net row `name`; the recipe's largest is also
  tested at every other size."""
  resolutions = tuple(config.model.resolutions)
  records = []
  per_res: Dict[str, float] = {}
  wall_s = 0.0
  prefix = 'inet' if name == 'inets' else name
  for res in resolutions:
    c = row_config(config, (res,), seed, report.INET_ROWS[name])
    workdir = os.path.join(out, 'runs', f'{prefix}_{res}', f'seed{seed}')
    result = train_row(c, workdir, train_source, val_source)
    per_res.update({k: v for k, v in result['accuracies'].items() if k.endswith(f'/{res}')})
    per_res['count'] = result['accuracies']['count']
    wall_s += result['wall_s']
    if res == resolutions[0] and name == 'inets':
      cross = at_every_size(c, workdir, resolutions, val_source)
      records.append({'row': 'inet_largest', 'seed': seed, 'accuracies': cross})
      log.info('%s seed %d at every size: %s', report.largest_label(resolutions), seed,
               report.top1s(cross))
  records.append({'row': name, 'seed': seed, 'accuracies': per_res, 'wall_s': wall_s})
  log.info('%s seed %d: %s', report.INET_ROWS[name].label, seed, report.top1s(per_res))
  return records


TIMINGS = 'timings.json'  # in --out: each (row, seed)'s wall time, from the call that trained it


def run_all(config, out: str, train_source, val_source) -> List[Dict[str, Any]]:
  """Every (row, seed) of the config, seed by seed: an interrupted comparison leaves whole seeds
  of every row (paired), not every seed of the first rows. One record per training; its wall time
  is the one recorded in --out/timings.json when it first finished, so a rerun that only
  re-evaluates it reports how long it took to train."""
  resolutions = tuple(config.model.resolutions)
  timings_path = os.path.join(out, TIMINGS)
  timings = {}
  if os.path.exists(timings_path):
    with open(timings_path) as f:
      timings = json.load(f)
  records = []

  def add(new_records):
    for record in new_records:
      if 'wall_s' in record:
        key = f"{record['row']}/seed{record['seed']}"
        record['wall_s'] = timings.setdefault(key, record['wall_s'])
      records.append(record)
    os.makedirs(out, exist_ok=True)
    with open(timings_path, 'w') as f:
      json.dump(timings, f, indent=1)

  for seed in sorted({s for row in (*report.INET_ROWS, *report.RS_ROWS)
                      for s in config.seeds[row]}):
    for name in report.INET_ROWS:
      if seed in config.seeds[name]:
        add(train_inets(config, out, seed, train_source, val_source, name))
    for name, row in report.RS_ROWS.items():
      if seed not in config.seeds[name]:
        continue
      c = row_config(config, resolutions, seed, row)
      result = train_row(c, os.path.join(out, 'runs', name, f'seed{seed}'), train_source,
                         val_source)
      add([{'row': name, 'seed': seed, **result}])
      log.info('%s seed %d: %s', name, seed, report.top1s(result['accuracies']))
  return records


def run(config, out: str) -> Dict[str, Any]:
  t_start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
  resolutions = tuple(config.model.resolutions)
  train_source, val_source = load_sources(config)
  data_s = time.perf_counter() - t_start
  log.info('data: %d train, %d val images decoded in %.0f s', len(train_source), len(val_source),
           data_s)
  records = run_all(config, out, train_source, val_source)
  # MACs do not depend on BatchNorm: one network counts them all.
  ref_net = rsnets_jax.RSNet(**config.model)
  tables = report.aggregate(records, ref_net, resolutions)
  result = {
      'variant': config.variant, 'dataset': data.report_name(config.data), 'date': time.strftime('%Y-%m-%d %H:%M %Z'),
      'machine': report.machine(), 'command': ' '.join(sys.argv), 'resolutions': list(resolutions),
      'train_count': len(train_source), 'val_count': len(val_source),
      'config': config.to_dict(), 'data_s': round(data_s, 1), 'runs': records, 'tables': tables,
      'comparisons': report.compare(tables, resolutions),
  }
  result['wall_s'] = round(time.perf_counter() - t_start, 1)
  # On a shared machine the wall time depends on the neighbours; the process's CPU time does not.
  result['cpu_s'] = round(time.process_time() - cpu_start, 1)
  result['load_average'] = {'start': load_start, 'end': os.getloadavg()[0]}
  report.write_reports(out, result)
  log.info('wrote %s/results.md, results.json, accuracy_vs_macs.png (%.1f min in all)', out,
           result['wall_s'] / 60)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_flag(FLAGS)
  cli.setup_logging()
  out = FLAGS.out or os.path.join('runs', 'imagenette', config.variant)

  def body():
    print(report.markdown_report(run(config, out)))
  sys.exit(cli.run_command(body))


if __name__ == '__main__':
  cli.restart_with_huge_pages()
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', os.path.join(os.path.dirname(__file__), 'config.py')
                                  + ':cpu', 'experiments/imagenette/config.py:<gpu|cpu|smoke>',
                                  lock_config=True)
  flags.DEFINE_string('out', None, 'Where the reports go (default runs/imagenette/<variant>).')
  app.run(main, flags_parser=cli.parse_absl_flags)
