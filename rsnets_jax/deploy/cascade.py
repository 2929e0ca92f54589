"""The anytime cascade: each image at the resolution it needs, with one RS-Net's exported files.

A batch runs at the smallest resolution of the cascade; the images whose confidence clears that
stage's threshold leave with its prediction, the others, regrouped into batches of `batch_size`,
go on to the next resolution, up to the largest, which takes every image left. A confidence rule
(`RULES`) says what a stage predicts from the logits of the stages an image has run (its own, or
the ensemble of them, as the RS-Net was trained to combine them) and how confident that is, in
[0, 1]. An image leaves stage k when its confidence is at least thresholds[k] and thresholds[k] is
below 1: thresholds of 0 send every image out at the first stage, thresholds of 1 none.

Thresholds are calibrated (`Candidates`, `calibrate_model`) on a seeded subset of the training
images (`data.seeded_subset`, as int8 calibration; or of the validation images, which the
network never fitted: `split='val'`), for a target the user gives: top-1 within
`max_drop` points of the largest resolution's at the least cost (`WithinAccuracy`), or the best
top-1 within a mean cost per image (`WithinBudget`). A cost (`COSTS`) is the time per image of
each resolution measured at the batch size on the runtime, or its MACs (the manifest's). The
calibration tries every subset of the resolutions that keeps the largest, and per stage the
thresholds that let a fixed share of the calibration images out (quantiles of the stage's
confidence), and 1. In time, the chosen cascade is then timed as it will run (routing,
regrouping and padded batches cost 5-8% over its stages' times, experiments/BENCHMARKS.md), and a
budget it overruns is tightened by that ratio and the choice made again (`fit_measured`). It
writes `cascade.json` into the model directory; `python -m rsnets_jax.predict --cascade` reads it
(rsnets_jax/predict.py).

The maths are pure functions of logits (`route`, `grid`, `Candidates`); `run` is the same routing
with the models called on the images still in the running, in batches padded to a few sizes
(`bucket_sizes`), so that JAX compiles a handful of shapes per resolution, not one per batch.
"""
import dataclasses
import datetime
import itertools
import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from rsnets_jax import checkpoints, data
from rsnets_jax.deploy import int8, manifest as manifests
from rsnets_jax.errors import ConfigError, UserError

CASCADE_FILE = 'cascade.json'
DEFAULT_BATCH = 64
SMALLEST_BUCKET = 8
DEFAULT_CALIBRATION_IMAGES = 4000  # as experiments/cascade.py calibrated
CALIBRATION_SPLITS = {'train': 'training', 'val': 'validation'}  # --calibration-split: its name
DEFAULT_MAX_DROP = 0.5  # points of top-1 below the largest resolution's
DEFAULT_LEVELS = 16  # thresholds per stage that the calibration tries: exit shares 1/16 .. 16/16
TIMING_SECONDS = 1.0  # each resolution's time per image is measured for at least this long
MEASURED_ROUNDS = 3  # a time budget: choose, time the whole pass, tighten; at most this often
PASS_REPEATS = 3  # a cascade's measured time is the median of this many passes

