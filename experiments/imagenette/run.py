"""Imagenette: the paper's comparison on real images, every row trained and tested by one command.

    PYTHONPATH=. python experiments/imagenette/run.py --config=experiments/imagenette/config.py:cpu

Rows (config.seeds says which run, and with which seeds):
  inets        one ResNet-18 per resolution, trained and tested there (an RS-Net with a single
               resolution, no distillation); the largest one is also tested at every other size
               with its one BatchNorm, the paper's "I-224" column
  shared_bn    RS-ResNet-18, one BatchNorm shared by every resolution, no distillation
  private_bn   RS-ResNet-18, private BatchNorm, no distillation (the paper's "parallel")
  ens          private BatchNorm, vanilla ensemble distillation
  ens_topdown  private BatchNorm, full ensemble distillation (the published RS-Nets)

Every row sees the same data in the same way: the images are decoded once into memory; each epoch of
seed s has one order and one RandomResizedCrop box per image, shared by every row of that seed; the
crop is resized on device to the largest resolution, and the engine's step makes the smaller ones
and the flips. Seeds change the initial weights, the order and the crops; the flips come from the
compiled step's fixed key (config.seed), so a second seed reuses the compiled step.

Writes results.json, results.md and accuracy_vs_macs.png to --out (default runs/imagenette/<variant>).
"""
import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from rsnets_jax import data, evaluate, preprocess, train

log = logging.getLogger('imagenette')
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  shared_bn: bool
  distillation: str


# The RS-Net rows; 'inets' is built per resolution from the same recipe.
RS_ROWS = {
    'shared_bn': Row('shared BN', True, 'none'),
    'private_bn': Row('private BN (parallel)', False, 'none'),
    'ens': Row('private BN + ens KD', False, 'ens'),
    'ens_topdown': Row('RS-Net (private BN + full KD)', False, 'ens_topdown'),
}
INETS_LABEL = 'I-Nets'


def largest_label(resolutions) -> str:
  return f'I-{max(resolutions)}'


# -- data: decoded once, kept as uint8 arrays --------------------------------------------------------

@dataclasses.dataclass
class Imagenette:
  train_images: np.ndarray          # uint8 (N, H, W, 3)
  train_labels: np.ndarray          # int32 (N,)
  val_views: Dict[int, np.ndarray]  # res -> uint8 (M, res, res, 3), the reference's eval view
  val_labels: np.ndarray            # int32 (M,)


def balanced_subset(num: int, size: int) -> np.ndarray:
  """Indices of `size` examples spread evenly over a class-sorted list (all when size is 0)."""
  if not size or size >= num:
    return np.arange(num)
  return np.linspace(0, num - 1, size).round().astype(np.int64)


def decode_images(paths: Sequence[str], threads: int) -> np.ndarray:
  def load(path):
    with Image.open(path) as image:
      return np.asarray(image.convert('RGB'))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # PIL decodes without the GIL
    images = list(pool.map(load, paths))
  shapes = sorted({im.shape for im in images})
  if len(shapes) != 1:
    raise data.DataError(f'the images have {len(shapes)} sizes ({shapes[:3]}...); this runner '
                         f'keeps them as one array and needs a single size')
  return np.stack(images)


def eval_views(images: np.ndarray, resolutions: Sequence[int], threads: int) -> Dict[int, np.ndarray]:
  """data.eval_view of every image at every resolution (resize to int(s/0.875), centre crop s)."""
  def views(image):
    pil = Image.fromarray(image)
    return [data.eval_view(pil, res) for res in resolutions]
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    per_image = list(pool.map(views, images))
  return {res: np.stack([v[i] for v in per_image]) for i, res in enumerate(resolutions)}


