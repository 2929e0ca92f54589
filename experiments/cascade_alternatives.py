"""What else could make the anytime cascade meet issue 22's goals on the cpu_tuned RS-Nets: better
routers, cheaper first looks, larger or mirrored last looks. experiments/cascade_bound.py showed
that the thresholded confidence rules reach goal 2 only with oracle thresholds; this measures the
routes around that, each with thresholds from held-out images (two folds of the validation set,
as experiments/cascade.py --calibrate-on=val_halves) beside the oracle.

    PYTHONPATH=. python experiments/cascade_alternatives.py --data-dir=DIR \
        --workdir=runs/imagenette/cpu_tuned/runs/ens_topdown/seed0 --workdir=...seed1 \
        --workdir=...seed2 [--timings=experiments/cascade/cascade.json] \
        [--out=experiments/cascade/alternatives]

Per RS-Net: the sizes `--added` are added as `python -m rsnets_jax.add_resolutions` adds them
(recalibrate.add_resolution: edge padding, interpolated affine, statistics from the eval views of
2048 training images); the logits of every validation image at every size, of its eval view and of
the view mirrored left-right. Then, mean over the networks:
  - fixed: top-1 of every size, alone and averaged with its mirrored view (flip TTA), and MACs;
  - routers: two-stage cascades s -> the largest trained size at fixed shares of images sent on,
    scored on the held-out half: the margin and the top probability against logistic regressions
    on the first stage's softmax (sorted top-3, margin, entropy, top logits, predicted class)
    that predict (a) that the first stage is right, (b) that the second stage fixes it; and a
    clairvoyant router (knows which images the second stage fixes), the ceiling of any router;
  - goal 2 (>= -0.5 points of the largest at <= 0.8 of its cost), oracle and held-out, margin
    rule, one or two smaller stages: trained sizes (time: the measured stage times of
    `--timings` times its pass overhead, cascade_bound.overheads); with a mirrored look at the
    largest size as a last stage (its logits averaged, costing the largest's time); with the
    added small sizes as first stages (counting MACs: they have no measured time, and time
    only adds to a small size's share);
  - goal 1 (above each middle size at its measured time), held-out, the margin rule, any last
    size, up to three stages, the costs with the pass overhead, as a calibration must count
    them to meet the budget when measured (the product measures it: cascade.fit_measured).
Writes alternatives.json and alternatives.md to `--out`.
"""
import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

import rsnets_jax
from rsnets_jax import data
from rsnets_jax.data import folder, preprocess
from rsnets_jax.deploy import cascade
from rsnets_jax.train import recalibrate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cascade_bound  # pylint: disable=wrong-import-position
from cascade import fold_pairs  # pylint: disable=wrong-import-position

SHARES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FLIP = 'flip'  # the stage name of the mirrored look at the largest size


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--data-dir', required=True, help='class folders: DIR/train/, DIR/val/')
  ap.add_argument('--workdir', action='append', required=True,
                  help='a trained RS-Net (repeatable: one per seed)')
  ap.add_argument('--timings', default=os.path.join('experiments', 'cascade', 'cascade.json'))
  ap.add_argument('--out', default=os.path.join('experiments', 'cascade', 'alternatives'))
  ap.add_argument('--added', default='24,28,72,80,96', help='sizes to add, comma-separated')
  ap.add_argument('--levels', type=int, default=cascade.DEFAULT_LEVELS)
  return ap.parse_args(argv)


# -- routers ---------------------------------------------------------------------------------------

def router_features(logits: np.ndarray) -> np.ndarray:
  """What a router may know before the next stage: the first stage's sorted top-3 probabilities,
  margin, entropy, top-3 logits over the rest's mean, and its predicted class (one-hot)."""
  p = cascade.softmax(logits)
  top = np.sort(p, axis=-1)[:, ::-1]
  entropy = -np.sum(p * np.log(p + 1e-12), axis=-1)
  z = np.sort(logits, axis=-1)[:, ::-1]
  predicted = np.eye(logits.shape[1])[np.argmax(p, axis=-1)]
  return np.concatenate([top[:, :3], (top[:, 0] - top[:, 1])[:, None], entropy[:, None],
                         z[:, :3] - z[:, 3:].mean(-1, keepdims=True), predicted], axis=1)


def logistic_fit(x: np.ndarray, target: np.ndarray, l2: float = 1e-2, steps: int = 3000,
                 lr: float = 0.5):
  """The score function (log-odds) of an L2-regularised logistic regression of `target` (0/1)
  on standardised `x`, fitted by full-batch gradient descent."""
  mu, sd = x.mean(0), x.std(0) + 1e-6
  design = lambda v: np.concatenate([(v - mu) / sd, np.ones((len(v), 1))], axis=1)
  a, w = design(x), np.zeros(x.shape[1] + 1)
  for _ in range(steps):
    q = 1.0 / (1.0 + np.exp(-a @ w))
    w -= lr * (a.T @ (q - target) / len(target) + l2 * np.r_[w[:-1], 0.0])
  return lambda v: design(v) @ w