Function = Callable[[np.ndarray], np.ndarray]
# (resolution, image indices) -> uint8 eval views (len(indices), res, res, 3)
Views = Callable[[int, np.ndarray], np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


# -- confidence rules -----------------------------------------------------------------------------

def _last(logits: Sequence[np.ndarray]) -> np.ndarray:
  return softmax(np.asarray(logits[-1], np.float64))


def _mean_probabilities(logits: Sequence[np.ndarray]) -> np.ndarray:
  return np.mean([softmax(np.asarray(z, np.float64)) for z in logits], axis=0)


def _top(probs: np.ndarray) -> np.ndarray:
  return probs.max(axis=-1)


def _margin(probs: np.ndarray) -> np.ndarray:
  two = np.partition(probs, probs.shape[-1] - 2, axis=-1)[:, -2:]
  return two[:, 1] - two[:, 0]


def _negative_entropy(probs: np.ndarray) -> np.ndarray:
  """1 - entropy / log(classes): 1 for a certain prediction, 0 for a uniform one."""
  entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-300)), axis=-1)
  return np.clip(1.0 - entropy / np.log(probs.shape[-1]), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Rule:
  """A confidence rule: `predict` maps the logits of the stages an image has run (smallest first,
  each (N, classes)) to class probabilities (N, classes); `confidence` maps those to (N,) in
  [0, 1], the larger the surer."""
  name: str
  about: str
  predict: Callable[[Sequence[np.ndarray]], np.ndarray]
  confidence: Callable[[np.ndarray], np.ndarray]


RULES: Dict[str, Rule] = {r.name: r for r in (
    Rule('top_probability', "the top softmax probability of the stage's own logits", _last, _top),
    Rule('margin', "the top probability minus the second, of the stage's own logits", _last,
         _margin),
    Rule('entropy', "1 - entropy / log(classes) of the stage's own softmax", _last,
         _negative_entropy),
    Rule('ensemble', 'the top probability of the mean softmax of every stage run so far (the '
         'prediction is that mean too)', _mean_probabilities, _top),
    Rule('ensemble_margin', 'the top probability minus the second, of the mean softmax of every '
         'stage run so far (the prediction is that mean too)', _mean_probabilities, _margin),
)}
# The rule experiments/cascade.py found best on three Imagenette RS-Nets in measured time on
# jax, by a hair (the rules' curves lie within 0.3 points of each other; experiments/cascade/).
DEFAULT_RULE = 'margin'


def rule_named(name: str) -> Rule:
  if name not in RULES:
    raise ConfigError(f'unknown confidence rule {name!r}; choose one of {list(RULES)}')
  return RULES[name]


def exits(confidence: np.ndarray, threshold: float) -> np.ndarray:
  """Which images leave a stage: confidence at least the threshold, unless the threshold is 1."""
  return (confidence >= threshold) & (threshold < 1.0)


# -- a cascade and its routing --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cascade:
  """Resolutions, smallest first, and one threshold in [0, 1] per stage but the last."""
  resolutions: Tuple[int, ...]
  thresholds: Tuple[float, ...]
  rule: Rule = RULES[DEFAULT_RULE]

  def __post_init__(self):
    res, thresholds = tuple(self.resolutions), tuple(self.thresholds)
    if not res or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r <= 0
                      for r in res):
      raise ConfigError(f'cascade resolutions must be positive integers, got {list(res)}')
    if any(isinstance(t, bool) or not isinstance(t, (int, float, np.number)) for t in thresholds):
      raise ConfigError(f'cascade thresholds must be numbers in [0, 1], got {list(thresholds)}')
    if any(a >= b for a, b in zip(res, res[1:])):
      raise ConfigError(f'cascade resolutions must increase, smallest first, got {list(res)}')
    if len(thresholds) != len(res) - 1:
      raise ConfigError(f'a cascade of {len(res)} resolutions {list(res)} takes {len(res) - 1} '
                        f'thresholds (the last stage takes every image left), got '
                        f'{len(thresholds)}: {list(thresholds)}')
    bad = [t for t in thresholds if not 0.0 <= t <= 1.0]  # NaN too
    if bad:
      raise ConfigError(f'cascade thresholds must be in [0, 1], got {bad}')
    object.__setattr__(self, 'resolutions', tuple(int(r) for r in res))
    object.__setattr__(self, 'thresholds', tuple(float(t) for t in thresholds))

  def describe(self) -> str:
    stages = ' -> '.join(f'{r}' for r in self.resolutions)
    cuts = ', '.join(f'{t:.4g}' for t in self.thresholds)
    return f'{stages} px, rule {self.rule.name}' + (f', thresholds {cuts}' if cuts else '')


