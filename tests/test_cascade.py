"""The anytime cascade (rsnets_jax/deploy/cascade.py): its output is each image run by hand at the
resolutions its thresholds send it through, on every runtime; thresholds of 0 and 1 give the
smallest and the largest resolution alone (the ensemble of all for the ensemble rule); a batch
where every image leaves at the first stage runs no other, one where none does runs them all;
calibration meets its target on the calibration images; `predict --cascade` end to end, and bad
input as one line."""
import importlib.util
import json
import re

import jax
import numpy as np
import pytest
from PIL import Image

import rsnets_jax
from rsnets_jax import data, predict as predict_command
from rsnets_jax.deploy import cascade, export, int8, manifest as manifests, predict
from rsnets_jax.errors import ConfigError
from rsnets_jax.train import recalibrate

CLASSES = 4
RESOLUTIONS = (24, 20, 16)  # as the network lists them, largest first
HAS_ORT = importlib.util.find_spec('onnxruntime') is not None
RUNTIMES = ['jax'] + (['onnxruntime', 'onnxruntime_int8'] if HAS_ORT else [])
ERROR = 'python -m rsnets_jax.predict: error: '
ENSEMBLES = ('ensemble', 'ensemble_margin')  # the rules that predict the mean softmax of the stages


def _jpeg(path, size, rng):
  Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(path, quality=90)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
  """(export directory, data folder): a small RS-Net with random weights whose BatchNorm differs
  per resolution, 'trained' on a folder of random JPEGs (so it records where its training images
  are), exported in every format."""
  root = tmp_path_factory.mktemp('cascade')
  rng = np.random.default_rng(0)
  for split, count in (('train', 10), ('val', 2)):
    for label in range(CLASSES):
      (root / 'data' / split / f'kind{label}').mkdir(parents=True)
      for i in range(count):
        _jpeg(root / 'data' / split / f'kind{label}' / f'{i}.jpg', (26 + i, 30), rng)
  net = rsnets_jax.create_model('resnet18', RESOLUTIONS, num_classes=CLASSES, width=0.0625)
  params, _ = net.init(jax.random.key(0))

  def spread(path, value):  # each resolution's BatchNorm affine drawn apart, as training leaves it
    name = path[-1].key
    if name.startswith('scale_'):
      return rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    if name.startswith('bias_'):
      return rng.uniform(-0.3, 0.5, value.shape).astype(np.float32)
    return value
  params = jax.tree_util.tree_map_with_path(spread, params)
  images = [rng.integers(0, 256, (8, 24, 24, 3), np.uint8) for _ in range(2)]
  stats = {r: recalibrate.recalibrated_stats(net, params, r, images, 16) for r in RESOLUTIONS}
  data_config = {'dataset': 'folder', 'data_dir': str(root / 'data'), 'num_workers': 0,
                 'input_mean': None, 'input_std': None}
  rsnets_jax.save_model(root / 'run', net, params, stats, {'config': {'data': data_config}})
  formats = ('jax', 'onnx', 'onnx_int8') if HAS_ORT else ('jax',)
  export.export_model(root / 'run', root / 'export', formats=formats, calibration_images=8,
                      log=lambda _: None)
  return root / 'export', root / 'data'


@pytest.fixture(scope='module')
def photos(model):
  """PIL images of assorted sizes, and their eval views at every resolution."""
  rng = np.random.default_rng(1)
  pixels = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(18, 40)),
                                                  int(rng.integers(18, 40)), 3), np.uint8))
            for _ in range(37)]
  views = {r: np.stack([data.eval_view(p, r) for p in pixels]) for r in RESOLUTIONS}
  return pixels, views


class Counting:
  """A model that records the batch shapes it is called with."""

  def __init__(self, fn):
    self.fn, self.shapes = fn, []

  def __call__(self, x):
    self.shapes.append(x.shape)
    return self.fn(x)


def _models(dst, runtime='jax'):
  manifest = manifests.read_manifest(dst)
  return {r: Counting(manifests.load_runtime(dst, manifest, r, runtime))
          for r in sorted(RESOLUTIONS)}


