"""Evaluation: exact top-1/top-5 per resolution and for the ensemble, and the reports a person reads.

`evaluate` sums correct predictions over every validation image exactly once (the input pipeline
pads the last batch and masks the padding). `write_reports` writes, in the work directory:
results.json, results.md (resolution, MACs, top-1, top-5; ensemble row) and accuracy_vs_macs.png,
the paper's accuracy-versus-cost figure.
"""
import json
import os
from typing import Any, Dict, Iterable, Optional, Sequence

import jax

from rsnets_jax.network import RSNet


def evaluate(eval_step, params, stats, batches: Iterable[Dict[str, Any]], shard) -> Dict[str, float]:
  """Accuracies (in %) from `eval_step` sums over `batches`; `shard` places a host batch on the mesh."""
  totals: Dict[str, int] = {}
  for batch in batches:
    sums = jax.device_get(eval_step(params, stats, shard(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0) + int(v)
  count = totals.pop('count', 0)
  if not count:
    raise ValueError('the evaluation set is empty')
  results = {k: 100.0 * v / count for k, v in totals.items()}
  results['count'] = count
  return results


def results_table(net: RSNet, accuracies: Dict[str, float], resolutions: Sequence[int],
                  trained: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """A JSON-ready table: one row per resolution (MACs, top-1, top-5), the ensemble row, the number
  of images counted and of unreadable ones skipped (`accuracies['skipped']`)."""
  trained = tuple(trained or net.resolutions)
  rows = []
  for res in sorted(resolutions, reverse=True):
    rows.append({'resolution': res, 'macs': net.macs(res), 'trained': res in trained,
                 'top1': accuracies.get(f'top1/{res}'), 'top5': accuracies.get(f'top5/{res}')})
  table = {'arch': net.arch, 'rows': rows, 'count': accuracies.get('count'),
           'skipped_images': accuracies.get('skipped', 0)}
  if 'top1/ensemble' in accuracies:
    table['ensemble'] = {'top1': accuracies['top1/ensemble'], 'top5': accuracies['top5/ensemble'],
                         'macs': sum(net.macs(r) for r in net.resolutions)}
  return table


def markdown(table: Dict[str, Any], title: str = '') -> str:
  lines = [f'### {title}', ''] if title else []
  lines += ['| resolution | MACs | top-1 (%) | top-5 (%) |', '| --- | --- | --- | --- |']
  for row in table['rows']:
    name = f"{row['resolution']}" + ('' if row.get('trained', True) else ' (not trained)')
    lines.append(f"| {name} | {format_macs(row['macs'])} | {_pct(row['top1'])} | {_pct(row['top5'])} |")
  if 'ensemble' in table:
    ens = table['ensemble']
    lines.append(f"| ensemble (all) | {format_macs(ens['macs'])} | {_pct(ens['top1'])} | {_pct(ens['top5'])} |")
  if table.get('count'):
    skipped = table.get('skipped_images', 0)
    lines += ['', f"{table['count']} validation images, each counted once" +
              (f"; {skipped} unreadable images skipped." if skipped else '; none skipped.')]
  return '\n'.join(lines) + '\n'


def _pct(v):
  return '-' if v is None else f'{v:.2f}'


def format_macs(m) -> str:
  return f'{m / 1e9:.2f}G' if m >= 1e9 else f'{m / 1e6:.1f}M'


def plot(curves: Dict[str, Dict[str, Any]], path: str, title: str = ''):
  """Top-1 against MACs, one line per table (the paper's figure); untrained resolutions hollow."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4.2))
  untrained = False
  for name, table in curves.items():
    rows = [r for r in table['rows'] if r['top1'] is not None]
    rows.sort(key=lambda r: r['macs'])
    line, = ax.plot([r['macs'] / 1e6 for r in rows], [r['top1'] for r in rows], marker='o',
                    label=name, markersize=5)
    for r in rows:
      if not r.get('trained', True):
        untrained = True
        ax.plot(r['macs'] / 1e6, r['top1'], 'o', mfc='white', mec=line.get_color(), markersize=7)
      ax.annotate(str(r['resolution']), (r['macs'] / 1e6, r['top1']), fontsize=7,
                  textcoords='offset points', xytext=(3, -9))
  if untrained:
    ax.plot([], [], 'o', mfc='white', mec='gray', label='not trained (BatchNorm recalibrated)')
  ax.set_xlabel('MACs per image (millions)')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.set_title(title or 'accuracy vs cost')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_reports(workdir: str, table: Dict[str, Any], extra: Optional[Dict[str, Any]] = None,
                  title: str = ''):
  """results.json, results.md and accuracy_vs_macs.png in `workdir` (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({**table, **(extra or {})}, f, indent=1)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(markdown(table, title))
  plot({title or table['arch']: table}, os.path.join(workdir, 'accuracy_vs_macs.png'), title)