def router_scores(first, second, labels, cal, test):
  """{router: confidence of each test image (higher: stays at the first stage)}."""
  right1, right2 = np.argmax(first, -1) == labels, np.argmax(second, -1) == labels
  x = router_features(first)
  probs = cascade.softmax(first[test])
  fixes = logistic_fit(x[cal], (right2 & ~right1)[cal].astype(float))
  return {
      'margin': cascade.RULES['margin'].confidence(probs),
      'top_probability': cascade.RULES['top_probability'].confidence(probs),
      'learned: first stage right': logistic_fit(x[cal], right1[cal].astype(float))(x[test]),
      'learned: second stage fixes it': -fixes(x[test]),
      # The ceiling: sends exactly the images the second stage fixes, then those it leaves
      # wrong, before any it breaks.
      'clairvoyant': (-(right2 & ~right1)[test].astype(float) + (right1 & ~right2)[test]
                      + 1e-3 * cascade.RULES['margin'].confidence(probs)),
  }


def router_curves(logits, labels, first: int, last: int):
  """{router: top-1 (%) on the held-out half at each of SHARES sent on, mean of two folds}."""
  curves = {}
  for cal, test in fold_pairs(len(labels)):
    right1 = np.argmax(logits[first][test], -1) == labels[test]
    right2 = np.argmax(logits[last][test], -1) == labels[test]
    for name, score in router_scores(logits[first], logits[last], labels, cal, test).items():
      order = np.argsort(score, kind='stable')  # least confident first: sent on
      row = []
      for share in SHARES:
        sent = np.zeros(len(test), bool)
        sent[order[:int(round(share * len(test)))]] = True
        row.append(100.0 * float(np.mean(np.where(sent, right2, right1))))
      curves.setdefault(name, []).append(row)
  return {k: np.mean(v, axis=0).tolist() for k, v in curves.items()}


# -- threshold cascades, oracle and held-out ------------------------------------------------------

def candidates(logits, costs, heads, last, max_head: int, flip: bool = False):
  """[(stages, stage logits, stage costs)]: each subset of `heads` of at most `max_head` sizes,
  then `last` (and, with `flip`, its mirrored look averaged with it)."""
  found = []
  for k in range(max_head + 1):
    for head in itertools.combinations(heads, k):
      stages = [*head, last] + ([FLIP] if flip else [])
      if len(stages) > 1:
        found.append((tuple(stages), [logits[s] for s in stages], [costs[s] for s in stages]))
  return found


def apply_thresholds(stage_logits, labels, thresholds, costs, rule):
  """(top-1 %, mean cost) of a cascade with these thresholds."""
  routed = cascade.route(stage_logits, thresholds, rule)
  correct = routed.classes == labels
  spent = np.cumsum(costs)[routed.stage]
  return 100.0 * float(np.mean(correct)), float(np.mean(spent))


def best_at(found, labels, limit, scale, levels, rule, cal=None):
  """The (top-1, stages, thresholds, logits, costs) of the best cascade of `found` whose mean cost
  times `scale` is at most `limit`, judged on the images `cal` (all when None)."""
  best = None
  for stages, z, costs in found:
    zs, ys = (z, labels) if cal is None else ([v[cal] for v in z], labels[cal])
    combos, top1, cost = cascade.grid(zs, ys, costs, rule, levels)
    fits = np.flatnonzero(cost * scale <= limit * (1 + 1e-12))
    if len(fits):
      i = fits[np.argmax(top1[fits])]
      if best is None or top1[i] > best[0]:
        best = (float(top1[i]), stages, tuple(combos[i]), z, costs)
  return best


def held_out(found, labels, limit, scale, levels, rule):
  """Top-1 and cost on each held-out half of the cascade chosen on the other, and the reference
  index sets: [(top-1, cost x scale, stages, test indices)] for the two folds."""
  folds = []
  for cal, test in fold_pairs(len(labels)):
    best = best_at(found, labels, limit, scale, levels, rule, cal)
    if best is None:
      folds.append(None)
      continue
    _, stages, thresholds, z, costs = best
    top1, cost = apply_thresholds([v[test] for v in z], labels[test], thresholds, costs, rule)
    folds.append((top1, cost * scale, stages, test))
  return folds


def top1_of(logits, labels, indices=None):
  indices = np.arange(len(labels)) if indices is None else indices
  return 100.0 * float(np.mean(np.argmax(logits[indices], -1) == labels[indices]))


