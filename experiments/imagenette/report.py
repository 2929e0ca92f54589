"""The Imagenette comparison's report: the rows' tables (mean and spread over seeds), the paper's
claims as verdicts, and results.md / results.json / accuracy_vs_macs.png. Pure functions of the
accuracies that run.py gathers through the product's loop; only `write_reports` touches files.
"""
import dataclasses
import json
import os
import platform
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from rsnets_jax import evaluate


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  shared_bn: bool
  distillation: str
  model: Tuple[Tuple[str, Any], ...] = ()  # config.model fields that differ from the recipe's


# The RS-Net rows; 'inets' is built per resolution from the same recipe. The quantized rows are
# the quantized reference's networks (LQ-Nets quantizers) trained with the same recipe.
RS_ROWS = {
    'shared_bn': Row('shared BN', True, 'none'),
    'private_bn': Row('private BN (parallel)', False, 'none'),
    'ens': Row('private BN + ens KD', False, 'ens'),
    'ens_topdown': Row('RS-Net (private BN + full KD)', False, 'ens_topdown'),
    'lq_fp': Row('RS-Net, quantized layout, 32-bit', False, 'ens_topdown',
                 (('arch', 'lq_resnet18'),)),
    'w2a32': Row('RS-Net W2/A32', False, 'ens_topdown',
                 (('arch', 'lq_resnet18'), ('weight_bits', 2))),
    'w2a2': Row('RS-Net W2/A2', False, 'ens_topdown',
                (('arch', 'lq_preact_resnet18'), ('weight_bits', 2), ('activation_bits', 2))),
}
INETS_LABEL = 'I-Nets'


def largest_label(resolutions) -> str:
  return f'I-{max(resolutions)}'


def top1s(acc: Dict[str, float]) -> str:
  """`64:45.10 56:44.02 ... ensemble:46.00`, largest first: a log line's summary."""
  names = [k.split('/')[1] for k in acc if k.startswith('top1/')]
  names.sort(key=lambda n: -int(n) if n.isdigit() else 0)  # largest first, the ensemble last
  return ' '.join(f"{n}:{acc[f'top1/{n}']:.2f}" for n in names)


def row_labels(resolutions) -> Dict[str, str]:
  return {'inets': INETS_LABEL, 'inet_largest': largest_label(resolutions),
          **{k: r.label for k, r in RS_ROWS.items()}}


def row_order(tables) -> List[str]:
  return [r for r in ('inets', 'inet_largest', *RS_ROWS) if r in tables]


def aggregate(records: List[Dict[str, Any]], ref_net, resolutions) -> Dict[str, Dict[str, Any]]:
  """Per row: evaluate.results_table of the mean over its seeds, each accuracy with its spread
  (max - min over the seeds) and the per-seed values."""
  tables = {}
  for row in dict.fromkeys(r['row'] for r in records):
    runs = [r for r in records if r['row'] == row]
    keys = [k for k in runs[0]['accuracies'] if k.startswith('top')]
    values = {k: [r['accuracies'][k] for r in runs] for k in keys}
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    mean['count'] = runs[0]['accuracies']['count']
    trained = (max(resolutions),) if row == 'inet_largest' else tuple(resolutions)
    table = evaluate.results_table(ref_net, mean, resolutions, trained)
    for entry in table['rows'] + ([table['ensemble']] if 'ensemble' in table else []):
      name = 'ensemble' if entry is table.get('ensemble') else entry['resolution']
      for metric in ('top1', 'top5'):
        v = values.get(f'{metric}/{name}')
        if v is not None:
          entry[f'{metric}_spread'] = float(np.max(v) - np.min(v))
          entry[f'{metric}_per_seed'] = v
    table['seeds'] = [r['seed'] for r in runs]
    tables[row] = table
  return tables


def seed_spread(tables, resolutions) -> Dict[int, Optional[float]]:
  """Per resolution: the largest top-1 spread of the rows trained with two or more seeds, tested
  where they were trained (the largest I-Net away from its size is not a training outcome)."""
  spread = {}
  for res in resolutions:
    values = [e['top1_spread'] for t in tables.values() if len(t['seeds']) > 1
              for e in t['rows'] if e['resolution'] == res and e['trained'] and 'top1_spread' in e]
    spread[res] = max(values) if values else None
  return spread


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
)


def compare(tables, resolutions) -> List[Dict[str, Any]]:
  """For each claim and resolution: the top-1 difference of the means (a - b) and a verdict;
  a difference no larger than the seed spread at that resolution is a tie."""
  spread = seed_spread(tables, resolutions)
  out = []
  for a, b, claim in COMPARISONS:
    if a not in tables or b not in tables:
      continue
    for res in resolutions:
      if res == max(resolutions) and 'inet_largest' in (a, b):
        continue  # the same network
      top_a = _top1_at(tables[a], res)
      top_b = _top1_at(tables[b], res)
      delta = top_a - top_b
      noise = spread[res]
      if noise is None:
        verdict = 'a better' if delta > 0 else 'b better' if delta < 0 else 'tie'
      else:
        verdict = 'tie' if abs(delta) <= noise else ('a better' if delta > 0 else 'b better')
      out.append({'a': a, 'b': b, 'claim': claim, 'resolution': res, 'delta': delta,
                  'seed_spread': noise, 'verdict': verdict,
                  'holds': verdict == 'a better'})
  return out


