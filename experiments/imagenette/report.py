"""The Imagenette comparison's report: the rows' tables (mean and spread over seeds), the paper's
claims as verdicts, and results.md / results.json / accuracy_vs_macs.png. Pure functions of the
accuracies that run.py gathers through the product's loop; only `write_reports` touches files.
"""
import dataclasses
import json
import os
import platform
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import scipy.stats

from rsnets_jax.train import reports


def _mean_loss(config) -> Dict[str, Any]:
  """The loss averaged over the S resolutions instead of summed. With SGD and coupled weight
  decay that is exactly a learning rate / S and a weight decay x S on the summed loss."""
  s = len(config.model.resolutions)
  return {'optim.learning_rate': config.optim.learning_rate / s,
          'optim.weight_decay': config.optim.weight_decay * s}


def between_sizes(resolutions) -> Tuple[int, ...]:
  """The even sizes strictly between the smallest and the largest resolution, not trained."""
  return tuple(r for r in range(max(resolutions) - 2, min(resolutions), -2)
               if r not in resolutions)


def _between(config) -> Dict[str, Any]:
  """Each step also trains one even size between the resolutions (rsnets_jax/train/step.py)."""
  return {'between_resolutions': between_sizes(config.model.resolutions)}


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  shared_bn: bool
  distillation: str
  model: Tuple[Tuple[str, Any], ...] = ()  # config.model fields that differ from the recipe's
  # Other config fields (dotted paths) that differ, as a function of the recipe's config.
  adjust: Optional[Callable[[Any], Dict[str, Any]]] = None


# The RS-Net rows; 'inets' is built per resolution from the same recipe. The quantized rows are
# the quantized reference's networks (LQ-Nets quantizers) trained with the same recipe. The
# controls change one thing of the RS-Net row, to find out why a claim fails.
RS_ROWS = {
    'shared_bn': Row('shared BN', True, 'none'),
    'private_bn': Row('private BN (parallel)', False, 'none'),
    'ens': Row('private BN + ens KD', False, 'ens'),
    'ens_topdown': Row('RS-Net (private BN + full KD)', False, 'ens_topdown'),
    'mean_loss': Row('RS-Net, loss averaged over sizes', False, 'ens_topdown', adjust=_mean_loss),
    'between': Row('RS-Net, sizes between trained too', False, 'ens_topdown', adjust=_between),
    'private_bn_mean_loss': Row('private BN, loss averaged over sizes', False, 'none',
                                adjust=_mean_loss),
    'lq_fp': Row('RS-Net, quantized layout, 32-bit', False, 'ens_topdown',
                 (('arch', 'lq_resnet18'),)),
    'w2a32': Row('RS-Net W2/A32', False, 'ens_topdown',
                 (('arch', 'lq_resnet18'), ('weight_bits', 2))),
    'w2a2': Row('RS-Net W2/A2', False, 'ens_topdown',
                (('arch', 'lq_preact_resnet18'), ('weight_bits', 2), ('activation_bits', 2))),
}
INETS_LABEL = 'I-Nets'


def _learning_rate_times(factor: float) -> Callable[[Any], Dict[str, Any]]:
  """The recipe's learning rate x `factor`, everything else (schedule, warm-up) as it is."""
  return lambda config: {'optim.learning_rate': config.optim.learning_rate * factor}


# The individually trained networks: one network per resolution (one resolution, no distillation),
# at the recipe's learning rate and, to tune the baseline as well as the method, at larger ones
# (summing five losses gives the RS-Net's shared weights a larger step than one loss gives an I-Net).
INET_ROWS = {
    'inets': Row(INETS_LABEL, False, 'none'),
    'inets_lr2': Row('I-Nets, learning rate x2', False, 'none', adjust=_learning_rate_times(2)),
    'inets_lr5': Row('I-Nets, learning rate x5', False, 'none', adjust=_learning_rate_times(5)),
}
INET_ROW = INET_ROWS['inets']
# Derived from the I-Net rows: per size, the learning rate with the best mean top-1.
BEST_INETS = 'inets_best'


def largest_label(resolutions) -> str:
  return f'I-{max(resolutions)}'


def top1s(acc: Dict[str, float]) -> str:
  """`64:45.10 56:44.02 ... ensemble:46.00`, largest first: a log line's summary."""
  names = [k.split('/')[1] for k in acc if k.startswith('top1/')]
  names.sort(key=lambda n: -int(n) if n.isdigit() else 0)  # largest first, the ensemble last
  return ' '.join(f"{n}:{acc[f'top1/{n}']:.2f}" for n in names)