@dataclasses.dataclass(frozen=True)
class Routed:
  """Where each image left the cascade (`stage`: an index into the resolutions), with what class
  probabilities, and how confident it was there."""
  stage: np.ndarray
  probs: np.ndarray
  confidence: np.ndarray

  @property
  def classes(self) -> np.ndarray:
    return np.argmax(self.probs, axis=-1)

  def exit_counts(self, num_stages: int) -> List[int]:
    return np.bincount(self.stage, minlength=num_stages).tolist()


def _cascade(num_images: int, thresholds: Sequence[float], rule: Rule,
             logits_of: Callable[[int, np.ndarray], np.ndarray]) -> Routed:
  """The routing, with stage k's logits of the images `indices` given by logits_of(k, indices),
  asked only for the images still in the running."""
  stage = np.full(num_images, -1, np.int64)
  confidence = np.zeros(num_images)
  probs, seen, active = None, [], np.arange(num_images)
  for k in range(len(thresholds) + 1):
    if not len(active):
      break
    z = np.asarray(logits_of(k, active))
    seen.append(np.zeros((num_images, z.shape[-1]), z.dtype))
    seen[-1][active] = z
    p = rule.predict([s[active] for s in seen])
    c = rule.confidence(p)
    leave = exits(c, thresholds[k]) if k < len(thresholds) else np.ones(len(active), bool)
    if probs is None:
      probs = np.zeros((num_images, p.shape[-1]))
    gone = active[leave]
    probs[gone], confidence[gone], stage[gone] = p[leave], c[leave], k
    active = active[~leave]
  return Routed(stage, np.zeros((0, 0)) if probs is None else probs, confidence)


def route(stage_logits: Sequence[np.ndarray], thresholds: Sequence[float], rule: Rule) -> Routed:
  """The cascade's result from every image's logits at every stage (smallest first)."""
  if len(stage_logits) != len(thresholds) + 1:
    raise ConfigError(f'{len(stage_logits)} stages of logits for {len(thresholds)} thresholds')
  return _cascade(len(stage_logits[0]), thresholds, rule, lambda k, idx: stage_logits[k][idx])


def bucket_sizes(batch_size: int, smallest: int = SMALLEST_BUCKET) -> Tuple[int, ...]:
  """The batch sizes a call is padded to: powers of two from `smallest` below `batch_size`, and
  `batch_size`, so a partial batch costs at most twice its images and JAX compiles few shapes."""
  if batch_size < 1:
    raise ConfigError(f'the batch size must be at least 1, got {batch_size}')
  sizes, size = [], smallest
  while size < batch_size:
    sizes.append(size)
    size *= 2
  return tuple(sizes) + (batch_size,)


def run_batches(model: Function, views: Views, res: int, indices: np.ndarray, batch_size: int,
                buckets: Sequence[int]) -> np.ndarray:
  """`model`'s logits of the images `indices` at `res`, in batches of `batch_size`, the last one
  padded with black images up to the next of `buckets` and the padding dropped."""
  out = []
  for start in range(0, len(indices), batch_size):
    chunk = indices[start:start + batch_size]
    x = views(res, chunk)
    size = next(b for b in buckets if b >= len(chunk))
    if size > len(chunk):
      x = np.concatenate([x, np.zeros((size - len(chunk), *x.shape[1:]), x.dtype)])
    out.append(np.asarray(model(x))[:len(chunk)])
  return np.concatenate(out)


def run(cascade: Cascade, models: Mapping[int, Function], views: Views, num_images: int,
        batch_size: int = DEFAULT_BATCH) -> Routed:
  """The cascade on `num_images` images: `models[res]` (e.g. manifest.load_runtime's) runs the
  images still in the running at each stage, on `views(res, indices)`."""
  buckets = bucket_sizes(batch_size)
  return _cascade(num_images, cascade.thresholds, cascade.rule, lambda k, idx: run_batches(
      models[cascade.resolutions[k]], views, cascade.resolutions[k], idx, batch_size, buckets))


