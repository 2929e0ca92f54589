"""The anytime cascade against fixed resolutions, measured: top-1 against wall-clock time per image
on a whole validation set, for every confidence rule, mean ± std over several trained RS-Nets.

    PYTHONPATH=. python experiments/cascade.py --data-dir=DIR --exports=EXPORTS \
        --workdir=runs/imagenette/cpu_tuned/runs/ens_topdown/seed0 --workdir=...seed1 \
        --workdir=...seed2 [--runtime=jax --runtime=onnxruntime] [--out=experiments/cascade]
    PYTHONPATH=. python experiments/cascade.py --from-json=experiments/cascade/cascade.json

Each `--workdir` (one RS-Net a seed) is exported with `python -m rsnets_jax.export` into
EXPORTS/<its folder name> (kept when already there). `--data-dir` holds the class folders
(DIR/train/<class>/, DIR/val/<class>/). Per runtime and network:
  - the eval views of every validation image at every resolution are made once (not timed: the
    same for every point) and of `--calibration-images` training images (the int8 calibration's
    seeded subset, deploy/int8.py);
  - each resolution's time per image at `--batch-size` is measured (cascade.stage_times): the
    cost the calibration counts;
  - per confidence rule, the thresholds are calibrated on the training images as
    `predict --cascade-calibrate` calibrates them (cascade.Candidates, then cascade.fit_measured:
    the chosen cascade timed over the calibration images, a budget it overruns tightened by
    measured / modelled) for each target: a mean time per image of at most each size's between
    the smallest and the largest, or `--budgets` times the largest's (a budget below the
    smallest size's is skipped), and top-1 within `--drops` points of the largest's at the least
    time;
  - every point (each fixed resolution alone, the ensemble of all of them, each calibrated
    cascade) runs over the whole validation set in batches of `--batch-size` through
    cascade.run, routing, regrouping and padding included, `--repeats` times, the points in a
    new seeded order each round; its time per image is the median round's wall clock over the
    number of images, its top-1 that of the cascade's predictions (checked against
    cascade.route on the validation logits);
  - the same calibration with MACs as the cost, evaluated on the validation logits (no clock).
`--calibrate-on=val_halves` calibrates on held-out images instead: on one half of the validation
set (a seeded split), timed and scored on the other half, then the other way round, each point
the mean of the two folds.
Writes cascade.md (the tables and the checks below), cascade.json (every measurement per network
and the checks; `--from-json` makes the tables and figures again from it) and
cascade_<runtime>.png (top-1 against measured ms per image, and against MACs) to `--out`.

Checks (issue 22), on the means over the networks, per rule: (a) at the time each fixed size
strictly between the smallest and the largest takes, a cascade point of no more time is more
accurate than that size (and, beside it, the curve there: two points mixed, each on a share of
the images); (b) a cascade point within 0.5 points of the largest size's top-1 at no more than
80% of its time per image. The best rule has the highest score: the mean of its curve's top-1 at
the times of the sizes above the smallest.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import jax
import numpy as np

from rsnets_jax import checkpoints, data
from rsnets_jax.deploy import cascade, formats, int8, manifest as manifests, profile
from rsnets_jax.errors import UserError

BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DROPS = (0.0, 0.5, 1.0, 2.0)
WITHIN, TIME_SHARE = 0.5, 0.8  # the check (b)


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--workdir', action='append', default=None,
                  help='a trained RS-Net (repeatable: one per seed)')
  ap.add_argument('--data-dir', default=None, help='class folders: DIR/train, DIR/val')
  ap.add_argument('--exports', default=None, help='where the exports go (outside the repo)')
  ap.add_argument('--from-json', default=None,
                  help="a cascade.json this wrote: its tables and figures again, not measured")
  ap.add_argument('--out', default=os.path.join('experiments', 'cascade'))
  ap.add_argument('--runtime', action='append', default=None,
                  help='runtimes to measure (repeatable; default jax)')
  ap.add_argument('--batch-size', type=int, default=64)
  ap.add_argument('--calibration-images', type=int, default=cascade.DEFAULT_CALIBRATION_IMAGES)
  ap.add_argument('--calibrate-on', choices=('train', 'val_halves'), default='train',
                  help='train: the seeded subset of training images (the product\'s default); '
                  'val_halves: two-fold on the validation set, thresholds from one half '
                  'timed and scored on the other, the two folds averaged')
  ap.add_argument('--repeats', type=int, default=5, help='timed passes per point')
  ap.add_argument('--budgets', type=float, nargs='*', default=list(BUDGETS),
                  help="mean time per image targets, as shares of the largest size's")
  ap.add_argument('--drops', type=float, nargs='*', default=list(DROPS),
                  help="top-1 targets: points below the largest size's")
  ap.add_argument('--rules', nargs='*', default=list(cascade.RULES))
  ap.add_argument('--levels', type=int, default=cascade.DEFAULT_LEVELS)
  ap.add_argument('--stage-seconds', type=float, default=2.0,
                  help='how long each resolution is timed for the calibration costs')
  return ap.parse_args(argv)


def export(workdir: str, exports: str, kinds: str) -> str:
  """The export of `workdir` in EXPORTS/<name>, made with the export command when absent."""
  dst = os.path.join(exports, os.path.basename(os.path.normpath(workdir)))
  if os.path.exists(os.path.join(dst, manifests.MANIFEST)):
    source = manifests.read_manifest(dst)['source']['path']
    if os.path.abspath(source) == os.path.abspath(workdir):
      return dst
    raise SystemExit(f'{dst} holds the export of {source}, not of {workdir}')
  subprocess.run([sys.executable, '-m', 'rsnets_jax.export', f'--workdir={workdir}',
                  f'--dst={dst}', f'--formats={kinds}', '--eval-images=500'], check=True)
  return dst


def targets(args, costs, unit: str, cost: str):
  """{name: target}: a mean cost per image of each size's between the smallest and the largest,
  of `--budgets` times the largest's, and top-1 within `--drops` points of the largest's at the
  least cost."""
  sizes = sorted(costs)
  found = {f'{unit} <= {r} px': cascade.WithinBudget(costs[r], cost) for r in sizes[1:-1]}
  found.update({f'{unit} <= {b:g} x {sizes[-1]} px': cascade.WithinBudget(b * costs[sizes[-1]],
                                                                          cost)
                for b in args.budgets})
  found.update({f'top-1 >= {sizes[-1]} px - {d:g}': cascade.WithinAccuracy(d, cost)
                for d in args.drops})
  return found


def counted_macs(manifest, cal, val, cal_logits, val_logits, args):
  """The same calibration with MACs as the cost, evaluated on the validation logits (no clock):
  {point: top-1, MACs per image, its share of the largest's}."""
  resolutions = sorted(cal_logits)
  macs = {r: float(manifests.row(manifest, r)['macs']) for r in resolutions}
  points = {f'{r} px': {'kind': 'fixed', 'resolutions': [r], 'top1': 100.0 * float(np.mean(
      np.argmax(val_logits[r], 1) == val[1])), 'macs': macs[r]} for r in resolutions}
  for rule_name in args.rules:
    rule = cascade.RULES[rule_name]
    candidates = cascade.Candidates(cal_logits, cal[1], macs, rule, 'MACs', args.levels)
    for target_name, target in targets(args, macs, 'MACs', 'macs').items():
      try:
        c = candidates.pick(target).cascade
      except UserError:  # a budget below the smallest size's MACs
        continue
      routed = cascade.route([val_logits[r] for r in c.resolutions], c.thresholds, rule)
      points[f'{rule_name}: {target_name}'] = {
          'kind': 'cascade', 'rule': rule_name, 'target': target_name,
          'resolutions': list(c.resolutions), 'thresholds': list(c.thresholds),
          'top1': 100.0 * float(np.mean(routed.classes == val[1])),
          'macs': float(np.mean(np.cumsum([macs[r] for r in c.resolutions])[routed.stage]))}
  for p in points.values():
    p['macs_share'] = p['macs'] / macs[resolutions[-1]]
  return points


def time_points(points, models, views, num_images, batch, repeats, log, seed=0):
  """{name: (routed, [seconds per round])}: each point (a Cascade) run over every image,
  `repeats` rounds, the points in a new order each round."""
  rng = np.random.default_rng(seed)
  seconds = {name: [] for name in points}
  routed = {}
  for round_ in range(repeats):
    log(f'  round {round_ + 1} of {repeats}: 1-minute load average {os.getloadavg()[0]:.2f}')
    for i in rng.permutation(len(points)):
      name = list(points)[i]
      start = time.perf_counter()
      routed[name] = cascade.run(points[name], models, views, num_images, batch)
      seconds[name].append(time.perf_counter() - start)
  return {name: (routed[name], seconds[name]) for name in points}


def measure_network(dst, runtime, val, cal, args, log):
  """Every point's top-1, time per image and exits on one network and runtime."""
  load_start = round(os.getloadavg()[0], 2)
  manifest = manifests.read_manifest(dst)
  resolutions = sorted(r['resolution'] for r in manifest['resolutions'])
  largest = resolutions[-1]
  models = cascade.load_models(dst, manifest, resolutions, runtime)
  cascade.warm_up(models, args.batch_size)
  val_arrays, val_labels = val
  cal_arrays, cal_labels = cal
  cal_views = cascade.array_views(cal_arrays)
  stage_ms = cascade.stage_times(models, args.batch_size, args.stage_seconds)
  cal_logits = cascade.logits_at(models, cal_arrays, args.batch_size)
  val_logits = cascade.logits_at(models, val_arrays, args.batch_size)
  log(f'  stage ms per image at batch {args.batch_size}: ' +
      ', '.join(f'{r}: {stage_ms[r]:.4f}' for r in resolutions))
  points, about = {}, {}
  for r in resolutions:
    points[f'{r} px'] = cascade.Cascade((r,), (), cascade.RULES['top_probability'])
    about[f'{r} px'] = {'kind': 'fixed', 'resolution': r}
  points['ensemble of all'] = cascade.Cascade(tuple(resolutions), (1.0,) * (len(resolutions) - 1),
                                              cascade.RULES['ensemble'])
  about['ensemble of all'] = {'kind': 'ensemble'}
  for rule_name in args.rules:
    rule = cascade.RULES[rule_name]
    candidates = cascade.Candidates(cal_logits, cal_labels, stage_ms, rule, 'ms', args.levels)
    measure = lambda c: cascade.pass_time(c, models, cal_views, len(cal_labels), args.batch_size)
    for target_name, target in targets(args, stage_ms, 'time', 'time').items():
      try:
        found, measured, scale = cascade.fit_measured(candidates, target, measure)
      except UserError as e:  # a budget below the smallest size's cost
        log(f'  {rule_name}: {target_name}: skipped: {e}')
        continue
      name = f'{rule_name}: {target_name}'
      points[name] = found.cascade
      about[name] = {'kind': 'cascade', 'rule': rule_name, 'target': target_name,
                     'resolutions': list(found.cascade.resolutions),
                     'thresholds': list(found.cascade.thresholds),
                     # the stages' times at the calibration exit shares, unscaled as before
                     'calibration_top1': found.accuracy, 'calibration_ms': found.cost / scale,
                     'calibration_measured_ms': measured, 'calibration_scale': scale,
                     'calibration_largest_top1': found.reference_accuracy,
                     'calibration_exit_shares': list(found.exit_shares)}
  # The same cascade under several targets is timed once.
  unique = {}
  for name, c in points.items():
    unique.setdefault((c.resolutions, c.thresholds, c.rule.name), name)
  timed = time_points({unique[k]: points[unique[k]] for k in unique}, models,
                      cascade.array_views(val_arrays), len(val_labels), args.batch_size,
                      args.repeats, log)
  results = {}
  for name, c in points.items():
    routed, seconds = timed[unique[(c.resolutions, c.thresholds, c.rule.name)]]
    expected = cascade.route([val_logits[r] for r in c.resolutions], c.thresholds, c.rule)
    if not np.array_equal(expected.classes, routed.classes):
      log(f'  note: {name}: {int(np.sum(expected.classes != routed.classes))} predictions of '
          f'the timed run differ from the routing of the logits computed apart')
    results[name] = {
        **about[name], 'top1': 100.0 * float(np.mean(routed.classes == val_labels)),
        'ms_per_image': 1e3 * float(np.median(seconds)) / len(val_labels),
        'ms_per_image_rounds': [1e3 * s / len(val_labels) for s in seconds],
        'exit_shares': [n / len(val_labels) for n in routed.exit_counts(len(c.resolutions))],
        'resolutions': list(c.resolutions), 'thresholds': list(c.thresholds)}
  for name, r in results.items():
    r['time_share'] = r['ms_per_image'] / results[f'{largest} px']['ms_per_image']
  log(f'  1-minute load average {load_start} at the start, {os.getloadavg()[0]:.2f} at the end')
  return {'stage_ms': {str(r): v for r, v in stage_ms.items()}, 'points': results,
          'resolutions': resolutions,
          'load_average': [load_start, round(os.getloadavg()[0], 2)],
          'macs_points': counted_macs(manifest, cal, val, cal_logits, val_logits, args)}


def halves(num_images: int, seed: int = 0):
  """Two disjoint halves of the image indices, drawn in a seeded random order."""
  order = np.random.default_rng(seed).permutation(num_images)
  return np.sort(order[:num_images // 2]), np.sort(order[num_images // 2:])


def fold_pairs(num_images: int, seed: int = 0):
  """((calibration, evaluation) indices) for the two folds: each half calibrates, the other
  evaluates."""
  first, second = halves(num_images, seed)
  return (first, second), (second, first)


def subset(views, indices):
  """(arrays, labels) of `views` at `indices`."""
  arrays, labels = views
  return {r: a[indices] for r, a in arrays.items()}, labels[indices]


def two_folds(dst, runtime, val, args, log):
  """measure_network twice, calibrated on one half of the validation images and timed and scored
  on the other, then the other way round: each point's top-1, time and exit shares the mean of
  the two folds (a target's cascade may differ between them; the first fold's is listed)."""
  folds = []
  for k, (cal_idx, eval_idx) in enumerate(fold_pairs(len(val[1]))):
    log(f'  fold {k + 1} of 2: calibrated on {len(cal_idx)} validation images, timed on '
        f'{len(eval_idx)}')
    folds.append(measure_network(dst, runtime, subset(val, eval_idx), subset(val, cal_idx),
                                 args, log))
  merged = dict(folds[0])
  merged['folds'] = [{k: f[k] for k in ('stage_ms', 'load_average')} for f in folds]
  for key in ('points', 'macs_points'):
    merged[key] = {}
    for name in [n for n in folds[0][key] if n in folds[1][key]]:
      a, b = folds[0][key][name], folds[1][key][name]
      entry = dict(a)
      for field in ('top1', 'ms_per_image', 'macs'):
        if field in a:
          entry[field] = (a[field] + b[field]) / 2
      if 'exit_shares' in a and len(a['exit_shares']) == len(b['exit_shares']):
        entry['exit_shares'] = [(x + y) / 2 for x, y in zip(a['exit_shares'], b['exit_shares'])]
      entry['folds'] = [{k: f[k] for k in ('resolutions', 'thresholds', 'top1', 'ms_per_image',
                                           'macs') if k in f} for f in (a, b)]
      merged[key][name] = entry
  largest = max(merged['resolutions'])
  for point in merged['points'].values():
    point['time_share'] = point['ms_per_image'] / merged['points'][f'{largest} px']['ms_per_image']
  for point in merged['macs_points'].values():
    point['macs_share'] = point['macs'] / merged['macs_points'][f'{largest} px']['macs']
  return merged


def summarise(per_network, key='points'):
  """{point: its fields, with top-1 and each cost the mean over the networks (and `_std`)}."""
  summary = {}
  for name in [n for n in per_network[0][key] if all(n in m[key] for m in per_network)]:
    rows = [n[key][name] for n in per_network]
    entry = dict(rows[0])
    for field in ('top1', 'ms_per_image', 'time_share', 'macs', 'macs_share'):
      if field in entry:
        values = np.asarray([r[field] for r in rows])
        entry[field] = float(values.mean())
        entry[field + '_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    entry['per_network'] = [{k: r[k] for k in ('resolutions', 'thresholds', 'exit_shares', 'top1')
                             if k in r} for r in rows]
    summary[name] = entry
  return summary


def mixed_best(points, cost: str, limit: float):
  """The best top-1 at a mean `cost` of at most `limit` from running one point, or two on shares
  of the images (a share w of the images through one and 1 - w through the other gives the
  mixture of their top-1 and cost): the cascade curve's value there; None when none fits."""
  best = None
  for p in points:
    if p[cost] <= limit:
      best = max(best or p['top1'], p['top1'])
    for q in points:
      if p[cost] < limit < q[cost]:
        w = (q[cost] - limit) / (q[cost] - p[cost])  # the share through p
        best = max(best or 0.0, w * p['top1'] + (1 - w) * q['top1'])
  return best


def checks(summary, resolutions, rules, cost: str):
  """Per rule, on the means: (a) per size above the smallest, the best cascade point at no more
  than its `cost` (and the curve's value there, mixing two points), and whether it beats the
  size; (b) the points within WITHIN of the largest at no more than TIME_SHARE of its cost, and
  the best point there; the score: the mean of the curve's values in (a)."""
  fixed = {r: summary[f'{r} px'] for r in resolutions}
  largest = fixed[resolutions[-1]]
  found = {}
  for rule in rules:
    points = [p for p in summary.values() if p.get('rule') == rule]
    above = {}
    for r in resolutions[1:]:
      fits = [p for p in points if p[cost] <= fixed[r][cost]]
      best = max(fits, key=lambda p: p['top1']) if fits else None
      mixed = mixed_best(points, cost, fixed[r][cost])
      above[str(r)] = {'fixed_top1': fixed[r]['top1'], 'fixed_cost': fixed[r][cost],
                       'best_top1': best and best['top1'], 'best_target': best and best['target'],
                       'above': bool(best and best['top1'] > fixed[r]['top1']),
                       'mixed_top1': mixed,
                       'mixed_above': bool(mixed and mixed > fixed[r]['top1'])}
    near = [{'target': p['target'], 'top1': p['top1'], 'share': p[cost] / largest[cost]}
            for p in points if p['top1'] >= largest['top1'] - WITHIN
            and p[cost] <= TIME_SHARE * largest[cost]]
    cheap = [p for p in points if p[cost] <= TIME_SHARE * largest[cost]]
    closest = max(cheap, key=lambda p: p['top1']) if cheap else None
    middle = [str(r) for r in resolutions[1:-1]]
    found[rule] = {
        'above_fixed': above,
        'curve_above_fixed': all(above[r]['above'] for r in middle),
        'mixed_curve_above_fixed': all(above[r]['mixed_above'] for r in middle),
        'near_largest': near,
        'best_within_time_share': closest and {
            'target': closest['target'], 'top1': closest['top1'],
            'share': closest[cost] / largest[cost]},
        'score': float(np.mean([a['mixed_top1'] or 0.0 for a in above.values()]))}
  return found


def fmt(mean, std, digits=2):
  return f'{mean:.{digits}f} ± {std:.{digits}f}'


def _stages(p):
  seen = ['→'.join(map(str, n['resolutions'])) for n in p['per_network']]
  return seen[0] if len(set(seen)) == 1 else ' / '.join(seen)


def _main_targets(summary, resolutions, unit):
  """The points the short tables show: each rule at each middle size's cost, at TIME_SHARE of
  the largest's, and within WITHIN of the largest's top-1."""
  largest = resolutions[-1]
  wanted = [f'{unit} <= {r} px' for r in resolutions[1:-1]]
  wanted += [f'{unit} <= {TIME_SHARE:g} x {largest} px', f'top-1 >= {largest} px - {WITHIN:g}']
  return [n for n, p in summary.items() if p.get('target') in wanted]


def _check_table(found, resolutions, cost_name, largest_top1):
  lines = ['| rule | score | ' + ' | '.join(f"at {s} px's {cost_name}: best point / two mixed "
                                           f'({s} px alone)' for s in resolutions[1:]) +
           f' | above {resolutions[1]}..{resolutions[-2]} px: points / mixed | within {WITHIN} '
           f'of {resolutions[-1]} px at <= {TIME_SHARE:.0%} of its {cost_name} |',
           '| --- | --- | ' + '--- | ' * (len(resolutions) - 1) + '--- | --- |']
  for rule, c in found.items():
    cells = []
    for s in resolutions[1:]:
      a = c['above_fixed'][str(s)]
      cells.append(' / '.join('-' if v is None else f'{v:.2f}'
                              for v in (a['best_top1'], a['mixed_top1'])) +
                   f" ({a['fixed_top1']:.2f})")
    near = ', '.join(f"{n['target']}: {n['top1']:.2f}% at {n['share']:.2f}"
                     for n in c['near_largest'])
    if not near:
      b = c['best_within_time_share']
      near = 'none' + ('' if b is None else
                       f"; the best point there: {b['top1']:.2f}% "
                       f"({b['top1'] - largest_top1:+.2f}) at {b['share']:.2f}")
    lines.append(f"| {rule} | {c['score']:.2f} | " + ' | '.join(cells) +
                 f" | {'yes' if c['curve_above_fixed'] else 'no'} / "
                 f"{'yes' if c['mixed_curve_above_fixed'] else 'no'} | {near} |")
  return lines


def markdown(report) -> str:
  if report.get('calibrate_on') == 'val_halves':
    calibration = (f"thresholds calibrated on one half of the validation images "
                   f"({report['calibration_images']}, a seeded split) and timed and scored on "
                   f"the other, then the other way round, the two folds averaged; the cost each "
                   f"resolution's time per image at that batch; a point's time per image: the "
                   f"median of {report['repeats']} "
                   f"passes over its half")
  else:
    calibration = (f"thresholds calibrated on {report['calibration_images']} training images "
                   f"(seed {report['calibration_seed']}) with each resolution's time per image "
                   f"at that batch as its cost; a point's time per image: the median of "
                   f"{report['repeats']} passes over the whole validation set")
  lines = [f"Measured {report['date']} on {report['machine']['description']}; 1-minute load "
           f"average {report['load_average_start']} at the start, "
           f"{report['load_average_end']} at the end; wall time {report['wall_minutes']:.1f} "
           f"min.", '', f"`{report['command']}`", '',
           f"{len(report['networks'])} networks ({', '.join(report['networks'])}), "
           f"{report['val_images']} validation images, batches of {report['batch_size']}, "
           f"{calibration} (routing, regrouping and padding included; the eval views made "
           f"beforehand, for every point alike). Mean ± std over the networks; a cascade's "
           f"stages are listed per network where they differ.", '']
  for runtime, r in report['runtimes'].items():
    summary, resolutions = r['summary'], r['resolutions']
    head = ['| point | stages | top-1 (%) | ms per image | time / largest\'s | exit shares |',
            '| --- | --- | --- | --- | --- | --- |']

    def row(name, p):
      shares = (', '.join(f'{v:.2f}' for v in np.mean([n['exit_shares']
                                                      for n in p['per_network']], axis=0))
                if len({len(n['exit_shares']) for n in p['per_network']}) == 1 and
                len({tuple(n['resolutions']) for n in p['per_network']}) == 1 else '-')
      return (f"| {name} | {_stages(p)} | {fmt(p['top1'], p['top1_std'])} | "
              f"{fmt(p['ms_per_image'], p['ms_per_image_std'], 4)} | "
              f"{fmt(p['time_share'], p['time_share_std'])} | {shares} |")
    fixed = [n for n, p in summary.items() if p['kind'] != 'cascade']
    lines += [f'### {runtime}: top-1 against measured time per image', '', *head]
    lines += [row(n, summary[n]) for n in fixed + _main_targets(summary, resolutions, 'time')]
    lines += ['', f"Checks on the means over the networks. The best rule, by the score (the "
              f"mean of its curve's top-1 at the times of {resolutions[1]}..{resolutions[-1]} "
              f"px): **{r['best_rule']}**.", '',
              *_check_table(r['checks'], resolutions, 'time',
                            summary[f'{resolutions[-1]} px']['top1']), '']
    macs = r['macs_summary']
    lines += [f'### {runtime}: the same calibration counting MACs (not timed)', '',
              '| point | stages | top-1 (%) | MACs per image | MACs / largest\'s |',
              '| --- | --- | --- | --- | --- |']
    for name in [n for n, p in macs.items() if p['kind'] == 'fixed'] + _main_targets(
        macs, resolutions, 'MACs'):
      p = macs[name]
      lines.append(f"| {name} | {_stages(p)} | {fmt(p['top1'], p['top1_std'])} | "
                   f"{p['macs'] / 1e6:.3f}M | {fmt(p['macs_share'], p['macs_share_std'])} |")
    lines += ['', *_check_table(r['macs_checks'], resolutions, 'MACs',
                                macs[f'{resolutions[-1]} px']['top1']), '',
              f'### {runtime}: every timed point', '', *head]
    lines += [row(n, p) for n, p in summary.items()]
    lines.append('')
  return '\n'.join(lines)


def _curves(ax, summary, resolutions, cost, std, label):
  fixed = [summary[f'{r} px'] for r in resolutions]
  ax.errorbar([p[cost] for p in fixed], [p['top1'] for p in fixed],
              xerr=[p[std] for p in fixed], yerr=[p['top1_std'] for p in fixed],
              color='black', marker='s', label='fixed resolution', capsize=2)
  for r, p in zip(resolutions, fixed):
    ax.annotate(f'{r}', (p[cost], p['top1']), fontsize=8, textcoords='offset points',
                xytext=(4, -10))
  largest = summary[f'{resolutions[-1]} px']
  ens = summary.get('ensemble of all')
  if ens:  # it takes the time of every size together: named, off the axis
    times = ens[cost] / largest[cost]
    ax.annotate(f"ensemble of all sizes: {ens['top1']:.2f} ± {ens['top1_std']:.2f}% at "
                f"{ens[cost]:.3g} (off the axis, {times:.1f}x {resolutions[-1]} px)",
                (0.02, 0.97), xycoords='axes fraction', fontsize=8, va='top')
  rules = sorted({p['rule'] for p in summary.values() if 'rule' in p})
  for i, rule in enumerate(rules):
    points = sorted((p for p in summary.values() if p.get('rule') == rule), key=lambda p: p[cost])
    frontier, best = [], -1.0
    for p in points:
      if p['top1'] > best:
        frontier.append(p)
        best = p['top1']
    ax.errorbar([p[cost] for p in points], [p['top1'] for p in points],
                xerr=[p[std] for p in points], yerr=[p['top1_std'] for p in points],
                color=f'C{i}', marker='o', markersize=3, linestyle='none', alpha=0.4, capsize=1)
    ax.plot([p[cost] for p in frontier], [p['top1'] for p in frontier], color=f'C{i}',
            marker='o', markersize=4, label=f'cascade, {rule}')
  ax.axvline(TIME_SHARE * largest[cost], color='grey', linestyle=':', linewidth=1)
  ax.axhline(largest['top1'] - WITHIN, color='grey', linestyle=':', linewidth=1)
  lowest = min(p['top1'] for p in fixed)
  ax.set_ylim(lowest - 1, max(p['top1'] for p in summary.values()) + 1.2)
  ax.set_xlim(0, 1.08 * max(p[cost] + p[std] for p in summary.values()
                            if p is not ens))
  ax.set_xlabel(label)
  ax.set_ylabel('top-1 (%)')
  ax.grid(alpha=0.3)


def plot(result, resolutions, runtime, path, cpu):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
  _curves(left, result['summary'], resolutions, 'ms_per_image', 'ms_per_image_std',
          'measured time per image (ms): whole validation set, batches of 64')
  left.set_title(f'measured on {runtime}, {cpu}', fontsize=9)
  left.legend(fontsize=8, loc='lower right')
  macs = {n: {**p, 'macs_m': p['macs'] / 1e6, 'macs_m_std': p['macs_std'] / 1e6}
          for n, p in result['macs_summary'].items()}
  _curves(right, macs, resolutions, 'macs_m', 'macs_m_std', 'MACs per image (millions)')
  right.set_title('the same calibration counting MACs (not timed)', fontsize=9)
  fig.suptitle('Anytime cascade against fixed resolutions: mean ± std over the networks; '
               'dotted: 80% of the largest size\'s cost, its top-1 - 0.5', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def runtime_report(per_network, resolutions, rules):
  """The summaries and checks of one runtime's measurements."""
  summary = summarise(per_network)
  macs_summary = summarise(per_network, 'macs_points')
  found = checks(summary, resolutions, rules, 'ms_per_image')
  return {'resolutions': resolutions, 'summary': summary, 'checks': found,
          'best_rule': max(found, key=lambda rule: found[rule]['score']),
          'macs_summary': macs_summary,
          'macs_checks': checks(macs_summary, resolutions, rules, 'macs'),
          'per_network': per_network}


def _rounded(value):
  """`value` with every float to 8 significant digits: the file stays small."""
  if isinstance(value, float):
    return float(f'{value:.8g}')
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_rounded(v) for v in value]
  return value


def _relative(command: str) -> str:
  """`command` with absolute paths made relative to the working directory (the repository's
  root when run as documented): the record names no machine's folders."""
  words = []
  for word in command.split(' '):
    flag, eq, value = word.partition('=')
    if eq and os.path.isabs(value):
      word = f'{flag}={os.path.relpath(value)}'
    words.append(word)
  return ' '.join(words)


def write(report, out):
  """cascade_<runtime>.png, cascade.md, and cascade.json: the measurements per network and the
  checks (the summaries are made again from them with --from-json)."""
  for runtime, r in report['runtimes'].items():
    plot(r, r['resolutions'], runtime, os.path.join(out, f'cascade_{runtime}.png'),
         report['machine']['cpu'])
  report['command'] = _relative(report['command'])
  kept = {**report, 'runtimes': {
      runtime: {k: v for k, v in r.items() if k not in ('summary', 'macs_summary')}
      for runtime, r in report['runtimes'].items()}}
  with open(os.path.join(out, 'cascade.json'), 'w') as f:
    json.dump(_rounded(kept), f)
  with open(os.path.join(out, 'cascade.md'), 'w') as f:
    f.write(markdown(report))


def main(argv=None):
  args = parse_args(argv)
  log = lambda line: print(line, flush=True)  # pylint: disable=unnecessary-lambda-assignment
  os.makedirs(args.out, exist_ok=True)
  if args.from_json:  # the tables and figures again, from measurements already made
    with open(args.from_json) as f:
      report = json.load(f)
    for runtime, r in report['runtimes'].items():
      report['runtimes'][runtime] = runtime_report(r['per_network'], r['resolutions'],
                                                   list(r['checks']))
    write(report, args.out)
    log(markdown(report))
    return
  if not (args.workdir and args.data_dir and args.exports):
    raise SystemExit('--workdir, --data-dir and --exports are required (or --from-json)')
  begin = time.time()
  load_start = round(os.getloadavg()[0], 2)
  runtimes = args.runtime or ['jax']
  kinds = {'jax'} | {formats.by_runtime(r).name for r in runtimes}
  kinds |= {k for r in runtimes for k in formats.by_runtime(r).requires}
  dsts = [export(w, args.exports, ','.join(sorted(kinds))) for w in args.workdir]
  manifest = manifests.read_manifest(dsts[0])
  resolutions = sorted(r['resolution'] for r in manifest['resolutions'])
  config = int8.data_config(checkpoints.read_meta(args.workdir[0]), args.data_dir)
  log('making the validation views')
  val = cascade.eval_views(config, resolutions, data.make_source(config.data, train=False))
  if args.calibrate_on == 'train':
    log('making the calibration views')
    cal_arrays, cal_labels, cal_about = cascade.calibration_data(manifest, resolutions,
                                                                 args.data_dir,
                                                                 args.calibration_images)
  else:
    cal_about = {'images': len(val[1]) // 2, 'seed': 0}
  report = {'command': ' '.join(['python', 'experiments/cascade.py'] + sys.argv[1:]),
            'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'machine': profile.machine(), 'python': platform.python_version(),
            'networks': [os.path.basename(os.path.normpath(w)) for w in args.workdir],
            'val_images': int(len(val[1])), 'batch_size': args.batch_size,
            'calibrate_on': args.calibrate_on,
            'calibration_images': cal_about['images'], 'calibration_seed': cal_about['seed'],
            'repeats': args.repeats, 'levels': args.levels, 'load_average_start': load_start,
            'jax': jax.__version__, 'runtimes': {}}
  for runtime in runtimes:
    per_network = []
    for dst in dsts:
      log(f'{runtime}: {dst}')
      if args.calibrate_on == 'train':
        per_network.append(measure_network(dst, runtime, val, (cal_arrays, cal_labels), args,
                                           log))
      else:
        per_network.append(two_folds(dst, runtime, val, args, log))
    report['runtimes'][runtime] = runtime_report(per_network, resolutions, args.rules)
    # Written after each runtime, so that a later one's failure keeps the earlier ones'.
    report['wall_minutes'] = (time.time() - begin) / 60
    report['load_average_end'] = round(os.getloadavg()[0], 2)
    write(report, args.out)
  log(markdown(report))


if __name__ == '__main__':
  main()