def _by_hand(models, pixels, resolutions, thresholds, rule):
  """Each image alone: its view and the model at batch 1, stage after stage, until its
  confidence clears the stage's threshold. (stages reached, probabilities) per image."""
  results = []
  for image in pixels:
    logits = []
    for k, res in enumerate(resolutions):
      logits.append(models[res](data.eval_view(image, res)[None]))
      probs = rule.predict(logits)
      confidence = float(rule.confidence(probs)[0])
      if k == len(thresholds) or (confidence >= thresholds[k] and thresholds[k] < 1):
        break
    results.append((k, probs[0]))
  return results


def _between(confidence, share):
  """A threshold half-way between two neighbouring confidences, with about `share` above it: no
  image sits on it, so float32 rounding at another batch size cannot move an image across."""
  values = np.sort(np.unique(confidence))
  i = int(np.clip(round(len(values) * (1 - share)), 1, len(values) - 1))
  return float((values[i - 1] + values[i]) / 2)


# -- the rules ------------------------------------------------------------------------------------

def test_rules_say_their_confidence_in_0_1():
  logits = np.array([[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]])
  p = predict.softmax(logits)
  rules = cascade.RULES
  assert set(rules) == {'top_probability', 'margin', 'entropy', 'ensemble', 'ensemble_margin'}
  assert cascade.DEFAULT_RULE in rules and all(r.about for r in rules.values())
  np.testing.assert_allclose(rules['top_probability'].confidence(p), p.max(axis=1))
  np.testing.assert_allclose(rules['margin'].confidence(p),
                             p[:, 0] - np.sort(p, axis=1)[:, -2])
  entropy = -np.sum(p * np.log(p), axis=1)
  np.testing.assert_allclose(rules['entropy'].confidence(p), 1 - entropy / np.log(4), atol=1e-12)
  assert rules['margin'].confidence(p)[1] == 0 and rules['entropy'].confidence(p)[1] < 1e-12
  assert all(0 <= c <= 1 for r in rules.values() for c in r.confidence(p))
  assert all(r.confidence(p)[2] > 0.999999 for r in rules.values())
  # The ensemble rule predicts the mean softmax of the stages run; the others the last stage's.
  other = logits[::-1].copy()
  for name in ENSEMBLES:
    np.testing.assert_allclose(rules[name].predict([logits, other]),
                               (p + predict.softmax(other)) / 2)
  np.testing.assert_allclose(rules['ensemble_margin'].confidence(p),
                             rules['margin'].confidence(p))
  np.testing.assert_allclose(rules['margin'].predict([other, logits]), p)


def test_route_is_each_image_by_hand():
  rng = np.random.default_rng(2)
  stage_logits = [rng.normal(size=(200, 6)) * s for s in (1.0, 1.5, 2.5)]
  for rule in cascade.RULES.values():
    thresholds = [_between(rule.confidence(rule.predict(stage_logits[:k + 1])), 0.4)
                  for k in range(2)]
    routed = cascade.route(stage_logits, thresholds, rule)
    for i in range(200):
      for k in range(3):
        probs = rule.predict([z[i:i + 1] for z in stage_logits[:k + 1]])
        if k == 2 or rule.confidence(probs)[0] >= thresholds[k]:
          break
      assert routed.stage[i] == k
      np.testing.assert_allclose(routed.probs[i], probs[0], rtol=1e-12)
    assert min(routed.exit_counts(3)) > 0, routed.exit_counts(3)


# -- the cascade on exported files -----------------------------------------------------------------