def array_views(arrays: Mapping[int, np.ndarray]) -> Views:
  """Views from eval views made beforehand: {res: uint8 (N, res, res, 3)}."""
  return lambda res, indices: arrays[res][indices]


def warm_up(models: Mapping[int, Function], batch_size: int = DEFAULT_BATCH):
  """Calls each model at every padded batch size, so that JAX has compiled before timing."""
  for res, model in models.items():
    for size in bucket_sizes(batch_size):
      model(np.zeros((size, res, res, 3), np.uint8))


# -- calibration ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class WithinAccuracy:
  """Top-1 at most `max_drop` points below the largest resolution's, at the least mean cost."""
  max_drop: float = DEFAULT_MAX_DROP
  cost: str = 'time'

  def __post_init__(self):
    if not self.max_drop >= 0:
      raise ConfigError(f'the accuracy drop allowed must be 0 or more points, got {self.max_drop}')

  def choose(self, accuracy: np.ndarray, cost: np.ndarray, reference: float) -> Optional[int]:
    ok = np.flatnonzero(accuracy >= reference - self.max_drop - 1e-9)
    return None if not len(ok) else int(ok[np.lexsort((-accuracy[ok], cost[ok]))[0]])

  def exceeded_by(self, cost: float) -> bool:
    del cost  # any cost: the least that meets the accuracy was chosen
    return False

  def describe(self, unit: str) -> str:
    return (f'top-1 within {self.max_drop:g} points of the largest resolution\'s, at the least '
            f'mean {unit} per image')

  def to_json(self) -> Dict[str, Any]:
    return {'max_drop': self.max_drop, 'cost': self.cost}


@dataclasses.dataclass(frozen=True)
class WithinBudget:
  """The best top-1 whose mean cost per image is at most `limit` (in the cost's unit)."""
  limit: float
  cost: str = 'time'

  def __post_init__(self):
    if not self.limit > 0:
      raise ConfigError(f'the mean cost per image must be positive, got {self.limit}')

  def choose(self, accuracy: np.ndarray, cost: np.ndarray, reference: float) -> Optional[int]:
    del reference
    ok = np.flatnonzero(~self.exceeded_by(cost))
    return None if not len(ok) else int(ok[np.lexsort((cost[ok], -accuracy[ok]))[0]])

  def exceeded_by(self, cost):
    """Whether `cost` (a number or an array of them) is over the limit."""
    return cost > self.limit * (1 + 1e-12)

  def describe(self, unit: str) -> str:
    return f'the best top-1 at a mean of at most {self.limit:.4g} {unit} per image'

  def to_json(self) -> Dict[str, Any]:
    return {'limit': self.limit, 'cost': self.cost}


def _stage_confidence(stage_logits: Sequence[np.ndarray], labels: np.ndarray, rule: Rule):
  """(confidence (S, N), correct (S, N)): each stage's, for images that run every stage."""
  conf, correct = [], []
  for k in range(len(stage_logits)):
    p = rule.predict(stage_logits[:k + 1])
    conf.append(rule.confidence(p))
    correct.append(np.argmax(p, axis=-1) == labels)
  return np.asarray(conf), np.asarray(correct)


def candidate_thresholds(confidence: np.ndarray, levels: int = DEFAULT_LEVELS) -> np.ndarray:
  """The thresholds that let 1/levels, 2/levels, ..., all of the images out by `confidence`, and 1
  (none)."""
  shares = np.arange(1, levels + 1) / levels
  cuts = np.quantile(confidence, 1.0 - shares, method='inverted_cdf')
  return np.unique(np.concatenate([np.clip(cuts, 0.0, 1.0), [1.0]]))


