"""The reports a person reads: results.json, results.md (a row per resolution, and the ensemble)
and accuracy_vs_macs.png (the paper's figure), written by process 0, locally or to a bucket."""
import io
import json
import logging
import os
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np
from etils import epath

from rsnets_jax import data
from rsnets_jax.models import RSNet

log = logging.getLogger('rsnets_jax')


def results_table(net: RSNet, accuracies: Dict[str, float], resolutions: Sequence[int],
                  trained: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """A JSON-ready table: one row per resolution (MACs, top-1, top-5), the ensemble row, the number
  of images counted and of unreadable ones skipped (`accuracies['skipped']`)."""
  trained = tuple(trained or net.resolutions)
  rows = []
  for res in sorted(resolutions, reverse=True):
    rows.append({'resolution': res, 'macs': net.macs(res), 'trained': res in trained,
                 'top1': accuracies.get(f'top1/{res}'), 'top5': accuracies.get(f'top5/{res}')})
  table = {'arch': net.arch, 'num_classes': net.num_classes, 'rows': rows,
           'count': accuracies.get('count'),
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


def plot(curves: Dict[str, Dict[str, Any]], path: str, title: str):
  """Top-1 against MACs, a line per named series, saved by `save_figure`. Untrained resolutions
  are hollow, `top1_std` an error bar, the ensemble a star at its summed MACs, resolutions named
  above, chance dashed; far above chance, a second panel zooms in to tell the curves apart."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  classes = {t['num_classes'] for t in curves.values() if t.get('num_classes')}
  chance = 100.0 / classes.pop() if len(classes) == 1 else None
  tops = [r['top1'] for t in curves.values() for r in t['rows'] if r['top1'] is not None]
  tops += [t['ensemble']['top1'] for t in curves.values()
           if t.get('ensemble') and t['ensemble'].get('top1') is not None]
  zoom = chance is not None and min(tops) - chance > 2 * (max(tops) - min(tops))
  fig, axes = plt.subplots(1, 1 + zoom, squeeze=False,
                           figsize=(7.5 + 5 * zoom + 2.5 * (len(curves) > 1), 4.6))
  for i, ax in enumerate(axes[0]):
    _plot_curves(ax, curves, chance if i == 0 else None)
    ax.set_title(f'{title}\n(numbers above: resolution in px)' if i == 0 else
                 'the same, zoomed in\n(numbers above: resolution in px)', fontsize=10, pad=26)
  handles, labels = axes[0][0].get_legend_handles_labels()  # the first panel's has chance
  axes[0][-1].legend(handles, labels, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0),
                     borderaxespad=0)
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)


def _plot_curves(ax, curves: Dict[str, Dict[str, Any]], chance: Optional[float]):
  """`plot`'s curves on one axes; the chance line when `chance` is given."""
  from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator
  untrained = ensembles = False
  sizes: Dict[int, float] = {}
  for name, table in curves.items():
    rows = sorted((r for r in table['rows'] if r['top1'] is not None), key=lambda r: r['macs'])
    x = [r['macs'] / 1e6 for r in rows]
    line = ax.errorbar(x, [r['top1'] for r in rows], yerr=[r.get('top1_std') or 0 for r in rows],
                       marker='o', markersize=5, capsize=3, label=name)[0]
    for r in rows:
      sizes[r['resolution']] = r['macs'] / 1e6
      if not r.get('trained', True):
        untrained = True
        ax.plot(r['macs'] / 1e6, r['top1'], 'o', mfc='white', mec=line.get_color(), markersize=7,
                zorder=3)
    ens = table.get('ensemble')
    if ens and ens.get('top1') is not None:
      ensembles = True
      ax.errorbar(ens['macs'] / 1e6, ens['top1'], yerr=ens.get('top1_std') or 0, marker='*',
                  markersize=11, capsize=3, color=line.get_color(), linestyle='none')
  if untrained:
    ax.plot([], [], 'o', mfc='white', mec='gray', label='not trained (BatchNorm recalibrated)')
  if ensembles:
    ax.plot([], [], '*', color='gray', markersize=11, linestyle='none',
            label='ensemble of all its sizes (at their MACs together)')
  if chance is not None:
    ax.axhline(chance, color='gray', linestyle='--', linewidth=1, label='chance')
  ax.set_xscale('log')
  ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(FormatStrFormatter('%g'))
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xlabel('MACs per image (millions, log scale)')
  ax.set_ylabel('top-1 accuracy (%)')
  ax.grid(alpha=0.3)
  # The resolutions above the plot, at their MACs; a label too close to its left neighbour is
  # raised a line so that none overlap.
  ax.set_xlim(*ax.get_xlim())
  lo, hi = (np.log(v) for v in ax.get_xlim())
  previous, raised = None, False
  for res, macs in sorted(sizes.items(), key=lambda kv: kv[1]):
    at = (np.log(macs) - lo) / (hi - lo)
    raised = previous is not None and at - previous < 0.045 and not raised
    previous = at
    ax.annotate(str(res), (macs, 1.0), xycoords=ax.get_xaxis_transform(), ha='center',
                va='bottom', fontsize=8, textcoords='offset points', xytext=(0, 12 if raised else 3))
    ax.axvline(macs, color='gray', alpha=0.15, linewidth=0.8)


def save_figure(fig, path: str):
  """`fig` as `path` (PNG, 150 dpi) and as SVG beside it; `path` may be a bucket's (gs://...)."""
  for target, form in ((path, 'png'), (os.path.splitext(os.fspath(path))[0] + '.svg', 'svg')):
    buffer = io.BytesIO()
    fig.savefig(buffer, format=form, dpi=150)
    epath.Path(target).write_bytes(buffer.getvalue())


def write_reports(workdir: str, table: Dict[str, Any], title: str,
                  extra: Optional[Dict[str, Any]] = None):
  """results.json, results.md and accuracy_vs_macs.png (and .svg) in `workdir` (process 0 only)."""
  if jax.process_index() != 0:
    return
  directory = epath.Path(os.fspath(workdir))
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'results.json').write_text(json.dumps({**table, **(extra or {})}, indent=1))
  (directory / 'results.md').write_text(markdown(table, title))
  plot({f"RS-{table['arch']}": table}, os.fspath(directory / 'accuracy_vs_macs.png'), title)


def report(directory, config, net, accuracies, when: str, extra: Dict[str, Any]):
  """results.json, results.md and accuracy_vs_macs.png in `directory`, and the table in the log."""
  table = results_table(net, accuracies, net.all_resolutions, trained=net.resolutions)
  title = f'RS-{net.arch} on {data.report_name(config.data)}, {when}'
  write_reports(directory, table, title, extra)
  if jax.process_index() == 0:
    log.info('evaluation, %s:\n%s', when, markdown(table))
