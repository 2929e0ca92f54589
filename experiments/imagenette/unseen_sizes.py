"""Why added resolutions landed below their trained neighbours, measured: one table, each row a
change from the earlier procedure for adding a size ("today": BatchNorm affine parameters copied
from the nearest trained size, statistics re-estimated from training crops, zero padding), and the
product's `rsnets_jax.add_resolution` as it is now.

    PYTHONPATH=. python experiments/imagenette/unseen_sizes.py \
        --config=experiments/imagenette/config.py:cpu_tuned --config.data.data_dir=DIR \
        --workdir=runs/imagenette/cpu_tuned/runs/ens_topdown/seed0 --workdir=... \
        --out=runs/imagenette/unseen_sizes

For every RS-Net `--workdir` (one per seed) and every row, every even size between the smallest
and the largest trained one that is not trained is added, and every size is evaluated on the
whole validation set (its views made once, shared by the rows). Rows:
  today            affine from the nearest trained size (ties to the larger), statistics: the
                   mean over batches of train-mode batch moments, from --num_images training crops
  affine_smaller   affine from the smaller trained neighbour
  affine_larger    affine from the larger trained neighbour
  affine_interp    affine interpolated linearly (in pixels) between the two neighbours
  stats_interp     no re-estimation: the neighbours' running statistics interpolated as the affine
  stats_eval_views statistics from the evaluation views of training images, not training crops
  stats_pooled     pooled moments (the variance of the batch means added) instead of the mean of
                   per-batch moments
  stats_4x         four times as many calibration images
  recal_trained    the trained sizes themselves re-estimated the same way (a check of the method)
  same_grid        sizes 1 px below a trained size (63, 55, ...: the same feature-map sizes at
                   every stage) added as today: the odd-width hypothesis
  even_maps        as today, and at an added size every strided convolution whose input was even
                   at every trained size gets an odd input made even by repeating its last row
                   and column (the trained sizes' last windows never see zero padding there):
                   RSNet.added_padding='edge'
  even_maps_grid   the same_grid sizes with even_maps
  even_maps_interp even_maps with the affine interpolated
  even_maps_eval_views  even_maps with statistics from evaluation views
  recal_trained_eval_views  the trained sizes re-estimated from evaluation views
  add_resolution   the product's default (`rsnets_jax.add_resolution` on
                   `data.recalibration_batches`): what the table led to, measured through the API
                   (edge padding, evaluation views, affine interpolated between the neighbours)
  add_resolution_nearest  the same with affine='nearest' (the product's default until the
                   between-size training was measured)
On an RS-Net trained with `between_resolutions` (experiments/imagenette/config.py:cpu_between) the
add_resolution rows are the ones that apply; `--figure_with=results.json` of such a call draws its
add_resolution row beside this call's.
Writes results.json, results.md (mean ± std over the seeds) and accuracy_vs_macs.png (today's
procedure against the product's default, every size) to --out. `--also=results.json` of an
earlier call adds the rows it measured on the same RS-Nets to the table.
"""
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Dict, List, Sequence

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax import checkpoints, cli, data
from rsnets_jax.data import folder, preprocess
from rsnets_jax.models import RESOLUTION_KEY
from rsnets_jax.train import evaluate, recalibrate, sharding

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import between_sizes  # noqa: E402  pylint: disable=wrong-import-position

ROWS = ('today', 'affine_smaller', 'affine_larger', 'affine_interp', 'stats_interp',
        'stats_eval_views', 'stats_pooled', 'stats_4x', 'recal_trained', 'same_grid',
        'even_maps', 'even_maps_grid', 'even_maps_interp', 'even_maps_eval_views',
        'recal_trained_eval_views', 'add_resolution', 'add_resolution_nearest')


def neighbours(trained: Sequence[int], res: int):
  """(smaller, larger) trained sizes around `res`."""
  return max(r for r in trained if r < res), min(r for r in trained if r > res)


def line_in_macs(top1: Dict[int, float], macs: Dict[int, float], trained: Sequence[int],
                 res: int) -> float:
  """The top-1 at `res` on the straight line, in MACs, between its two trained neighbours'."""
  small, large = neighbours(trained, res)
  w = (macs[res] - macs[small]) / (macs[large] - macs[small])
  return (1 - w) * top1[small] + w * top1[large]