def load_imagenette(config) -> Imagenette:
  threads = config.decode_threads or os.cpu_count() or 1
  train_src = data.FolderSource(config.data_dir, 'train')
  val_src = data.FolderSource(config.data_dir, 'val')
  if len(train_src.classes) != config.num_classes:
    raise data.DataError(f'{config.data_dir} has {len(train_src.classes)} classes, the config '
                         f'{config.num_classes}')
  train_idx = balanced_subset(len(train_src), config.train_subset)
  val_idx = balanced_subset(len(val_src), config.val_subset)
  train_images = decode_images([train_src.files[i] for i in train_idx], threads)
  val_images = decode_images([val_src.files[i] for i in val_idx], threads)
  return Imagenette(
      train_images=train_images,
      train_labels=np.asarray(train_src.labels, np.int32)[train_idx],
      val_views=eval_views(val_images, sorted(config.resolutions, reverse=True), threads),
      val_labels=np.asarray(val_src.labels, np.int32)[val_idx])


@functools.lru_cache(maxsize=None)
def epoch_plan(seed: int, epoch: int, num: int, height: int, width: int,
               min_area: float) -> Tuple[np.ndarray, np.ndarray]:
  """The image order of (seed, epoch) and one crop box (top, left, h, w) per position, drawn as
  torchvision's RandomResizedCrop (data.crop_params); the same for every row of that seed."""
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(num)
  boxes = np.array([data.crop_params(rng, height, width, (min_area, 1.0)) for _ in range(num)],
                   np.int32)
  return order, boxes


def resample_weights(start, length, in_size: int, out_size: int):
  """(B, out_size, in_size): PIL's bilinear resampling (antialiased: the triangle widens by the
  downscaling factor) of pixels [start, start + length) to out_size pixels. Weights outside the
  crop are zero, as PIL crops before it resizes."""
  start = start.astype(jnp.float32)[:, None, None]
  length = length.astype(jnp.float32)[:, None, None]
  scale = length / out_size
  support = jnp.maximum(scale, 1.0)
  centre = start + (jnp.arange(out_size, dtype=jnp.float32)[None, :, None] + 0.5) * scale
  pixel = jnp.arange(in_size, dtype=jnp.float32)[None, None, :] + 0.5
  w = jnp.maximum(0.0, 1.0 - jnp.abs(pixel - centre) / support)
  w = jnp.where((pixel > start) & (pixel < start + length), w, 0.0)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def _round_uint8(x):
  return jnp.clip(jnp.floor(x + 0.5), 0, 255).astype(jnp.uint8)  # PIL rounds half up


def crop_and_resize(images, index, box, size: int):
  """uint8 (B, size, size, 3): data.random_resized_crop of images[index] at the boxes, on device.
  Horizontal pass first with a uint8 result in between, as PIL. It matches PIL to within one grey
  level: PIL's weights are fixed-point, so a value that is exactly x.5 here may round the other way."""
  x = images[index].astype(jnp.float32)
  _, height, width, _ = x.shape
  wy = resample_weights(box[:, 0], box[:, 2], height, size)
  wx = resample_weights(box[:, 1], box[:, 3], width, size)
  exact = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on GPU: grey levels must round right
  x = _round_uint8(jnp.einsum('bhwc,bow->bhoc', x, wx, precision=exact))
  return _round_uint8(jnp.einsum('bph,bhoc->bpoc', wy, x.astype(jnp.float32), precision=exact))


def make_crop_fn(mesh, size: int):
  return jax.jit(functools.partial(crop_and_resize, size=size),
                 in_shardings=(train.replicated(mesh), train.batch_sharded(mesh),
                               train.batch_sharded(mesh)),
                 out_shardings=train.batch_sharded(mesh))


def eval_batches(views: Dict[int, np.ndarray], labels: np.ndarray, resolutions: Sequence[int],
                 batch_size: int) -> Iterator[Dict[str, Any]]:
  """Every validation image once, in batches of one shape; padding rows have mask False."""
  for start in range(0, len(labels), batch_size):
    index = np.arange(start, start + batch_size)
    mask = index < len(labels)
    index = np.where(mask, index, 0)
    yield {'images': {res: views[res][index] for res in resolutions}, 'label': labels[index],
           'mask': mask}


# -- evaluation of a one-resolution network at every size --------------------------------------------