def grid(stage_logits: Sequence[np.ndarray], labels: np.ndarray, costs: Sequence[float],
         rule: Rule, levels: int = DEFAULT_LEVELS, chunk: int = 4096):
  """(thresholds (G, S-1), top-1 % (G,), mean cost per image (G,)) of the cascades of these
  stages (smallest first) over every combination of `candidate_thresholds` per stage."""
  conf, correct = _stage_confidence(stage_logits, labels, rule)
  num_stages, num_images = conf.shape
  spent = np.cumsum(costs)
  combos = list(itertools.product(*[candidate_thresholds(conf[k], levels)
                                    for k in range(num_stages - 1)]))
  combos = np.asarray(combos, np.float64).reshape(len(combos), num_stages - 1)
  accuracy, cost = np.empty(len(combos)), np.empty(len(combos))
  for start in range(0, len(combos), chunk):
    t = combos[start:start + chunk, :, None]
    leave = (conf[None, :-1] >= t) & (t < 1.0)
    leave = np.concatenate([leave, np.ones((len(t), 1, num_images), bool)], axis=1)
    stage = np.argmax(leave, axis=1)  # the first stage an image leaves
    accuracy[start:start + chunk] = 100.0 * np.mean(correct[stage, np.arange(num_images)],
                                                    axis=1)
    cost[start:start + chunk] = np.mean(spent[stage], axis=1)
  return combos, accuracy, cost


@dataclasses.dataclass(frozen=True)
class Calibrated:
  """A calibrated cascade, with its top-1 and mean cost on the calibration images, beside the
  largest resolution's alone."""
  cascade: Cascade
  accuracy: float
  cost: float
  reference_accuracy: float
  reference_cost: float
  exit_shares: Tuple[float, ...]


class Candidates:
  """Every cascade `calibrate_model` chooses from, with its top-1 and mean cost on the calibration
  images whose logits at each resolution are `stage_logits` ({res: (N, classes)}): every subset
  of the resolutions that keeps the largest, with the thresholds of `grid`. Computed once, then
  `pick` for as many targets as wanted."""

  def __init__(self, stage_logits: Mapping[int, np.ndarray], labels: np.ndarray,
               costs: Mapping[int, float], rule: Rule, unit: str = 'ms',
               levels: int = DEFAULT_LEVELS):
    self.stage_logits, self.labels = stage_logits, np.asarray(labels)
    self.costs, self.rule, self.unit = costs, rule, unit
    self.resolutions = sorted(stage_logits)
    largest = self.resolutions[-1]
    self.subsets = []  # (stages, thresholds (G, S-1)) per subset
    accuracy, cost = [], []
    for size in range(len(self.resolutions)):
      for head in itertools.combinations(self.resolutions[:-1], size):
        stages = (*head, largest)
        combos, a, c = grid([stage_logits[r] for r in stages], self.labels,
                            [costs[r] for r in stages], rule, levels)
        self.subsets.append((stages, combos))
        accuracy.append(a)
        cost.append(c)
    self.accuracy, self.cost = np.concatenate(accuracy), np.concatenate(cost)
    self.offsets = np.cumsum([0] + [len(a) for a in accuracy])
    self.reference_accuracy = 100.0 * float(np.mean(
        np.argmax(stage_logits[largest], axis=-1) == self.labels))

  def cascade(self, index: int) -> Cascade:
    subset = int(np.searchsorted(self.offsets, index, side='right')) - 1
    stages, combos = self.subsets[subset]
    return Cascade(stages, tuple(combos[index - self.offsets[subset]]), self.rule)

  def pick(self, target, scale: float = 1.0) -> Calibrated:
    """The cascade that meets `target` (WithinAccuracy, WithinBudget), every cost times `scale`
    (measured over modelled time, `fit_measured`)."""
    cost = self.cost * scale
    best = target.choose(self.accuracy, cost, self.reference_accuracy)
    if best is None:
      cheapest = scale * min(self.costs[r] for r in self.resolutions)
      raise ConfigError(f'no cascade of {self.resolutions} px meets the target '
                        f'({target.describe(self.unit)}); the cheapest, '
                        f'{min(self.resolutions)} px alone, costs {cheapest:.4g} {self.unit} '
                        f'per image')
    cascade = self.cascade(best)
    routed = route([self.stage_logits[r] for r in cascade.resolutions], cascade.thresholds,
                   self.rule)
    shares = tuple(n / len(self.labels) for n in routed.exit_counts(len(cascade.resolutions)))
    return Calibrated(cascade, float(self.accuracy[best]), float(cost[best]),
                      self.reference_accuracy, scale * float(self.costs[self.resolutions[-1]]),
                      shares)