def interpolate(tree_a, tree_b, weight_b: float):
  return jax.tree.map(lambda a, b: (1 - weight_b) * a + weight_b * b, tree_a, tree_b)


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5))
def _batch_moments(net, params, res, images, mean, std):
  x = preprocess.to_float(preprocess.resize(images.astype(jnp.float32), res), mean, std)
  return net.batch_moments(params, x)


def moments(net, params, res, batches, mean, std):
  """Per batch, every BatchNorm's train-mode batch mean and variance at `res`."""
  return [_batch_moments(net, params, res, b, mean, std) for b in batches]


def statistics(per_batch, pooled: bool):
  """Running statistics from per-batch moments: their mean (PyTorch's recalibration), or the
  moments of the pooled images (the variance of the batch means added)."""
  means = jax.tree.map(lambda *m: jnp.mean(jnp.stack(m), 0), *per_batch)
  if not pooled:
    return means
  def pooled_var(node_list):
    stacked_mean = jnp.stack([n['mean'] for n in node_list])
    stacked_var = jnp.stack([n['var'] for n in node_list])
    return {'mean': stacked_mean.mean(0),
            'var': stacked_var.mean(0) + stacked_mean.var(0)}
  is_bn = lambda n: isinstance(n, dict) and set(n) == {'mean', 'var'}  # noqa: E731
  return jax.tree.map(lambda *nodes: pooled_var(nodes), *per_batch, is_leaf=is_bn)


def row_network(row, net, params, stats, sizes, calibration, eval_view_batches, config):
  """(net2, params2, stats2) with `sizes` added the way `row` says."""
  trained = net.resolutions
  mean, std = preprocess.input_normalisation(config.data)
  net2 = dataclasses.replace(net, extra_resolutions=tuple(sizes),
                             added_padding='edge' if row.startswith('even_maps') else 'zeros')
  params2, stats2 = params, dict(stats)
  for res in sizes:  # every size's affine first: the network declares them all
    small, large = neighbours(trained, res)
    w = (res - small) / (large - small)
    source = recalibrate.nearest_resolution(trained, res)
    if row == 'affine_smaller':
      source = small
    elif row == 'affine_larger':
      source = large
    if row in ('affine_interp', 'stats_interp', 'even_maps_interp'):
      params2 = recalibrate.blended_affine(params2, {small: 1 - w, large: w}, res)
    else:
      params2 = recalibrate.blended_affine(params2, {source: 1.0}, res)
  for res in sizes:
    small, large = neighbours(trained, res)
    w = (res - small) / (large - small)
    if row == 'stats_interp':
      s = interpolate(net.check_stats(stats[small], small), net.check_stats(stats[large], large),
                      w)
    else:
      batches = (eval_view_batches[res] if row.endswith('eval_views') else
                 calibration['4x' if row == 'stats_4x' else 'default'])
      s = statistics(moments(net2, params2, res, batches, mean, std), row == 'stats_pooled')
    stats2[res] = {RESOLUTION_KEY: jnp.int32(res), **s}
  return net2, params2, stats2


def recalibrated_trained(net, params, stats, batches, config):
  """`stats` with each trained size re-estimated from `batches[res]`."""
  mean, std = preprocess.input_normalisation(config.data)
  out = dict(stats)
  for res in net.resolutions:
    s = statistics(moments(net, params, res, batches[res], mean, std), False)
    out[res] = {RESOLUTION_KEY: jnp.int32(res), **s}
  return out