def row_labels(resolutions) -> Dict[str, str]:
  return {**{k: r.label for k, r in INET_ROWS.items()},
          BEST_INETS: 'best-tuned I-Net per size', 'inet_largest': largest_label(resolutions),
          **{k: r.label for k, r in RS_ROWS.items()}}


def row_order(tables) -> List[str]:
  return [r for r in (*INET_ROWS, BEST_INETS, 'inet_largest', *RS_ROWS) if r in tables]


def aggregate(records: List[Dict[str, Any]], ref_net, resolutions) -> Dict[str, Dict[str, Any]]:
  """Per row: reports.results_table of the mean over its seeds, each accuracy with its per-seed
  values and, with two seeds or more, their sample standard deviation (`top1_std`)."""
  tables = {}
  for row in dict.fromkeys(r['row'] for r in records):
    runs = [r for r in records if r['row'] == row]
    keys = [k for k in runs[0]['accuracies'] if k.startswith('top')]
    values = {k: [r['accuracies'][k] for r in runs] for k in keys}
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    mean['count'] = runs[0]['accuracies']['count']
    trained = (max(resolutions),) if row == 'inet_largest' else tuple(resolutions)
    table = reports.results_table(ref_net, mean, resolutions, trained)
    for entry in table['rows'] + ([table['ensemble']] if 'ensemble' in table else []):
      name = 'ensemble' if entry is table.get('ensemble') else entry['resolution']
      for metric in ('top1', 'top5'):
        v = values.get(f'{metric}/{name}')
        if v is not None:
          entry[f'{metric}_per_seed'] = v
          if len(v) > 1:
            entry[f'{metric}_std'] = float(np.std(v, ddof=1))
    table['seeds'] = [r['seed'] for r in runs]
    tables[row] = table
  tuned = [r for r in INET_ROWS if r in tables]
  if len(tuned) > 1:
    tables[BEST_INETS] = best_per_size(tables, tuned, resolutions)
  return tables


def best_per_size(tables, rows: List[str], resolutions) -> Dict[str, Any]:
  """The I-Net rows' best at each size: the row (learning rate) whose mean top-1 over the seeds
  that every row ran is the highest there, with all of that row's seeds. The pick is made on the
  validation images it is then scored on, which favours the baseline: a conservative comparison
  for the RS-Net."""
  common = sorted(set.intersection(*(set(tables[r]['seeds']) for r in rows)))
  picked_rows = []
  for res in resolutions:
    def common_mean(row):
      entry = _entry(tables[row], res)
      per_seed = dict(zip(tables[row]['seeds'], entry['top1_per_seed']))
      return np.mean([per_seed[s] for s in common])
    best = max(rows, key=common_mean)
    entry = dict(_entry(tables[best], res))
    entry['picked'] = best
    picked_rows.append(entry)
  seeds = sorted(set.intersection(*(set(tables[e['picked']]['seeds']) for e in picked_rows)))
  for entry in picked_rows:  # the seeds every picked row ran, so the row is paired seed by seed
    for metric in ('top1', 'top5'):
      if f'{metric}_per_seed' not in entry:
        continue
      per_seed = dict(zip(tables[entry['picked']]['seeds'], entry[f'{metric}_per_seed']))
      values = [per_seed[s] for s in seeds]
      entry.update({f'{metric}_per_seed': values, metric: float(np.mean(values))})
      entry.pop(f'{metric}_std', None)
      if len(values) > 1:
        entry[f'{metric}_std'] = float(np.std(values, ddof=1))
  return {'rows': picked_rows, 'seeds': seeds, 'picked_on_seeds': common}