def goal2(logits, labels, costs, scale, heads, largest, flip, levels, rule, share=0.8):
  """Oracle and held-out: best top-1 minus the largest's at <= share of its cost."""
  found = candidates(logits, costs, heads, largest, 2, flip)
  limit = share * costs[largest]
  oracle = best_at(found, labels, limit, scale, levels, rule)
  folds = held_out(found, labels, limit, scale, levels, rule)
  gains = [f[0] - top1_of(logits[largest], labels, f[3]) for f in folds if f]
  return {'oracle': None if oracle is None else oracle[0] - top1_of(logits[largest], labels),
          'oracle_stages': None if oracle is None else list(map(str, oracle[1])),
          'held_out': float(np.mean(gains)) if len(gains) == 2 else None,
          'held_out_stages': [list(map(str, f[2])) for f in folds if f],
          'held_out_cost_share': [f[1] / costs[largest] for f in folds if f]}


def goal1(logits, labels, stage_ms, fixed_ms, scale, sizes, levels, rule):
  """Held-out: at each middle size's measured time, the chosen cascade's top-1 minus the size's
  (on the same half), and its modelled time over the budget; any last size, <= 3 stages."""
  found = []
  for last in sizes[1:]:
    found += candidates(logits, stage_ms, [r for r in sizes if r < last], last, 2)
  out = {}
  for r in sizes[1:-1]:
    folds = held_out(found, labels, fixed_ms[r], scale, levels, rule)
    out[str(r)] = {'gain': float(np.mean([f[0] - top1_of(logits[r], labels, f[3])
                                          for f in folds])),
                   'time_share': float(np.mean([f[1] / fixed_ms[r] for f in folds])),
                   'stages': [list(map(str, f[2])) for f in folds]}
  return out


# -- the measurement ------------------------------------------------------------------------------

def network_logits(workdir, config, views, added):
  """({size: logits} of the views, {size: logits} of the views mirrored, net): the trained
  sizes and `added` ones, added as add_resolutions adds them."""
  net, params, stats = rsnets_jax.load(workdir)
  mean, std = preprocess.input_normalisation(config.data)
  batches, used = data.recalibration_batches(config, set(net.resolutions) | set(added),
                                             recalibrate.DEFAULT_NUM_IMAGES,
                                             recalibrate.DEFAULT_VIEWS)
  batches = list(batches)
  for res in added:
    net, params, stats = recalibrate.add_resolution(net, params, stats, res, batches, used, mean,
                                                    std)
  plain = cascade_bound.logits_of(net, params, stats, views, config)
  mirrored = cascade_bound.logits_of(net, params, stats,
                                     {r: v[:, :, ::-1] for r, v in views.items()}, config)
  return plain, mirrored, net


def measure(args, log):
  config = cascade_bound.load_config(args.data_dir)
  added = sorted(int(r) for r in args.added.split(',') if r)
  trained = sorted(config.model.resolutions)
  largest = trained[-1]
  with open(args.timings) as f:
    timings = json.load(f)
  timed = dict(zip(timings['networks'], timings['runtimes']['jax']['per_network']))
  scale = cascade_bound.overheads(timed.values())['val_exits']
  source = data.DecodedSource(folder.FolderSource(args.data_dir, 'val'), config.data.read_threads)
  views, labels = cascade.eval_views(config, trained + added, source)
  rule = cascade.RULES['margin']
  networks = []
  for workdir in args.workdir:
    name = os.path.basename(os.path.normpath(workdir))
    begin = time.time()
    plain, mirrored, net = network_logits(workdir, config, views, added)
    sizes = sorted(plain)
    record = {'workdir': cascade_bound.relative(workdir), 'fixed': {}, 'routers': {}}
    for r in sizes:
      record['fixed'][str(r)] = {'top1': top1_of(plain[r], labels),
                                 'top1_flip': top1_of(plain[r] + mirrored[r], labels),
                                 'macs_share': net.macs(r) / net.macs(largest),
                                 'trained': r in trained}
    log(f'{name}: logits in {time.time() - begin:.0f} s; ' + ', '.join(
        f"{r} px {v['top1']:.2f}/{v['top1_flip']:.2f}" for r, v in record['fixed'].items()))
    small = [r for r in sizes if r < largest]
    for first in small:
      record['routers'][str(first)] = router_curves(plain, labels, first, largest)
    t = timed[name]
    stage_ms = {r: t['stage_ms'][str(r)] for r in trained}
    fixed_ms = {r: t['points'][f'{r} px']['ms_per_image'] for r in trained}
    with_flip = {**plain, FLIP: (plain[largest] + mirrored[largest]) / 2}
    timed_costs = {**stage_ms, FLIP: stage_ms[largest]}
    macs = {r: float(net.macs(r)) for r in sizes}
    begin = time.time()
    heads = trained[:-1]
    small_added = [r for r in added if r < largest]
    record['goal2'] = {
        'sizes, time': goal2(plain, labels, stage_ms, scale, heads, largest, False,
                             args.levels, rule),
        'sizes + mirrored last look, time': goal2(with_flip, labels, timed_costs, scale, heads,
                                                  largest, True, args.levels, rule),
        'sizes, MACs': goal2(plain, labels, macs, 1.0, heads, largest, False, args.levels, rule),
        f'sizes + {"/".join(map(str, small_added))} px first, MACs': goal2(
            plain, labels, macs, 1.0, sorted(heads + small_added), largest, False, args.levels,
            rule),
    }
    record['goal1'] = goal1(plain, labels, stage_ms, fixed_ms, scale, trained, args.levels, rule)
    log(f'  cascades in {time.time() - begin:.0f} s; goal 2: ' + '; '.join(
        f"{k} oracle {v['oracle']:+.2f} held-out {v['held_out']:+.2f}"
        for k, v in record['goal2'].items()) + '; goal 1 held-out: ' + ', '.join(
            f"{r} px {v['gain']:+.2f}" for r, v in record['goal1'].items()))
    networks.append(record)
  return {'networks': networks, 'overhead': scale, 'trained': trained, 'added': added,
          'largest': largest, 'shares': list(SHARES), 'val_images': int(len(labels)),
          'levels': args.levels}