def run(config, workdirs, out, num_images, rows=ROWS, also=None, figure_with=None):
  start = time.time()
  config = config.copy_and_resolve_references()
  config.data.num_workers = 0
  train = data.DecodedSource(folder.FolderSource(config.data.data_dir, 'train'),
                             config.data.read_threads)
  val = data.DecodedSource(folder.FolderSource(config.data.data_dir, 'val'),
                           config.data.read_threads)
  trained = tuple(config.model.resolutions)
  sizes = list(between_sizes(trained))
  same_grid = [r - 1 for r in trained[:-1]]
  everything = sorted(set(trained) | set(sizes) | set(same_grid), reverse=True)
  mesh = sharding.make_mesh()
  eval_sets = list(data.eval_batches(config, everything, source=val))  # views made once
  # Calibration images: training crops at the largest trained size (as add_resolutions makes
  # them), and for one row the evaluation views of training images.
  crops_config = config.copy_and_resolve_references()
  crops_config.model.resolutions = trained
  batch = config.data.batch_size

  def crops(n):
    it = data.train_iterator(crops_config, source=train)
    return [next(it)['image'] for _ in range(-(-n // batch))]
  calibration = {'default': crops(num_images), '4x': crops(4 * num_images)}
  rng = np.random.default_rng(0)
  subset = [train[int(i)] for i in rng.permutation(len(train))[:num_images]]
  view_config = config.copy_and_resolve_references()
  view_config.data.eval_batch_size = batch
  eval_view_batches = {}
  for b in data.eval_batches(view_config, sorted(set(sizes) | set(trained)), source=subset):
    for res in sorted(set(sizes) | set(trained)):
      eval_view_batches.setdefault(res, []).append(b['images'][res][np.asarray(b['mask'])])
  if any(row.startswith('add_resolution') for row in rows):
    product_views = data.recalibration_batches(crops_config, tuple(trained) + tuple(sizes),
                                               num_images)

  results: Dict[str, List[Dict[str, float]]] = {row: [] for row in rows}
  for workdir in workdirs:
    net, params, stats = checkpoints.load(workdir)
    for row in rows:
      if row in ('recal_trained', 'recal_trained_eval_views'):
        batches = ({r: eval_view_batches[r] for r in trained} if row.endswith('eval_views') else
                   {r: calibration['default'] for r in trained})
        net2, params2, stats2 = net, params, recalibrated_trained(net, params, stats, batches,
                                                                  config)
      elif row.startswith('add_resolution'):
        mean, std = preprocess.input_normalisation(config.data)
        affine = 'nearest' if row == 'add_resolution_nearest' else recalibrate.DEFAULT_AFFINE
        net2, params2, stats2 = net, params, stats
        for res in sizes:
          net2, params2, stats2 = recalibrate.add_resolution(net2, params2, stats2, res,
                                                             *product_views, mean, std,
                                                             affine=affine)
      else:
        added = same_grid if row in ('same_grid', 'even_maps_grid') else sizes
        net2, params2, stats2 = row_network(row if row != 'same_grid' else 'today', net, params,
                                            stats, added, calibration, eval_view_batches, config)
      p, s = sharding.replicate((params2, stats2), mesh)
      accuracies = evaluate.run_eval(config, net2, p, s, mesh, eval_sets)
      results[row].append({k: v for k, v in accuracies.items() if k.startswith('top1/')})
      print(f'{workdir} {row}: ' + ' '.join(
          f"{r}:{accuracies[f'top1/{r}']:.2f}" for r in net2.all_resolutions), flush=True)
  report = {'trained': trained, 'sizes': sizes, 'same_grid': same_grid, 'workdirs': workdirs,
            'num_images': num_images, 'macs': {str(r): net.macs(r) for r in everything},
            'results': results, 'command': ' '.join(sys.argv),
            'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'wall_s': round(time.time() - start, 1)}
  if also:
    report = merged(report, also)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown(report))
  others = []
  if figure_with:
    with open(figure_with) as f:
      others.append((json.load(f), 'add_resolution', BETWEEN_LABEL))
  figure(report, os.path.join(out, 'accuracy_vs_macs.png'), others=others)
  return report


def summary(report, row) -> Dict[str, List[float]]:
  """Per seed: the mean gap of the added sizes to their smaller neighbour, to the straight line
  in MACs between their neighbours, how many are at or above the smaller neighbour and how many
  within 0.5 points of the line (the issue's goal); the recal_trained rows: the largest change of
  a trained size against `today`'s (the checkpoint's statistics)."""
  trained, macs = tuple(report['trained']), {int(k): v for k, v in report['macs'].items()}
  sizes = report['same_grid'] if row in ('same_grid', 'even_maps_grid') else report['sizes']
  out = {'to_smaller': [], 'to_line': [], 'at_or_above': [], 'within_half': [],
         'trained_change': []}
  for seed, acc in enumerate(report['results'][row]):
    top1 = {int(k.split('/')[1]): v for k, v in acc.items() if k.split('/')[1].isdigit()}
    if row.startswith('recal_trained'):
      base = report['results']['today'][seed]
      ref = {int(k.split('/')[1]): v for k, v in base.items() if k.split('/')[1].isdigit()}
      out['trained_change'].append(max(abs(top1[r] - ref[r]) for r in trained))
      continue
    gaps, lines, above, within = [], [], 0, 0
    for res in sizes:
      small = neighbours(trained, res)[0]
      line = line_in_macs(top1, macs, trained, res)
      # A same-grid size against the trained size whose feature-map sizes it has (1 px more).
      reference = top1[res + 1] if row in ('same_grid', 'even_maps_grid') else top1[small]
      gaps.append(top1[res] - reference)
      lines.append(top1[res] - line)
      above += top1[res] >= reference
      within += abs(top1[res] - line) <= 0.5
    out['to_smaller'].append(float(np.mean(gaps)))
    out['to_line'].append(float(np.mean(lines)))
    out['at_or_above'].append(above)
    out['within_half'].append(within)
  return out


def goal(report, row) -> Dict[str, object]:
  """The issue's goal on the mean over the RS-Nets: the added sizes below their smaller
  neighbour, those off the line in MACs by more than 0.5 points, and where the curve of all sizes
  falls as MACs rise."""
  trained, macs = tuple(report['trained']), {int(k): v for k, v in report['macs'].items()}
  mean = {}
  for res in sorted(set(trained) | set(report['sizes'])):
    values = [acc[f'top1/{res}'] for acc in report['results'][row] if f'top1/{res}' in acc]
    if values:
      mean[res] = float(np.mean(values))
  below, off_line = [], []
  for res in report['sizes']:
    small = neighbours(trained, res)[0]
    line = line_in_macs(mean, macs, trained, res)
    if mean[res] < mean[small]:
      below.append(res)
    if abs(mean[res] - line) > 0.5:
      off_line.append(res)
  order = sorted(mean, key=lambda r: macs[r])
  falls = [f'{a}->{b}' for a, b in zip(order, order[1:]) if mean[b] < mean[a]]
  return {'below_smaller': below, 'off_line': off_line, 'falls': falls}


def _cell(values, digits=2):
  if not values:
    return '-'
  if len(values) == 1:
    return f'{values[0]:.{digits}f}'
  return f'{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}'


def markdown(report) -> str:
  n = len(report['workdirs'])
  lines = [f"Added sizes {report['sizes']} between the trained {list(report['trained'])}; "
           f"{n} RS-Nets (mean ± std over them); {report['num_images']} calibration images; "
           f"{report['date']}, {report['wall_s'] / 60:.1f} min.", '',
           '| row | mean top-1 - smaller neighbour (same_grid: - the trained size of its grid) | '
           'mean top-1 - line in MACs | sizes at or above it | sizes within 0.5 of the line | '
           'trained sizes re-estimated: largest change |',
           '| --- | --- | --- | --- | --- | --- |']
  rows = [row for row in ROWS if row in report['results']]
  for row in rows:
    s = summary(report, row)
    count = len(report['same_grid'] if row in ('same_grid', 'even_maps_grid') else
                report['sizes'])
    lines.append(f"| {row} | {_cell(s['to_smaller'])} | {_cell(s['to_line'])} | "
                 f"{_cell(s['at_or_above'], 1)} of {count} | {_cell(s['within_half'], 1)} of "
                 f"{count} | {_cell(s['trained_change'])} |")
  lines += ['', 'The goal on the mean curve (every added size at or above its smaller neighbour '
            'and within 0.5 of the line in MACs; the curve rising with MACs):', '']
  for row in rows:
    if row.startswith(('recal_trained', 'same_grid', 'even_maps_grid')):
      continue
    g = goal(report, row)
    lines.append(f"- {row}: below the smaller neighbour {g['below_smaller'] or 'none'}; off the "
                 f"line {g['off_line'] or 'none'}; falls {g['falls'] or 'none'}")
  lines += ['', 'Top-1 per size, mean over the RS-Nets:', '',
            '| size | MACs | ' + ' | '.join(rows) + ' |', '|' + ' --- |' * (len(rows) + 2)]
  trained = tuple(report['trained'])
  for res in sorted({int(r) for r in report['macs']}, reverse=True):
    cells = []
    for row in rows:
      values = [acc.get(f'top1/{res}') for acc in report['results'][row]]
      cells.append(_cell([v for v in values if v is not None]))
    mark = ' (trained)' if res in trained else ''
    lines.append(f"| {res}{mark} | {report['macs'][str(res)] / 1e6:.2f}M | " + ' | '.join(cells) +
                 ' |')
  return '\n'.join(lines) + '\n'


def figure(report, path, rows=('today', 'add_resolution'), others=()):
  """Top-1 (mean ± std over the RS-Nets) against MACs at every size, one line per row of `rows`
  measured, and per (report, row, label) of `others` (other RS-Nets); the trained sizes ringed."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  trained = tuple(report['trained'])
  sizes = sorted(set(trained) | set(report['sizes']))
  fig, ax = plt.subplots(figsize=(8, 5))
  lines = [(report, row, LABELS.get(row, row)) for row in rows if row in report['results']]
  for source, row, label in lines + list(others):
    values = [[acc[f'top1/{res}'] for acc in source['results'][row]] for res in sizes]
    macs = [report['macs'][str(res)] / 1e6 for res in sizes]
    ax.errorbar(macs, [np.mean(v) for v in values], [np.std(v, ddof=1) for v in values],
                marker='o', ms=4, capsize=2, label=label)
    for res, x, v in zip(sizes, macs, values):
      if res in trained:
        ax.plot(x, np.mean(v), 'o', ms=11, mfc='none', mec='black')
  for res in trained:
    ax.annotate(str(res), (report['macs'][str(res)] / 1e6, ax.get_ylim()[0]), fontsize=8,
                ha='center', va='bottom')
  ax.set_xlabel('MACs per image (millions)')
  ax.set_ylabel('top-1 (%)')
  ax.set_title(f"every even size {min(sizes)}-{max(sizes)} px, {len(report['workdirs'])} RS-Nets "
               f"(ringed: trained)")
  ax.grid(alpha=0.3)
  ax.legend(loc='upper left', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


LABELS = {'today': 'added as before (zero padding, statistics from training crops)',
          'add_resolution': 'added by add_resolution now (edge padding, evaluation views, '
                            'interpolated affine)'}
BETWEEN_LABEL = 'RS-Nets trained with the sizes between, added by add_resolution'


def merged(report, earlier_path):
  """`report` with the rows that only the report at `earlier_path` measured, on the same RS-Nets."""
  with open(earlier_path) as f:
    earlier = json.load(f)
  if earlier['workdirs'] != report['workdirs'] or earlier['trained'] != list(report['trained']):
    raise ValueError(f'{earlier_path} measured other RS-Nets: {earlier["workdirs"]}')
  report = dict(report)
  report['results'] = {**{k: v for k, v in earlier['results'].items()
                          if k not in report['results']}, **report['results']}
  report['macs'] = {**earlier['macs'], **report['macs']}
  report['earlier'] = {'path': earlier_path, 'date': earlier.get('date'),
                       'rows': sorted(earlier['results'])}
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_flag(FLAGS)
  cli.setup_logging()
  sys.exit(cli.run_command(lambda: print(markdown(run(config, FLAGS.workdir, FLAGS.out,
                                                       FLAGS.num_images, FLAGS.rows,
                                                       FLAGS.also, FLAGS.figure_with)))))


if __name__ == '__main__':
  cli.restart_with_huge_pages()
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', None, 'experiments/imagenette/config.py:<variant>',
                                  lock_config=True)
  flags.DEFINE_multi_string('workdir', None, 'An RS-Net run (repeatable: one per seed).')
  flags.DEFINE_string('out', 'runs/imagenette/unseen_sizes', 'Where the reports go.')
  flags.DEFINE_integer('num_images', recalibrate.DEFAULT_NUM_IMAGES,
                       'Training images that re-estimate each added size.', lower_bound=1)
  flags.DEFINE_list('rows', list(ROWS), 'The rows to measure (today first).')
  flags.DEFINE_string('also', None, 'results.json of an earlier call on the same RS-Nets: its '
                      'other rows join the table.')
  flags.DEFINE_string('figure_with', None, 'results.json of a call on RS-Nets trained with '
                      'between_resolutions: its add_resolution row joins the figure.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=cli.parse_absl_flags)