def make_fixed_bn_eval_step(net, config, mesh):
  """train.make_eval_step's sums for a network with one BatchNorm, run at every input size with
  that BatchNorm (statistics and affine). net.apply refuses sizes it was not trained at, so the
  module is called with its own resolution as the BatchNorm selector and an input of another size;
  `stats` is the untagged tree."""
  bn_res = net.resolutions[0]
  mean, std = train.input_normalisation(config)
  k = min(5, net.num_classes)

  def eval_step(params, stats, batch):
    labels, mask = batch['label'], batch['mask']
    sums = {'count': jnp.sum(mask.astype(jnp.int32))}
    for res, images in batch['images'].items():
      x = preprocess.to_float(images, mean, std)
      logits = net.module.apply({'params': params, 'batch_stats': stats}, x, bn_res, train=False)
      sums[f'top1/{res}'] = jnp.sum(train.top_k_correct(logits, labels, 1) & mask)
      sums[f'top5/{res}'] = jnp.sum(train.top_k_correct(logits, labels, k) & mask)
    return sums

  return jax.jit(eval_step, in_shardings=(train.replicated(mesh),) * 2 + (train.batch_sharded(mesh),),
                 out_shardings=train.replicated(mesh))


# -- training: one network, one seed ---------------------------------------------------------------

class Experiment:
  """What the rows share: data on device, optimiser, crop function, compiled steps."""

  def __init__(self, config, dataset: Imagenette):
    self.config = config
    self.data = dataset
    self.mesh = train.make_mesh()
    self.steps_per_epoch = len(dataset.train_labels) // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f'batch_size {config.batch_size} exceeds the {len(dataset.train_labels)} '
                       f'training images')
    self.tx, self.schedule = train.create_optimizer(config, self.steps_per_epoch)
    self.crop = make_crop_fn(self.mesh, max(config.resolutions))
    self.train_images = train.replicate(dataset.train_images, self.mesh)
    self.train_steps: Dict[Tuple[Any, str], Any] = {}  # (net, distillation) -> compiled step
    self.eval_steps: Dict[Any, Any] = {}

  def row_config(self, resolutions, shared_bn: bool, distillation: str):
    c = self.config.copy_and_resolve_references()
    c.resolutions = tuple(resolutions)
    c.shared_bn = shared_bn
    c.distillation = distillation
    return c

  def network(self, resolutions, shared_bn: bool = False):
    return train.create_network(self.row_config(resolutions, shared_bn, 'none'))

  def batch(self, order, boxes, step: int):
    rows = slice(step * self.config.batch_size, (step + 1) * self.config.batch_size)
    index = order[rows]
    host = train.shard_batch({'index': index, 'box': boxes[rows],
                              'label': self.data.train_labels[index]}, self.mesh)
    return {'image': self.crop(self.train_images, host['index'], host['box']),
            'label': host['label']}

  def train(self, net, distillation: str, seed: int, name: str) -> Tuple[Any, Dict[str, float]]:
    """Trains `net` from seed `seed`; returns its state and timings (compilation included once
    per (network, distillation), the first time it is trained)."""
    c = self.config
    t_start = time.perf_counter()
    state = train.replicate(train.create_train_state(net, self.tx, jax.random.key(seed)), self.mesh)
    n, height, width, _ = self.data.train_images.shape
    compile_s, metrics = 0.0, None
    key = (net, distillation)
    for epoch in range(c.num_epochs):
      t_epoch = time.perf_counter()
      order, boxes = epoch_plan(seed, epoch, n, height, width, float(c.crop_min_area))
      for i in range(self.steps_per_epoch):
        batch = self.batch(order, boxes, i)
        if key not in self.train_steps:
          t = time.perf_counter()
          step = train.make_train_step(net, self.tx, self.schedule,
                                       self.row_config(net.resolutions, net.shared_bn, distillation),
                                       self.mesh)
          self.train_steps[key] = step.lower(state, batch).compile()
          compile_s += time.perf_counter() - t
        state, metrics = self.train_steps[key](state, batch)  # the state is donated
      m = jax.device_get(metrics)
      if not math.isfinite(float(m['loss'])):
        raise FloatingPointError(f'{name} seed {seed}: loss is {float(m["loss"])} in epoch {epoch + 1}')
      largest = max(net.resolutions)
      log.info('%s seed %d: epoch %d/%d loss %.3f train top-1@%d %.1f%% (last batch) | %.0f s',
               name, seed, epoch + 1, c.num_epochs, float(m['loss']), largest,
               100 * float(m[f'top1/{largest}']), time.perf_counter() - t_epoch)
    jax.block_until_ready(state)
    total = time.perf_counter() - t_start
    return state, {'train_s': round(total, 1), 'compile_s': round(compile_s, 1)}

  def evaluate(self, net, state, resolutions, fixed_bn: bool = False) -> Dict[str, float]:
    """Top-1/top-5 (%) at `resolutions`: each with its own BatchNorm (train.make_eval_step), or,
    with fixed_bn, every size with the one BatchNorm of a one-resolution network."""
    key = (net, fixed_bn)
    if key not in self.eval_steps:
      make = make_fixed_bn_eval_step if fixed_bn else train.make_eval_step
      self.eval_steps[key] = make(net, self.config, self.mesh)
    stats = state.stats
    if fixed_bn:
      bn_res = net.resolutions[0]
      stats = net.check_stats(state.stats[bn_res], bn_res)
    batches = eval_batches(self.data.val_views, self.data.val_labels, resolutions,
                           self.config.eval_batch_size)
    return evaluate.evaluate(self.eval_steps[key], state.params, stats, batches,
                             lambda b: train.shard_batch(b, self.mesh))