# (row a, row b, the paper's claim in words): the claim is that a is better than b.
COMPARISONS = (
    ('inets', 'inet_largest', 'a network trained at the largest size loses accuracy at the others'),
    ('private_bn', 'shared_bn', 'private BatchNorm beats shared BatchNorm'),
    ('private_bn', 'inets', 'private BN without distillation beats individual networks '
                            '(except at the smallest size)'),
    ('ens', 'private_bn', 'vanilla ensemble distillation improves on no distillation'),
    ('ens_topdown', 'private_bn', 'full ensemble distillation improves on no distillation'),
    ('ens_topdown', 'ens', 'full distillation improves on vanilla distillation'),
    ('ens_topdown', 'inets', 'the RS-Net beats the individual network at every size'),
    ('ens_topdown', BEST_INETS, 'the RS-Net beats the individual network with its learning rate '
                                'tuned per size'),
    # Controls, not claims of the paper: what one change does to a row.
    ('mean_loss', 'ens_topdown', 'control: averaging the loss over sizes improves the RS-Net'),
    ('mean_loss', 'inets', 'control: the RS-Net with its loss averaged beats the individual '
                           'networks'),
    ('between', 'ens_topdown', 'control: training the sizes between too improves the RS-Net at '
                               'its trained sizes'),
    ('private_bn_mean_loss', 'private_bn', 'control: averaging the loss over sizes improves '
                                           'private BN without distillation'),
    ('inets_lr2', 'inets', 'control: twice the learning rate improves the individual networks'),
    ('inets_lr5', 'inets', 'control: five times the learning rate improves the individual '
                           'networks'),
)


VERDICT_WORDS = {'a better': 'holds', 'b better': 'reversed', 'tie': 'tie', 'no spread': 'no spread'}


def paired(tables, a: str, b: str, res: int, level: float = 0.05) -> Dict[str, Any]:
  """Row a against row b at `res`, paired by seed (rows of one seed see the same images in the
  same order with the same crops): the mean of the per-seed differences a - b over the seeds both
  ran, their sample standard deviation, and a one-sided paired t-test of the claim's direction
  (`p`: of a better than b, or of b better when the mean is negative). The verdict is 'a better'
  (or 'b better') when p < `level`, else 'tie'; with fewer than two seeds on either side there is
  no spread to test against: 'no spread'."""
  per_a = dict(zip(tables[a]['seeds'], _entry(tables[a], res)['top1_per_seed']))
  per_b = dict(zip(tables[b]['seeds'], _entry(tables[b], res)['top1_per_seed']))
  common = sorted(set(per_a) & set(per_b))
  if len(per_a) < 2 or len(per_b) < 2 or len(common) < 2:
    delta = _entry(tables[a], res)['top1'] - _entry(tables[b], res)['top1']
    return {'delta': delta, 'std': None, 'p': None, 'seeds': common, 'verdict': 'no spread'}
  diffs = np.array([per_a[s] - per_b[s] for s in common])
  delta, std = float(diffs.mean()), float(diffs.std(ddof=1))
  if std == 0:
    p = 0.0 if delta else 1.0
  else:
    p = float(scipy.stats.t.sf(abs(delta) / (std / np.sqrt(len(diffs))), len(diffs) - 1))
  verdict = 'tie' if p >= level else ('a better' if delta > 0 else 'b better')
  return {'delta': delta, 'std': std, 'p': p, 'seeds': common, 'verdict': verdict}


def compare(tables, resolutions) -> List[Dict[str, Any]]:
  """Each of the paper's claims at each resolution: `paired` a against b."""
  out = []
  for a, b, claim in COMPARISONS:
    if a not in tables or b not in tables:
      continue
    for res in resolutions:
      if res == max(resolutions) and 'inet_largest' in (a, b):
        continue  # the same network
      x = paired(tables, a, b, res)
      out.append({'a': a, 'b': b, 'claim': claim, 'resolution': res, **x,
                  'holds': x['verdict'] == 'a better'})
  return out


def _entry(table, res):
  return next(e for e in table['rows'] if e['resolution'] == res)


def _cell(entry, metric='top1') -> str:
  if entry is None or entry.get(metric) is None:
    return '-'
  std = entry.get(f'{metric}_std')
  return f'{entry[metric]:.2f}' + ('' if std is None else f' ± {std:.2f}')