# -- the record -----------------------------------------------------------------------------------

def mean_std(values):
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values, digits=2, sign=False):
  m, s = mean_std(values)
  return f'{m:+.{digits}f} ± {s:.{digits}f}' if sign else f'{m:.{digits}f} ± {s:.{digits}f}'


def markdown(report):
  nets, largest = report['networks'], report['largest']
  lines = ['# Anytime cascade: the routes around the oracle bound', '', f"`{report['command']}`",
           '', f"{report['machine']}; {report['date']}; {report['wall_seconds']:.0f} s. "
           f"{len(nets)} RS-Nets ({', '.join(n['workdir'] for n in nets)}), "
           f"{report['val_images']} validation images; held-out: two folds (thresholds or "
           f"router fitted on one half, scored on the other, the mean of the two); pass "
           f"overhead {report['overhead']:.3f}. Mean ± std over the networks.", '',
           '## Every size, alone and with its mirrored view (flip TTA, twice the cost)', '',
           '| size | trained | MACs / largest | top-1 (%) | with mirrored view |',
           '| --- | --- | --- | --- | --- |']
  for r in sorted(nets[0]['fixed'], key=int):
    f = [n['fixed'][r] for n in nets]
    lines.append(f"| {r} px | {'yes' if f[0]['trained'] else 'added'} | "
                 f"{f[0]['macs_share']:.2f} | {fmt([x['top1'] for x in f])} | "
                 f"{fmt([x['top1_flip'] for x in f])} |")
  lines += ['', f'## Routers: two stages, s -> {largest} px, a share of the images sent on', '',
            f"Held-out top-1 (%) at each share sent to {largest} px ({largest} px alone: "
            f"{fmt([n['fixed'][str(largest)]['top1'] for n in nets])}).", '']
  for first in nets[0]['routers']:
    lines += [f'{first} px first:', '',
              '| router | ' + ' | '.join(f'{s:.0%}' for s in report['shares']) + ' |',
              '| --- |' + ' --- |' * len(report['shares'])]
    for router in nets[0]['routers'][first]:
      rows = np.asarray([n['routers'][first][router] for n in nets])
      lines.append(f'| {router} | ' + ' | '.join(f'{v:.2f}' for v in rows.mean(0)) + ' |')
    lines.append('')
  lines += [f'## Goal 2: best top-1 minus {largest} px\'s at <= 0.8 of its cost', '',
            '| cascades | oracle | held-out | held-out cost / largest\'s |',
            '| --- | --- | --- | --- |']
  for kind in nets[0]['goal2']:
    g = [n['goal2'][kind] for n in nets]
    lines.append(f"| {kind} | {fmt([x['oracle'] for x in g], sign=True)} | "
                 f"{fmt([x['held_out'] for x in g], sign=True)} | "
                 f"{np.mean([x['held_out_cost_share'] for x in g]):.3f} |")
  lines += ['', '## Goal 1, held-out: the cascade chosen for each middle size\'s measured time', '',
            '| at | top-1 minus the size\'s | measured-time model / the size\'s time |',
            '| --- | --- | --- |']
  for r in nets[0]['goal1']:
    g = [n['goal1'][r] for n in nets]
    lines.append(f"| {r} px | {fmt([x['gain'] for x in g], sign=True)} | "
                 f"{np.mean([x['time_share'] for x in g]):.3f} |")
  return '\n'.join(lines) + '\n'


def main(argv=None):
  cascade_bound.run_and_record('cascade_alternatives.py', 'alternatives', parse_args(argv),
                               measure, markdown)


if __name__ == '__main__':
  sys.exit(main())