def run_all(exp: Experiment) -> List[Dict[str, Any]]:
  """Every (row, seed) of the config; one record per training with its accuracies and timings."""
  c = exp.config
  resolutions = tuple(sorted(c.resolutions, reverse=True))
  records = []
  for seed in c.seeds.inets:
    per_res: Dict[str, float] = {}
    timings = {'train_s': 0.0, 'compile_s': 0.0, 'eval_s': 0.0}
    for res in resolutions:
      net = exp.network((res,))
      state, t = exp.train(net, 'none', seed, f'I-{res}')
      t0 = time.perf_counter()
      acc = exp.evaluate(net, state, (res,))
      per_res.update({k: v for k, v in acc.items() if k.endswith(f'/{res}')})
      per_res['count'] = acc['count']
      if res == resolutions[0]:
        cross = exp.evaluate(net, state, resolutions, fixed_bn=True)
        records.append({'row': 'inet_largest', 'seed': seed, 'accuracies': cross})
        log.info('%s seed %d at every size: %s', largest_label(resolutions), seed, _top1s(cross))
      timings['eval_s'] += time.perf_counter() - t0
      timings['train_s'] += t['train_s']
      timings['compile_s'] += t['compile_s']
    records.append({'row': 'inets', 'seed': seed, 'accuracies': per_res,
                    **{k: round(v, 1) for k, v in timings.items()}})
    log.info('I-Nets seed %d: %s', seed, _top1s(per_res))
  for name, row in RS_ROWS.items():
    for seed in c.seeds[name]:
      net = exp.network(resolutions, row.shared_bn)
      state, t = exp.train(net, row.distillation, seed, name)
      t0 = time.perf_counter()
      acc = exp.evaluate(net, state, resolutions)
      records.append({'row': name, 'seed': seed, 'accuracies': acc, **t,
                      'eval_s': round(time.perf_counter() - t0, 1)})
      log.info('%s seed %d: %s', name, seed, _top1s(acc))
  return records


def _top1s(acc: Dict[str, float]) -> str:
  names = [k.split('/')[1] for k in acc if k.startswith('top1/')]
  names.sort(key=lambda n: -int(n) if n.isdigit() else 0)  # largest first, the ensemble last
  return ' '.join(f"{n}:{acc[f'top1/{n}']:.2f}" for n in names)


# -- tables, comparisons and reports ---------------------------------------------------------------

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


