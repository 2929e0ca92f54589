"""The Imagenette runner's own parts (experiments/imagenette/run.py): on-device crops equal to the
input pipeline's PIL crops, the per-epoch plan, exact evaluation batches, the one-BatchNorm
evaluation of an individual network, and the rule that turns small differences into ties."""
import importlib.util
import os

import jax
import numpy as np
from PIL import Image

from rsnets_jax import data, defaults, train

RUNNER = os.path.join(os.path.dirname(__file__), '..', 'experiments', 'imagenette', 'run.py')


def load_runner():
  spec = importlib.util.spec_from_file_location('imagenette_run', RUNNER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


run = load_runner()


def test_device_crops_match_pil_random_resized_crop():
  rng = np.random.default_rng(0)
  # Smooth images with some texture, so that resampling errors would show.
  yy, xx = np.mgrid[0:40, 0:48]
  base = np.stack([yy * 5, xx * 4, (yy * xx) % 256], -1)
  images = np.clip(base[None] + rng.integers(0, 40, (6, 40, 48, 3)), 0, 255).astype(np.uint8)
  for size in (24, 40, 64):  # downscaled, mixed, upscaled crops
    seeds = [np.random.default_rng(i) for i in range(len(images))]
    boxes = np.array([data.crop_params(np.random.default_rng(i), 40, 48, (0.2, 1.0))
                      for i in range(len(images))], np.int32)
    expected = np.stack([data.random_resized_crop(Image.fromarray(im), size, s, (0.2, 1.0))
                         for im, s in zip(images, seeds)])
    got = np.asarray(jax.jit(run.crop_and_resize, static_argnums=3)(
        images, np.arange(len(images)), boxes, size))
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert got.shape == expected.shape and got.dtype == np.uint8
    # PIL's weights are fixed-point: a value that is exactly x.5 in real arithmetic (common on
    # these smooth ramps) may round the other way, never by more than one grey level.
    assert diff.max() <= 1 and diff.mean() < 0.1, (size, diff.max(), diff.mean())


def test_epoch_plan_is_a_fixed_permutation_per_seed_and_epoch():
  order, boxes = run.epoch_plan(3, 1, 50, 32, 32, 0.35)
  again, boxes_again = run.epoch_plan.__wrapped__(3, 1, 50, 32, 32, 0.35)
  np.testing.assert_array_equal(order, again)
  np.testing.assert_array_equal(boxes, boxes_again)
  assert sorted(order) == list(range(50))
  assert not np.array_equal(order, run.epoch_plan(3, 2, 50, 32, 32, 0.35)[0])
  assert not np.array_equal(order, run.epoch_plan(4, 1, 50, 32, 32, 0.35)[0])
  top, left, h, w = boxes.T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
  assert (h * w >= 0.35 * 32 * 32 * 0.9).all()  # rounding of the drawn sides


def test_eval_batches_count_every_image_once():
  views = {16: np.arange(11)[:, None, None, None] * np.ones((1, 16, 16, 3), np.uint8),
           8: np.zeros((11, 8, 8, 3), np.uint8)}
  labels = np.arange(11, dtype=np.int32)
  batches = list(run.eval_batches(views, labels, (16, 8), 4))
  assert len(batches) == 3 and all(b['images'][16].shape == (4, 16, 16, 3) for b in batches)
  seen = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(seen, labels)
  assert sum(int(b['mask'].sum()) for b in batches) == 11


def test_balanced_subset_spreads_over_the_sorted_list():
  np.testing.assert_array_equal(run.balanced_subset(10, 0), np.arange(10))
  np.testing.assert_array_equal(run.balanced_subset(10, 5), [0, 2, 4, 7, 9])


def test_fixed_bn_eval_matches_the_engine_at_the_trained_size_and_runs_at_others():
  config = defaults.get_config()
  config.num_classes, config.width, config.resolutions = 4, 0.125, (16,)
  mesh = train.make_mesh()
  net = train.create_network(config)
  params, stats = net.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {'images': {16: rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                      12: rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8)},
           'label': rng.integers(0, 4, (8,), dtype=np.int32),
           'mask': np.array([True] * 6 + [False] * 2)}
  own = {'images': {16: batch['images'][16]}, 'label': batch['label'], 'mask': batch['mask']}
  engine = jax.device_get(train.make_eval_step(net, config, mesh)(
      params, stats, train.shard_batch(own, mesh)))
  fixed = jax.device_get(run.make_fixed_bn_eval_step(net, config, mesh)(
      params, net.check_stats(stats[16], 16), train.shard_batch(batch, mesh)))
  assert int(fixed['count']) == 6
  for k in ('top1/16', 'top5/16'):
    assert int(fixed[k]) == int(engine[k])
  assert 0 <= int(fixed['top1/12']) <= 6


def _table(top1_by_res, per_seed=None):
  rows = []
  for res, top1 in top1_by_res.items():
    row = {'resolution': res, 'macs': res, 'trained': True, 'top1': top1, 'top5': None}
    if per_seed:
      row['top1_per_seed'] = per_seed[res]
      row['top1_spread'] = max(per_seed[res]) - min(per_seed[res])
    rows.append(row)
  return {'rows': rows, 'seeds': [0, 1] if per_seed else [0]}


def test_differences_within_the_seed_spread_are_ties():
  tables = {
      'inets': _table({32: 50.0, 16: 40.0}, {32: [49.0, 51.0], 16: [39.5, 40.5]}),
      'ens_topdown': _table({32: 51.5, 16: 42.0}, {32: [51.0, 52.0], 16: [41.9, 42.1]}),
  }
  verdicts = {x['resolution']: x for x in run.compare(tables, (32, 16))}
  assert verdicts[32]['verdict'] == 'tie' and verdicts[32]['seed_spread'] == 2.0
  assert verdicts[16]['verdict'] == 'a better' and verdicts[16]['holds']
  assert abs(verdicts[16]['delta'] - 2.0) < 1e-9