def markdown_report(result: Dict[str, Any]) -> str:
  tables, resolutions = result['tables'], result['resolutions']
  labels = row_labels(resolutions)
  order = row_order(tables)
  c = result['config']
  trainings = [r for r in result['runs'] if 'wall_s' in r]
  count = sum(len(result['resolutions']) if r['row'] in INET_ROWS else 1 for r in trainings)
  lines = [f"# {result['dataset']}, variant {result['variant']}: RS-ResNet-18 against individual "
           'networks', '',
           f"{result['date']}, {result['machine']}; {c['num_epochs']} epochs, batch "
           f"{c['data']['batch_size']}, width {c['model']['width']}, {c['model']['dtype']}; the "
           f"{count} trainings took {sum(r['wall_s'] for r in trainings) / 60:.1f} min "
           f"together (each timed by the call that trained it); this call's wall time "
           f"{result['wall_s'] / 60:.1f} min (data {result['data_s']:.0f} s), process CPU time "
           f"{result['cpu_s'] / 60:.1f} min, 1-min load average {result['load_average']['start']:.1f} "
           f"at the start and {result['load_average']['end']:.1f} at the end.", '',
           f"Top-1 (%) on the {result['val_count']} validation images, each counted once. "
           'Rows with several seeds: mean ± sample standard deviation over the seeds.', '']
  head = '| resolution | MACs | ' + ' | '.join(
      f"{labels[r]} (seed{'s' * (len(tables[r]['seeds']) > 1)} "
      f"{','.join(map(str, tables[r]['seeds']))})" for r in order) + ' |'
  lines += [head, '|' + ' --- |' * (len(order) + 2)]
  for res in resolutions:
    macs = next(e['macs'] for e in tables[order[0]]['rows'] if e['resolution'] == res)
    cells = []
    for r in order:
      entry = next(e for e in tables[r]['rows'] if e['resolution'] == res)
      cells.append(_cell(entry) + ('' if entry['trained'] else ' *'))
    lines.append(f'| {res} | {reports.format_macs(macs)} | ' + ' | '.join(cells) + ' |')
  ens = [_cell(tables[r].get('ensemble')) if r in RS_ROWS else '-' for r in order]
  lines.append('| ensemble (all) | - | ' + ' | '.join(ens) + ' |')
  lines += ['', f"\\* tested at a size it was not trained at (the {labels['inet_largest']} "
                'network, with its one BatchNorm).', '']

  lines += ['## The paper\'s claims, here', '',
            'Each cell: the mean over seeds of the paired difference a - b in top-1 points (rows of '
            'one seed see the same images, order and crops), ± its sample standard deviation, over '
            'the seeds both rows ran; p of a one-sided paired t-test in the direction of the mean; '
            'and a verdict: "holds" (or "reversed") when p < 0.05, "tie" otherwise; "no spread" '
            'when a row has a single seed (no test). With two or three seeds only large, steady '
            'differences pass.', '',
            '| claim (a better than b) | a | b | seeds | ' + ' | '.join(map(str, resolutions)) + ' |',
            '|' + ' --- |' * (len(resolutions) + 4)]
  for a, b, claim in COMPARISONS:
    found = {x['resolution']: x for x in result['comparisons'] if x['a'] == a and x['b'] == b}
    if not found:
      continue
    cells = []
    for res in resolutions:
      x = found.get(res)
      cells.append('-' if x is None else f"{x['delta']:+.2f}" +
                   ('' if x['std'] is None else f" ± {x['std']:.2f} (p {x['p']:.2f})") + ' ' +
                   VERDICT_WORDS[x['verdict']])
    seeds = ','.join(map(str, next(iter(found.values()))['seeds'])) or '-'
    lines.append(f'| {claim} | {labels[a]} | {labels[b]} | {seeds} | ' + ' | '.join(cells) + ' |')

  lines += ['', '## Top-5 (%)', '', '| resolution | ' + ' | '.join(labels[r] for r in order) + ' |',
            '|' + ' --- |' * (len(order) + 1)]
  for res in resolutions:
    lines.append(f'| {res} | ' + ' | '.join(
        _cell(next(e for e in tables[r]['rows'] if e['resolution'] == res), 'top5')
        for r in order) + ' |')

  lines += ['', '## Trainings', '', 'Each a run of the product\'s loop in its own work directory; '
            'wall time includes compilation (once per network and recipe), the evaluations and '
            'the checkpoints.', '', '| row | seed | wall s | '
            + ' | '.join(f'top-1 {r}' for r in resolutions) + ' |',
            '|' + ' --- |' * (len(resolutions) + 3)]
  for rec in result['runs']:
    if rec['row'] == 'inet_largest':
      continue
    tops = [rec['accuracies'].get(f'top1/{r}') for r in resolutions]
    lines.append(f"| {labels[rec['row']]} | {rec['seed']} | {rec['wall_s']:.0f} | " +
                 ' | '.join('-' if t is None else f'{t:.2f}' for t in tops) + ' |')
  return '\n'.join(lines) + '\n'