def fit_measured(candidates: Candidates, target, measure: Callable[[Cascade], float],
                 rounds: int = MEASURED_ROUNDS) -> Tuple[Calibrated, float, float]:
  """(chosen, its measured cost, scale): `candidates.pick(target)`, measured by `measure`; while
  that overruns a budget, every cost is scaled by measured / modelled and the choice made again,
  at most `rounds` measurements. The last choice's measurement is returned, over or not."""
  if rounds < 1:
    raise ValueError(f'rounds must be at least 1, got {rounds}')
  scale = 1.0
  found = candidates.pick(target)
  for k in range(rounds):
    measured = float(measure(found.cascade))
    if not target.exceeded_by(measured) or k == rounds - 1:
      break
    scale *= measured / found.cost  # found.cost is modelled at the current scale
    found = candidates.pick(target, scale)
  return found, measured, scale


# -- costs ----------------------------------------------------------------------------------------

def stage_times(models: Mapping[int, Function], batch_size: int = DEFAULT_BATCH,
                min_seconds: float = TIMING_SECONDS, seed: int = 0) -> Dict[int, float]:
  """Each model's time per image (ms) at `batch_size`, on random images, after a warm-up call,
  over at least `min_seconds` and 3 calls."""
  rng = np.random.default_rng(seed)
  times = {}
  for res, model in models.items():
    x = rng.integers(0, 256, (batch_size, res, res, 3), np.uint8)
    model(x)
    calls, begin = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - begin < min_seconds:
      model(x)
      calls += 1
    times[res] = 1e3 * (time.perf_counter() - begin) / (calls * batch_size)
  return times


def pass_time(cascade: Cascade, models: Mapping[int, Function], views: Views, num_images: int,
              batch_size: int = DEFAULT_BATCH, repeats: int = PASS_REPEATS) -> float:
  """The cascade's time per image (ms) over `num_images` images as `run` runs them (routing,
  regrouping and padding included): the median of `repeats` passes, the models warmed up."""
  warm_up({r: models[r] for r in cascade.resolutions}, batch_size)
  passes = []
  for _ in range(repeats):
    begin = time.perf_counter()
    run(cascade, models, views, num_images, batch_size)
    passes.append(time.perf_counter() - begin)
  return 1e3 * float(np.median(passes)) / num_images


@dataclasses.dataclass(frozen=True)
class Cost:
  """What a stage costs per image: its `unit`, `per_image(manifest, models, batch_size)`, and
  whether a chosen cascade's whole pass is `timed` to check it (time: its routing costs too)."""
  name: str
  unit: str
  per_image: Callable[[Dict[str, Any], Mapping[int, Function], int], Dict[int, float]]
  timed: bool = False


COSTS: Dict[str, Cost] = {c.name: c for c in (
    Cost('time', 'ms', lambda manifest, models, batch: stage_times(models, batch), timed=True),
    Cost('macs', 'MACs', lambda manifest, models, batch: {
        r: float(manifests.row(manifest, r)['macs']) for r in models}),
)}


def cost_named(name: str) -> Cost:
  if name not in COSTS:
    raise ConfigError(f'unknown cost {name!r}; choose one of {list(COSTS)}')
  return COSTS[name]