def _macs(m):
  return f'{m / 1e9:.2f}G' if m >= 1e9 else f'{m / 1e6:.1f}M'


def markdown_report(result: Dict[str, Any]) -> str:
  tables, resolutions = result['tables'], result['resolutions']
  labels = row_labels(resolutions)
  order = row_order(tables)
  c = result['config']
  lines = [f"# Imagenette, variant {result['variant']}: RS-ResNet-18 against individual networks", '',
           f"{result['date']}, {result['machine']}; {c['num_epochs']} epochs, batch "
           f"{c['batch_size']}, width {c['width']}, {c['dtype']}; wall time "
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
    lines.append(f'| {res} | {_macs(macs)} | ' + ' | '.join(cells) + ' |')
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

  lines += ['', '## Trainings', '', '| row | seed | train s (compile included) | compile s | eval s | '
            + ' | '.join(f'top-1 {r}' for r in resolutions) + ' |',
            '|' + ' --- |' * (len(resolutions) + 5)]
  for rec in result['runs']:
    if rec['row'] == 'inet_largest':
      continue
    tops = [rec['accuracies'].get(f'top1/{r}') for r in resolutions]
    lines.append(f"| {labels[rec['row']]} | {rec['seed']} | {rec['train_s']:.0f} | "
                 f"{rec['compile_s']:.0f} | {rec['eval_s']:.0f} | " +
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
                f"Imagenette, ResNet-18 width {result['config']['width']}, "
                f"{result['config']['num_epochs']} epochs ({result['variant']})")


# -- main ------------------------------------------------------------------------------------------

def run(config, out: str) -> Dict[str, Any]:
  t_start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
  if config.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
  resolutions = tuple(sorted(config.resolutions, reverse=True))
  if tuple(config.resolutions) != resolutions:
    raise ValueError(f'resolutions must be largest first, got {tuple(config.resolutions)}')
  dataset = load_imagenette(config)
  data_s = time.perf_counter() - t_start
  log.info('data: %d train, %d val images decoded and eval views made in %.0f s',
           len(dataset.train_labels), len(dataset.val_labels), data_s)
  exp = Experiment(config, dataset)
  records = run_all(exp)
  ref_net = exp.network(resolutions)  # MACs do not depend on BatchNorm: one network counts them all
  tables = aggregate(records, ref_net, resolutions)
  result = {
      'variant': config.variant, 'date': time.strftime('%Y-%m-%d %H:%M %Z'), 'machine': machine(),
      'command': ' '.join(sys.argv), 'resolutions': list(resolutions),
      'train_count': int(len(dataset.train_labels)), 'val_count': int(len(dataset.val_labels)),
      'config': config.to_dict(), 'data_s': round(data_s, 1), 'runs': records, 'tables': tables,
      'comparisons': compare(tables, resolutions),
  }
  result['wall_s'] = round(time.perf_counter() - t_start, 1)
  # On a shared machine the wall time depends on the neighbours; the process's CPU time does not.
  result['cpu_s'] = round(time.process_time() - cpu_start, 1)
  result['load_average'] = {'start': load_start, 'end': os.getloadavg()[0]}
  write_reports(out, result)
  log.info('wrote %s/results.md, results.json, accuracy_vs_macs.png (%.1f min in all)', out,
           result['wall_s'] / 60)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s', datefmt='%H:%M:%S',
                      force=True)
  log.setLevel(logging.INFO)
  config = FLAGS.config
  out = FLAGS.out or os.path.join('runs', 'imagenette', config.variant)
  try:
    result = run(config, out)
  except (data.DataError, ValueError, FloatingPointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(markdown_report(result))


if __name__ == '__main__':
  from ml_collections import config_flags
  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file('config', os.path.join(HERE, 'config.py') + ':cpu',
                                  'experiments/imagenette/config.py:<gpu|cpu|smoke>',
                                  lock_config=True)
  flags.DEFINE_string('out', None, 'Where the reports go (default runs/imagenette/<variant>).')
  app.run(main)