def machine() -> str:
  device = jax.devices()[0]
  if device.platform == 'cpu':
    model = platform.processor() or 'CPU'
    try:
      with open('/proc/cpuinfo') as f:
        model = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
      pass
    return f'{model}, {os.cpu_count()} cores (jax {jax.__version__}, CPU)'
  return f'{jax.device_count()} x {device.device_kind} (jax {jax.__version__})'


def write_reports(out: str, result: Dict[str, Any]):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown_report(result))
  labels = row_labels(result['resolutions'])
  tables = result['tables']
  c = result['config']
  title = (f"{result['dataset']}: ResNet-18 width {c['model']['width']}, {c['num_epochs']} epochs "
           f"({result['variant']})")
  # Every row trained at the sizes it is tested at: the paper's figure.
  reports.plot({labels[r]: tables[r] for r in row_order(tables) if r != 'inet_largest'},
                os.path.join(out, 'accuracy_vs_macs.png'), title)
  if 'inet_largest' in tables:
    # Why train at every size: the largest I-Net fed smaller images, beside the I-Nets and the
    # RS-Net. reports.plot draws untrained sizes hollow under the legend 'BatchNorm
    # recalibrated'; this network keeps its own BatchNorm at every size, so it is drawn plain and
    # says so by name; its 'ensemble' averages one network's views, not an RS-Net's sizes.
    largest = {k: v for k, v in tables['inet_largest'].items() if k != 'ensemble'}
    largest['rows'] = [{**r, 'trained': True} for r in largest['rows']]
    reports.plot({labels['inets']: tables['inets'],
                   f"{labels['inet_largest']}, its BatchNorm at every size": largest,
                   **{labels[r]: tables[r] for r in ('ens_topdown',) if r in tables}},
                  os.path.join(out, 'largest_at_every_size.png'), title)
  plot_claims(result, os.path.join(out, 'claims.png'), title)


def plot_claims(result: Dict[str, Any], path: str, title: str):
  """One panel per claim: the paired difference a - b (top-1 points) at each resolution, with its
  seed standard deviation as an error bar, coloured by verdict. PNG at 150 dpi and SVG beside it."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import textwrap
  labels = row_labels(result['resolutions'])
  claims = [(a, b, claim) for a, b, claim in COMPARISONS
            if any(x['a'] == a and x['b'] == b for x in result['comparisons'])]
  if not claims:
    return
  cols = min(4, len(claims))
  rows = -(-len(claims) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
  colours = {'a better': 'tab:green', 'b better': 'tab:red', 'tie': 'tab:gray',
             'no spread': 'lightgray'}
  for ax, (a, b, claim) in zip(axes.flat, claims):
    found = [x for x in result['comparisons'] if x['a'] == a and x['b'] == b]
    names = [str(x['resolution']) for x in found]
    ax.bar(names, [x['delta'] for x in found], color=[colours[x['verdict']] for x in found])
    spread = [(n, x) for n, x in zip(names, found) if x['std'] is not None]
    if spread:
      ax.errorbar([n for n, _ in spread], [x['delta'] for _, x in spread],
                  yerr=[x['std'] for _, x in spread], fmt='none', ecolor='black', capsize=3)
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_title('\n'.join(textwrap.wrap(claim, 34) + textwrap.wrap(f'{labels[a]} - {labels[b]}', 44)),
                 fontsize=8)
    ax.set_xlabel('resolution (px)', fontsize=8)
    ax.set_ylabel('top-1 difference (points)', fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis='y', alpha=0.3)
  handles = [matplotlib.patches.Patch(color=colours[v], label=VERDICT_WORDS[v]) for v in colours]
  spare = list(axes.flat)[len(claims):]
  for ax in spare:
    ax.axis('off')
  legend_at = spare[-1] if spare else fig
  legend_at.legend(handles=handles, loc='center' if spare else 'lower right', fontsize=8,
                   title='verdict: one-sided paired t-test\nover seeds, p < 0.05\n'
                         '(bar: mean, error bar: seed std)',
                   title_fontsize=8)
  controls = any(claim.startswith('control') for _, _, claim in claims)
  fig.suptitle(title + ': the paper\'s claims' + (' and the controls' if controls else ''),
               fontsize=10)
  fig.tight_layout()
  reports.save_figure(fig, path)
  plt.close(fig)