# -- with a model directory -----------------------------------------------------------------------

def load_models(model_dir, manifest: Dict[str, Any], resolutions: Sequence[int],
                runtime: str) -> Dict[int, Function]:
  return {r: manifests.load_runtime(model_dir, manifest, r, runtime) for r in resolutions}


def logits_at(models: Mapping[int, Function], arrays: Mapping[int, np.ndarray],
              batch_size: int = DEFAULT_BATCH) -> Dict[int, np.ndarray]:
  """Every model's logits of every image of `arrays` ({res: uint8 views})."""
  views = array_views(arrays)
  return {res: run_batches(model, views, res, np.arange(len(arrays[res])), batch_size,
                           bucket_sizes(batch_size)) for res, model in models.items()}


def eval_views(config, resolutions: Sequence[int], source: Sequence):
  """({res: uint8 (N, res, res, 3)}, labels (N,)): `source`'s eval views (`int8.data_config`'s
  view, as predict makes it), unreadable images left out."""
  arrays, labels = {r: [] for r in resolutions}, []
  for batch in data.eval_batches(config, resolutions, source=source):
    keep = np.asarray(batch['mask'], bool)
    for r in resolutions:
      arrays[r].append(batch['images'][r][keep])
    labels.append(batch['label'][keep])
  if not labels or not sum(len(x) for x in labels):
    raise ConfigError('no readable image to calibrate the cascade on')
  return {r: np.concatenate(v) for r, v in arrays.items()}, np.concatenate(labels)


def calibration_data(manifest: Dict[str, Any], resolutions: Sequence[int],
                     data_dir: Optional[str], num_images: int, split: str = 'train'):
  """(views, labels, about) of `num_images` images of the network's data set (its recorded one,
  or the class folders of `data_dir`): a seeded subset (the int8 calibration's) of its training
  split, or of its validation split (`split='val'`: images the network never trained on, whose
  thresholds transfer better (experiments/BENCHMARKS.md); then score it on other images)."""
  if num_images < 1:
    raise ConfigError(f'--calibration-images must be at least 1, got {num_images}')
  if split not in CALIBRATION_SPLITS:
    raise ConfigError(f'--calibration-split must be one of {list(CALIBRATION_SPLITS)}, got '
                      f'{split!r}')
  source = manifest.get('source', {})
  try:
    meta = checkpoints.read_meta(source['path'], source.get('checkpoint', 'latest'))
  except (UserError, KeyError, OSError):
    meta = {}  # the training run is not on this machine: --data-dir says where the images are
  if not meta.get('config', {}).get('data') and not data_dir:
    raise ConfigError('calibrating the cascade needs the training images, and the run this '
                      'model was exported from is not here to say where they are: pass '
                      '--data-dir=DIR (class folders in DIR/train and DIR/val)')
  config = int8.data_config(meta, data_dir)
  source = data.make_source(config.data, train=split == 'train')
  if data.num_classes(config, source) != manifest['num_classes']:
    raise ConfigError(f'{data.describe(config.data)} has {data.num_classes(config, source)} '
                      f'classes, the network {manifest["num_classes"]}: calibration needs '
                      f'images of its own classes')
  chosen = data.seeded_subset(source, num_images)
  arrays, labels = eval_views(config, resolutions, chosen)
  about = {'data': data.report_name(config.data), 'split': CALIBRATION_SPLITS[split],
           'images': len(labels),
           'seed': data.SUBSET_SEED,
           'view': 'rsnets_jax.data.eval_view (per resolution, bilinear), as predict makes it'}
  return arrays, labels, about