@pytest.mark.parametrize('runtime', RUNTIMES)
def test_cascade_is_each_image_by_hand_on_every_runtime(model, photos, runtime):
  dst, _ = model
  pixels, views = photos
  models = _models(dst, runtime)
  resolutions = sorted(RESOLUTIONS)
  rule = cascade.RULES['ensemble' if runtime == 'jax' else 'margin']
  full = cascade.logits_at(models, views)
  thresholds = [_between(rule.confidence(rule.predict([full[r] for r in resolutions[:k + 1]])),
                         0.5) for k in range(2)]
  for m in models.values():
    m.shapes.clear()
  chosen = cascade.Cascade(tuple(resolutions), tuple(thresholds), rule)
  routed = cascade.run(chosen, models, cascade.array_views(views), len(pixels), batch_size=16)
  counts = routed.exit_counts(3)
  assert min(counts) > 0 and sum(counts) == 37, counts
  # Each stage ran exactly the images still in the running, regrouped into batches of 16, the
  # last padded to 8 or 16.
  still = [37, 37 - counts[0], counts[2]]
  for res, n in zip(resolutions, still):
    shapes = [s[0] for s in models[res].shapes]
    assert shapes == [16] * (n // 16) + ([8 if n % 16 <= 8 else 16] if n % 16 else []), shapes
  hand = _by_hand(models, pixels, resolutions, thresholds, rule)
  assert routed.stage.tolist() == [k for k, _ in hand]
  np.testing.assert_allclose(routed.probs, np.stack([p for _, p in hand]), rtol=1e-5, atol=1e-6)


def test_thresholds_of_0_and_1_give_the_smallest_and_the_largest(model, photos):
  dst, _ = model
  pixels, views = photos
  models = _models(dst)
  full = cascade.logits_at(models, views)
  smallest, largest = min(RESOLUTIONS), max(RESOLUTIONS)
  for rule in cascade.RULES.values():
    for m in models.values():
      m.shapes.clear()
    zero = cascade.run(cascade.Cascade(tuple(sorted(RESOLUTIONS)), (0.0, 0.0), rule), models,
                       cascade.array_views(views), len(pixels))
    assert set(zero.stage) == {0} and not models[20].shapes and not models[largest].shapes
    np.testing.assert_allclose(zero.probs, predict.softmax(full[smallest].astype(np.float64)),
                               rtol=1e-5)
    one = cascade.run(cascade.Cascade(tuple(sorted(RESOLUTIONS)), (1.0, 1.0), rule), models,
                      cascade.array_views(views), len(pixels))
    assert set(one.stage) == {2}
    want = rule.predict([full[r] for r in sorted(RESOLUTIONS)])
    np.testing.assert_allclose(one.probs, want, rtol=1e-5)
    if rule.name in ENSEMBLES:  # the mean softmax of every resolution
      np.testing.assert_allclose(want, np.mean([predict.softmax(full[r].astype(np.float64))
                                                for r in RESOLUTIONS], axis=0), rtol=1e-12)
    else:
      np.testing.assert_allclose(want, predict.softmax(full[largest].astype(np.float64)))


def test_a_batch_where_every_image_leaves_first_and_one_where_none_does(model, photos):
  dst, _ = model
  pixels, views = photos
  models = _models(dst)
  full = cascade.logits_at(models, views)
  rule = cascade.RULES['top_probability']
  order = sorted(RESOLUTIONS)
  confidence = [rule.confidence(rule.predict([full[r]])) for r in order]
  assert 0 < confidence[0].min() and confidence[0].max() < 1  # neither 0 nor 1 is needed
  for m in models.values():
    m.shapes.clear()
  low = (float(confidence[0].min()) * 0.99, 0.5)
  everyone = cascade.run(cascade.Cascade(tuple(order), low, rule), models,
                         cascade.array_views(views), len(pixels), batch_size=64)
  assert set(everyone.stage) == {0}
  assert models[order[0]].shapes == [(64, 16, 16, 3)]  # 37 padded to the batch: one call
  assert not models[order[1]].shapes and not models[order[2]].shapes
  high = tuple((float(c.max()) + 1) / 2 for c in confidence[:2])
  for m in models.values():
    m.shapes.clear()
  no_one = cascade.run(cascade.Cascade(tuple(order), high, rule), models,
                       cascade.array_views(views), len(pixels), batch_size=64)
  assert set(no_one.stage) == {2}
  assert [models[r].shapes for r in order] == [[(64, r, r, 3)] for r in order]
  np.testing.assert_allclose(no_one.probs, predict.softmax(full[24].astype(np.float64)),
                             rtol=1e-5)


def test_bucket_sizes():
  assert cascade.bucket_sizes(64) == (8, 16, 32, 64)
  assert cascade.bucket_sizes(10) == (8, 10) and cascade.bucket_sizes(1) == (1,)
  with pytest.raises(rsnets_jax.UserError, match='at least 1'):
    cascade.bucket_sizes(0)


# -- calibration ----------------------------------------------------------------------------------

def test_calibration_meets_its_target_on_the_calibration_images(model):
  dst, folders = model
  manifest = manifests.read_manifest(dst)
  models = _models(dst)
  # The int8 calibration's seeded subset of the training images.
  views, labels, about = cascade.calibration_data(manifest, RESOLUTIONS, None, 30)
  config = int8.data_config({}, str(folders))
  chosen = data.seeded_subset(data.make_source(config.data, train=True), 30)
  assert about['images'] == 30 and about['split'] == 'training'
  assert labels.tolist() == [r['label'] for r in chosen]
  # --calibration-split=val: the validation images, held out from training (all 2 x CLASSES).
  val_views, val_labels, val_about = cascade.calibration_data(manifest, RESOLUTIONS, None, 30,
                                                              split='val')
  val = data.seeded_subset(data.make_source(config.data, train=False), 30)
  assert val_about['split'] == 'validation' and len(val_labels) == len(val) == 2 * CLASSES
  assert val_labels.tolist() == [r['label'] for r in val]
  assert val_views[max(RESOLUTIONS)].shape[0] == 2 * CLASSES
  with pytest.raises(ConfigError, match='--calibration-split must be one of'):
    cascade.calibration_data(manifest, RESOLUTIONS, None, 30, split='test')
  stage_logits = cascade.logits_at(models, views)
  macs = {r: float(manifests.row(manifest, r)['macs']) for r in RESOLUTIONS}
  rule = cascade.RULES['entropy']
  candidates = cascade.Candidates(stage_logits, labels, macs, rule, 'MACs')
  largest_alone = 100 * np.mean(np.argmax(stage_logits[24], 1) == labels)
  assert candidates.reference_accuracy == largest_alone

  def measured(found):
    c = found.cascade
    routed = cascade.route([stage_logits[r] for r in c.resolutions], c.thresholds, rule)
    spent = np.cumsum([macs[r] for r in c.resolutions])[routed.stage]
    return 100 * np.mean(routed.classes == labels), np.mean(spent)

  for drop in (0.0, 5.0, 20.0):
    found = candidates.pick(cascade.WithinAccuracy(drop, 'macs'))
    accuracy, spent = measured(found)
    assert accuracy >= largest_alone - drop - 1e-9
    assert (accuracy, spent) == pytest.approx((found.accuracy, found.cost))
    # No candidate that meets the target is cheaper.
    assert spent == pytest.approx(
        candidates.cost[candidates.accuracy >= largest_alone - drop - 1e-9].min())
  for share in (0.6, 0.8, 1.0):
    budget = share * macs[24]
    found = candidates.pick(cascade.WithinBudget(budget, 'macs'))
    accuracy, spent = measured(found)
    assert spent <= budget and accuracy == pytest.approx(found.accuracy)
    assert accuracy == pytest.approx(candidates.accuracy[candidates.cost <= budget].max())
  with pytest.raises(rsnets_jax.UserError, match='no cascade of .* meets the target'):
    candidates.pick(cascade.WithinBudget(0.5 * macs[16], 'macs'))

  # calibrate_model writes what it found; the file reads back as the same cascade.
  record = cascade.calibrate_model(dst, rule='entropy', calibration_images=30,
                                   target=cascade.WithinBudget(0.75 * macs[24], 'macs'),
                                   log=lambda _: None)
  want = candidates.pick(cascade.WithinBudget(0.75 * macs[24], 'macs'))
  read, again = cascade.read_cascade(dst)
  assert read == want.cascade and again == record
  assert record['calibration']['top1'] == pytest.approx(want.accuracy)
  assert record['calibration']['cost_per_image'] <= 0.75 * macs[24]
  assert record['calibration']['measured_cost_per_image'] is None  # MACs are not timed
  assert record['calibration']['cost_scale'] == 1.0
  assert sum(record['calibration']['exit_shares']) == pytest.approx(1.0)
  (dst / cascade.CASCADE_FILE).unlink()


def test_a_time_budget_holds_in_measured_time():
  """fit_measured: a pass that costs 25% over its stages' times (routing, regrouping) makes the
  first choice overrun a budget; the costs scaled by measured / modelled, the next choice is the
  best cascade whose measured cost fits, and an accuracy target is measured once, not moved."""
  rng = np.random.default_rng(5)
  labels = rng.integers(0, 5, 400)
  stage_logits = {r: rng.normal(size=(400, 5)) + noise * np.eye(5)[labels]
                  for r, noise in ((8, 1.0), (12, 2.0), (16, 3.5))}
  costs = {8: 1.0, 12: 2.0, 16: 4.0}
  rule = cascade.RULES['margin']
  candidates = cascade.Candidates(stage_logits, labels, costs, rule, 'ms')

  def modelled(c):  # the stages' costs at the exit shares, as Candidates counts them
    routed = cascade.route([stage_logits[r] for r in c.resolutions], c.thresholds, rule)
    return float(np.mean(np.cumsum([costs[r] for r in c.resolutions])[routed.stage]))

  calls = []

  def measure(c):
    calls.append(c)
    return 1.25 * modelled(c)

  budget = cascade.WithinBudget(2.5)
  first = candidates.pick(budget)
  assert first.cost <= 2.5 < 1.25 * first.cost  # the stages' times alone would overrun
  found, measured, scale = cascade.fit_measured(candidates, budget, measure)
  assert scale == pytest.approx(1.25) and len(calls) == 2 and calls[0] == first.cascade
  assert measured == pytest.approx(1.25 * modelled(found.cascade)) and measured <= 2.5
  assert found.cost == pytest.approx(measured)
  fits = candidates.cost * 1.25 <= 2.5 * (1 + 1e-12)
  assert found.accuracy == pytest.approx(candidates.accuracy[fits].max())
  assert found.accuracy < first.accuracy
  # One round: the overrunning choice comes back with its measurement, for the caller to report.
  found, measured, scale = cascade.fit_measured(candidates, budget, measure, rounds=1)
  assert found.cascade == first.cascade and scale == 1.0 and budget.exceeded_by(measured)
  # An accuracy target is the least cost that meets it whatever the scale: measured once.
  calls.clear()
  target = cascade.WithinAccuracy(2.0)
  found, measured, scale = cascade.fit_measured(candidates, target, measure)
  assert found == candidates.pick(target) and len(calls) == 1 and scale == 1.0
  # A budget that nothing meets once measured is the target error.
  with pytest.raises(ConfigError, match='no cascade of .* meets the target'):
    cascade.fit_measured(candidates, cascade.WithinBudget(1.1), measure)


# -- predict --cascade ----------------------------------------------------------------------------

def test_predict_cascade_end_to_end(model, tmp_path, capsys):
  dst, folders = model
  rng = np.random.default_rng(3)
  paths = [tmp_path / f'{i}.jpg' for i in range(9)]
  for i, path in enumerate(paths):
    _jpeg(path, (20 + 3 * i, 34 - i), rng)
  broken = tmp_path / 'broken.jpg'
  broken.write_text('not an image')
  argv = ['--model', str(dst), '--cascade']
  # Calibrated (on time, measured here) and written, then the images through it.
  assert predict_command.main([*argv, '--cascade-calibrate', '--max-drop=10', '--rule=margin',
                               '--calibration-images=24', f'--data-dir={folders}',
                               '--batch-size=4', str(paths[0]), str(broken), *map(str, paths[1:])
                               ]) == 1
  out, err = capsys.readouterr()
  chosen, record = cascade.read_cascade(dst)
  assert record['calibration']['images'] == 24 and record['calibration']['cost_unit'] == 'ms'
  assert record['calibration']['top1'] >= record['calibration']['largest_top1'] - 10
  # Time is checked on a whole pass; an accuracy target is not moved by it.
  assert record['calibration']['measured_cost_per_image'] > 0
  assert record['calibration']['cost_scale'] == 1.0
  err = err.splitlines()
  assert err[0].startswith('calibrating on 24 training images')
  assert err[1].startswith(f'cascade {chosen.describe()}: top-1 ') and 'wrote' in err[1]
  assert err[2] == (f'cascade {chosen.describe()} (from {dst / cascade.CASCADE_FILE}, calibrated '
                    f"on jax for top-1 within 10 points of the largest resolution's, at the "
                    f'least mean ms per image) on jax')
  assert err[3].startswith(f'error: {broken}: cannot read the image (')
  assert err[4].startswith('9 images in ') and ' left the cascade at ' in err[4]
  assert err[5] == ERROR + '1 of 10 images could not be read' and len(err) == 6
  manifest = manifests.read_manifest(dst)
  models = _models(dst)
  pixels = [predict.read_image(p) for p in paths]
  hand = _by_hand(models, pixels, chosen.resolutions, chosen.thresholds, chosen.rule)
  lines = out.splitlines()
  assert len(lines) == 9
  for path, line, (k, probs) in zip(paths, lines, hand):
    went = ' -> '.join(str(r) for r in chosen.resolutions[:k + 1])
    top = ', '.join(f'{n} {100 * p:.1f}%'
                    for n, p in predict.top_probabilities(probs, manifest['class_names'], 2))
    assert line.startswith(f'{path}: {went} px: ') and line.split(': ', 2)[2].startswith(top)

  # A cascade on the command line: thresholds of 0 stop every image at the smallest resolution.
  assert predict_command.main([*argv, '--cascade-resolutions=16,24', '--thresholds=0',
                               '--rule=ensemble', '--top=1', *map(str, paths[:3])]) == 0
  out, err = capsys.readouterr()
  assert err.splitlines()[0] == 'cascade 16 -> 24 px, rule ensemble, thresholds 0 (as given) on jax'
  for path, line in zip(paths, out.splitlines()):
    want = predict.top_classes(models[16](data.eval_view(pixels[paths.index(path)], 16)[None])[0],
                               manifest['class_names'], 1)[0]
    assert line == f'{path}: 16 px: {want[0]} {100 * want[1]:.1f}%'
  (dst / cascade.CASCADE_FILE).unlink()


def test_bad_input_is_one_line(model, tmp_path, capsys):
  dst, _ = model
  image = tmp_path / 'a.jpg'
  _jpeg(image, (30, 30), np.random.default_rng(4))
  corrupt = tmp_path / 'corrupt.json'
  corrupt.write_text('{"resolutions": [16, 24]')
  cases = {
      ('--cascade-resolutions=16,99', '--thresholds=0.5'): 'the model has no resolution 99',
      (): 'no cascade calibration at',
      ('--cascade-resolutions=16,24', '--thresholds=1.5'): r'thresholds must be in \[0, 1\]',
      ('--cascade-resolutions=16,24', '--thresholds=-0.1'): r'thresholds must be in \[0, 1\]',
      ('--cascade-resolutions=16,24', '--thresholds=nan'): r'thresholds must be in \[0, 1\]',
      ('--cascade-resolutions=16,20,24', '--thresholds=0.5'): 'takes 2 thresholds',
      ('--cascade-resolutions=24,16', '--thresholds=0.5'): 'must increase, smallest first',
      ('--cascade-resolutions=16,24', '--thresholds=high'): '--thresholds takes comma-separated',
      ('--cascade-resolutions=16,24',): 'give --cascade-resolutions and --thresholds together',
      ('--cascade-resolutions=16,24', '--thresholds=0.5', '--rule=vote'): "unknown confidence "
                                                                           "rule 'vote'",
      ('--resolution=16',): '--resolution chooses one resolution for every image',
      ('--cascade-file', str(corrupt)): 'cannot read the cascade calibration',
      ('--batch-size=0', '--cascade-resolutions=16,24', '--thresholds=0.5'): 'at least 1',
      ('--max-drop=1',): '--max-drop goes with --cascade-calibrate',
  }
  for flags, message in cases.items():
    assert predict_command.main(['--model', str(dst), '--cascade', *flags, str(image)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(ERROR), (flags, err)
    assert re.search(message, err[0]), (flags, err)
  calibrations = {
      ('--mean-ms=-1',): 'must be positive',
      ('--max-drop=1', '--mean-macs=1e6'): 'give one calibration target',
      ('--mean-macs=1',): 'no cascade of .* meets the target',
      ('--cascade-resolutions=16,18',): 'the model has no resolution 18',
      ('--calibration-images=0',): 'at least 1',
  }
  for flags, message in calibrations.items():
    assert predict_command.main(['--model', str(dst), '--cascade-calibrate', *flags]) == 1
    err = capsys.readouterr().err.splitlines()
    # A target found out of reach only after calibrating follows the progress line.
    assert err[-1].startswith(ERROR) and len(err) <= 2, (flags, err)
    assert not any(line.startswith(ERROR) or 'Traceback' in line for line in err[:-1]), err
    assert re.search(message, err[-1]), (flags, err)
  assert not (dst / cascade.CASCADE_FILE).exists()
  assert json.loads((dst / manifests.MANIFEST).read_text())['resolutions']  # untouched