def _top1_at(table, res):
  return next(e['top1'] for e in table['rows'] if e['resolution'] == res)


def _cell(entry, metric='top1') -> str:
  if entry is None or entry.get(metric) is None:
    return '-'
  spread = entry.get(f'{metric}_spread')
  per_seed = entry.get(f'{metric}_per_seed') or []
  return f'{entry[metric]:.2f}' + (f' [{spread:.2f}]' if len(per_seed) > 1 else '')


def markdown_report(result: Dict[str, Any]) -> str:
  tables, resolutions = result['tables'], result['resolutions']
  labels = row_labels(resolutions)
  order = row_order(tables)
  c = result['config']
  lines = [f"# Imagenette, variant {result['variant']}: RS-ResNet-18 against individual networks", '',
           f"{result['date']}, {result['machine']}; {c['num_epochs']} epochs, batch "
           f"{c['data']['batch_size']}, width {c['model']['width']}, {c['model']['dtype']}; wall time "
           f"{result['wall_s'] / 60:.1f} min (data {result['data_s']:.0f} s), process CPU time "
           f"{result['cpu_s'] / 60:.1f} min, 1-min load average {result['load_average']['start']:.1f} "
           f"at the start and {result['load_average']['end']:.1f} at the end.", '',
           f"Top-1 (%) on the {result['val_count']} validation images, each counted once. "
           'Rows with several seeds: mean over the seeds, and in brackets the range (max - min).', '']
  head = '| resolution | MACs | ' + ' | '.join(
      f"{labels[r]} (seeds {','.join(map(str, tables[r]['seeds']))})" for r in order) + ' |'
  lines += [head, '|' + ' --- |' * (len(order) + 2)]
  for res in resolutions:
    macs = next(e['macs'] for e in tables[order[0]]['rows'] if e['resolution'] == res)
    cells = []
    for r in order:
      entry = next(e for e in tables[r]['rows'] if e['resolution'] == res)
      cells.append(_cell(entry) + ('' if entry['trained'] else ' *'))
    lines.append(f'| {res} | {evaluate.format_macs(macs)} | ' + ' | '.join(cells) + ' |')
  ens = [_cell(tables[r].get('ensemble')) if r in RS_ROWS else '-' for r in order]
  lines.append('| ensemble (all) | - | ' + ' | '.join(ens) + ' |')
  lines += ['', f"\\* tested at a size it was not trained at (the {labels['inet_largest']} "
                'network, with its one BatchNorm).', '']

  spread = seed_spread(tables, resolutions)
  lines += ['## The paper\'s claims, here', '',
            'A difference of means no larger than the seed spread at that resolution (the largest '
            'range over the rows with several seeds: ' +
            ', '.join(f'{r}: ' + ('n/a' if s is None else f'{s:.2f}') for r, s in spread.items()) +
            ') is a tie.', '',
            '| claim (a better than b) | a | b | ' + ' | '.join(map(str, resolutions)) + ' |',
            '|' + ' --- |' * (len(resolutions) + 3)]
  for a, b, claim in COMPARISONS:
    found = {x['resolution']: x for x in result['comparisons'] if x['a'] == a and x['b'] == b}
    if not found:
      continue
    cells = []
    for res in resolutions:
      x = found.get(res)
      cells.append('-' if x is None else
                   f"{x['delta']:+.2f} " + {'a better': 'holds', 'b better': 'reversed',
                                            'tie': 'tie'}[x['verdict']])
    lines.append(f'| {claim} | {labels[a]} | {labels[b]} | ' + ' | '.join(cells) + ' |')

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
  curves = {labels[r]: result['tables'][r] for r in row_order(result['tables'])}
  largest = labels['inet_largest']
  if largest in curves:
    # evaluate.plot draws untrained sizes hollow under the legend 'BatchNorm recalibrated'; this
    # network keeps its own BatchNorm at every size, so it is drawn plain and says so by name.
    table = curves.pop(largest)
    curves = {**{k: v for k, v in curves.items() if k == INETS_LABEL},
              f'{largest}, its BatchNorm at every size':
                  {**table, 'rows': [{**r, 'trained': True} for r in table['rows']]},
              **{k: v for k, v in curves.items() if k != INETS_LABEL}}
  evaluate.plot(curves,
                os.path.join(out, 'accuracy_vs_macs.png'),
                f"Imagenette, ResNet-18 width {result['config']['model']['width']}, "
                f"{result['config']['num_epochs']} epochs ({result['variant']})")