def calibrate_model(model_dir, runtime: str = 'jax', rule: str = DEFAULT_RULE, target=None,
                    resolutions: Optional[Sequence[int]] = None, data_dir: Optional[str] = None,
                    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                    batch_size: int = DEFAULT_BATCH, levels: int = DEFAULT_LEVELS,
                    log=print, split: str = 'train') -> Dict[str, Any]:
  """Calibrates the cascade of the export in `model_dir` on `runtime` for `target` (default:
  WithinAccuracy()) over `resolutions` (default: all) on `calibration_data`'s images of `split`
  and writes CASCADE_FILE there; returns what it wrote."""
  target = target or WithinAccuracy()
  the_rule, cost = rule_named(rule), cost_named(target.cost)
  bucket_sizes(batch_size)  # checks it
  manifest = manifests.read_manifest(model_dir)
  resolutions = sorted({int(r) for r in resolutions or
                        [r['resolution'] for r in manifest['resolutions']]})
  for r in resolutions:
    manifests.row(manifest, r)
  models = load_models(model_dir, manifest, resolutions, runtime)
  arrays, labels, about = calibration_data(manifest, resolutions, data_dir, calibration_images,
                                           split)
  log(f'calibrating on {len(labels)} {about["split"]} images of {about["data"]} at '
      f'{resolutions} px')
  stage_logits = logits_at(models, arrays, batch_size)
  costs = cost.per_image(manifest, models, batch_size)
  candidates = Candidates(stage_logits, labels, costs, the_rule, cost.unit, levels)
  if cost.timed:
    views = array_views(arrays)
    found, measured, scale = fit_measured(candidates, target, lambda c: pass_time(
        c, models, views, len(labels), batch_size))
  else:
    found, measured, scale = candidates.pick(target), None, 1.0
  cascade = found.cascade
  record = {
      'resolutions': list(cascade.resolutions), 'thresholds': list(cascade.thresholds),
      'rule': the_rule.name, 'runtime': runtime, 'batch_size': batch_size,
      'target': {**target.to_json(), 'about': target.describe(cost.unit)},
      'calibration': {**about, 'levels': levels, 'top1': found.accuracy,
                      'largest_top1': found.reference_accuracy,
                      'cost_per_image': found.cost, 'largest_cost_per_image': found.reference_cost,
                      'cost_unit': cost.unit, 'stage_costs': {str(r): c for r, c in costs.items()},
                      'measured_cost_per_image': measured, 'cost_scale': scale,
                      'exit_shares': list(found.exit_shares)},
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
  path = os.path.join(os.fspath(model_dir), CASCADE_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=1)
  os.replace(path + '.tmp', path)
  timed = '' if measured is None else f' (measured {measured:.4g})'
  log(f'cascade {cascade.describe()}: top-1 {found.accuracy:.2f}% at {found.cost:.4g}{timed} '
      f'{cost.unit} per image on the calibration images ({max(resolutions)} px alone: '
      f'{found.reference_accuracy:.2f}% at {found.reference_cost:.4g}); wrote {path}')
  if measured is not None and target.exceeded_by(measured):
    log(f'warning: the cascade measured {measured:.4g} {cost.unit} per image, short of the target '
        f'({target.describe(cost.unit)}) after {MEASURED_ROUNDS} tries; the machine may be busy')
  return record


def read_cascade(path) -> Tuple[Cascade, Dict[str, Any]]:
  """(cascade, record) from a CASCADE_FILE (a path to it or to its model directory)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, CASCADE_FILE)
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise ConfigError(f'no cascade calibration at {path}: write one with python -m '
                      f'rsnets_jax.predict --model=DIR --cascade-calibrate, or pass '
                      f'--cascade-resolutions and --thresholds') from None
  except (OSError, ValueError) as e:
    raise ConfigError(f'cannot read the cascade calibration {path}: {e}') from e
  try:
    cascade = Cascade(tuple(record['resolutions']), tuple(record['thresholds']),
                      rule_named(record['rule']))
  except (KeyError, TypeError) as e:
    raise ConfigError(f'{path} is not a cascade calibration (no {e}): calibrate again') from e
  return cascade, record
