"""Quantized RS-Nets: the reference's networks, shared quantizers, the refit inside the step,
its data protocol, and the product's command on a W2/A2 network."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import rsnets_jax
from rsnets_jax import defaults, models
from rsnets_jax.data import preprocess, transforms
from rsnets_jax.models import quantizers
from rsnets_jax.train import optim, sharding, step as steps
from rsnets_jax.models import RSNet

from helpers import config_flags, override
from test_main import main
from test_train import learnable_batch


def count_quantizers(net):
  params, _ = net.init_shapes()
  paths = [p[:-1] for p in traverse_util.flatten_dict(params['quantizers']) if p[-1] == 'basis']
  weights = sum(p[-1] == 'weight_quantizer' for p in paths)
  return weights, len(paths) - weights


@pytest.mark.parametrize('arch,weights,activations', [
    ('lq_preact_resnet18', 19, 16), ('lq_preact_resnet50', 52, 48), ('lq_resnet18', 19, 0),
    ('lq_resnet50', 52, 0)])
def test_quantizer_counts(arch, weights, activations):
  bits = 2 if activations else 32
  net = rsnets_jax.create_model(arch, (224, 96), weight_bits=2, activation_bits=bits)
  assert count_quantizers(net) == (weights, activations)


def test_w2a2_forward_has_at_most_four_values():
  net = rsnets_jax.create_model('lq_preact_resnet18', (16, 12), 10, width=0.125, weight_bits=2,
                                activation_bits=2)
  params, stats = net.init(jax.random.key(0))

  @jax.jit
  def forward_recording_quantizers(params, stats, x):
    seen = {'weight': [], 'activation': []}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, quantizers.Quantizer) and context.method_name == '__call__':
        seen[context.module.kind].append(out)
      return out

    with nn.intercept_methods(record):
      return net.apply(params, stats, x), seen

  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  logits, seen = jax.device_get(forward_recording_quantizers(params, stats[16], x))
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits))
  assert len(seen['weight']) == 19 and len(seen['activation']) == 16
  for kernel in seen['weight']:
    flat = kernel.reshape(-1, kernel.shape[-1])
    assert max(len(np.unique(flat[:, c])) for c in range(flat.shape[1])) <= 4
  for activation in seen['activation']:
    assert len(np.unique(activation)) <= 4
  # Stem and classifier stay full precision: many distinct values.
  assert len(np.unique(np.asarray(params['conv1']['kernel']))) > 100
  assert len(np.unique(np.asarray(params['fc']['kernel']))) > 100


def test_post_activation_network_zero_inits_last_batchnorm():
  net = rsnets_jax.create_model('lq_resnet18', (32, 24), 10, width=0.25, weight_bits=2)
  params, _ = net.init(jax.random.key(0))
  block = params['layer2_0']
  for res in (32, 24):
    assert np.all(np.asarray(block['bn2'][f'scale_{res}']) == 0)
    assert np.all(np.asarray(block['bn1'][f'scale_{res}']) == 1)
    assert np.all(np.asarray(block['downsample_bn'][f'scale_{res}']) == 1)
  assert 'weight_quantizer' not in params['quantizers'].get('conv1', {})  # the stem


def test_bit_options_are_checked():
  with pytest.raises(ValueError, match='needs a network with weight quantizers'):
    rsnets_jax.create_model('resnet18', weight_bits=2)
  with pytest.raises(ValueError, match='needs a network with activation quantizers'):
    rsnets_jax.create_model('lq_resnet18', weight_bits=2, activation_bits=2)
  with pytest.raises(ValueError, match='bit widths are 1 to 4'):
    rsnets_jax.create_model('lq_resnet18', weight_bits=8)


def quantized_config(**overrides):
  c = override(defaults.get_config(), arch='lq_preact_resnet18', weight_bits=2, activation_bits=2,
               width=0.125, num_classes=4, resolutions=(16, 8), batch_size=16, num_epochs=1,
               learning_rate=0.1, weight_decay=5e-5, weight_decay_on='kernels', nesterov=True)
  return override(c, **overrides)


def test_train_step_folds_every_resolutions_refit_into_one_shared_state():
  """On 8 devices the refits equal one unsharded computation: their statistics are over the
  global batch."""
  config = quantized_config()
  net = RSNet(**config.model)
  mesh = sharding.make_mesh(jax.devices()[:8])
  optimizer = optim.create_optimizer(config.optim, 4, 4)
  start = steps.create_train_state(net, optimizer, jax.random.key(0))
  batch = learnable_batch(16, 16, 0)
  step = steps.make_train_step(net, config, mesh)
  rng = jax.random.key(3)
  expected_start = jax.device_get(start)
  state, _ = step(sharding.replicate(start, mesh), sharding.shard_batch(batch, mesh),
                  sharding.replicate(rng, mesh))
  state = jax.device_get(state)

  # The same refit by hand: every resolution's forward at the start-of-step state, then the
  # targets folded largest resolution first.
  views = preprocess.train_views(jnp.asarray(batch['image']), net.resolutions,
                                 jax.random.fold_in(rng, 0), config.data.flip, None, None)

  @jax.jit
  def refit_by_hand(params, stats, views):
    targets = [net.forward(params, {k: v for k, v in stats[r].items() if k != 'resolution'},
                           views[r], train=True)[2] for r in net.resolutions]
    return quantizers.fold_targets(params['quantizers'], targets)

  expected = refit_by_hand(expected_start.params, expected_start.stats, views)

  flat = traverse_util.flatten_dict(state.params['quantizers'])
  flat_expected = traverse_util.flatten_dict(expected)
  assert flat.keys() == flat_expected.keys()
  for path, value in flat.items():
    np.testing.assert_allclose(value, flat_expected[path], rtol=1e-4, atol=1e-7, err_msg=str(path))
    if path[-1] == 'step':
      assert int(value) == 2, path  # one update per resolution
  # One shared quantizer state moved; BatchNorm statistics stay one tree per resolution.
  initial = traverse_util.flatten_dict(expected_start.params['quantizers'])
  assert not np.allclose(flat[('layer2_0', 'conv1', 'weight_quantizer', 'basis')],
                         initial[('layer2_0', 'conv1', 'weight_quantizer', 'basis')])
  means = [np.asarray(state.stats[r]['bn1']['mean']) for r in net.resolutions]
  assert not np.allclose(means[0], means[1])


def test_fixed_activation_refit_uses_the_largest_resolution_only():
  weight_state = quantizers.init_state(quantizers.init_weight_basis(2, (3, 3, 4, 2)))
  activation_state = quantizers.init_state(quantizers.init_activation_basis(2))
  states = {'conv': {'weight_quantizer': weight_state}, 'quant': activation_state}
  targets = [{'conv': {'weight_quantizer': {'weight': jnp.full((2, 2), 0.1 * (i + 1))}},
              'quant': {'activation': jnp.full((2, 1), 0.5 * (i + 1))}} for i in range(3)]
  every = quantizers.fold_targets(states, targets)
  largest = quantizers.fold_targets(states, targets, activations_from_largest_only=True)
  assert int(every['quant']['step']) == 3 and int(largest['quant']['step']) == 1
  np.testing.assert_allclose(largest['quant']['basis'], 0.5, rtol=1e-6)  # the first target only
  for folded in (every, largest):
    assert int(folded['conv']['weight_quantizer']['step']) == 3
  # Three zero-debiased updates towards 0.1, 0.2, 0.3 in that order (not commutative).
  expected = sum(0.1 * (i + 1) * 0.1 * 0.9**(2 - i) for i in range(3)) / (1 - 0.9**3)
  np.testing.assert_allclose(every['conv']['weight_quantizer']['basis'], expected, rtol=1e-5)


def test_weight_decay_on_kernels_only_and_never_on_quantizers():
  config = quantized_config(weight_decay=0.5, learning_rate=1.0, momentum=0.0)
  net = RSNet(**config.model)
  params, _ = net.init(jax.random.key(0))
  tx, _ = optim.create_optimizer(config.optim, 4, 4)
  train = models.trainable(params)
  assert 'quantizers' not in train
  zero = jax.tree.map(jnp.zeros_like, train)
  updates, _ = tx.update(zero, tx.init(train), train)
  flat_updates = traverse_util.flatten_dict(updates)
  for path, update in flat_updates.items():
    value = traverse_util.flatten_dict(train)[path]
    if path[-1] == 'kernel':
      np.testing.assert_allclose(update, -0.5 * value, rtol=1e-6)
    else:  # BatchNorm, alpha, the classifier's bias
      assert np.all(np.asarray(update) == 0), path


def test_step_schedule():
  config = quantized_config(schedule='steps', decay_epochs=(2, 3), learning_rate=0.1)
  _, schedule = optim.create_optimizer(config.optim, 40, 10)
  np.testing.assert_allclose([schedule(s) for s in (0, 19, 20, 29, 30, 39)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  config = quantized_config(schedule='steps', decay_epochs=(2,), warmup_epochs=1.0)
  _, schedule = optim.create_optimizer(config.optim, 40, 10)
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 19, 20)],
                             [0.0, 0.05, 0.1, 0.1, 0.01], rtol=1e-6)


def test_tf1_nearest_index_table():
  for size in (192, 160, 128, 96):
    table = preprocess.nearest_tf1_indices(224, size)
    scale = np.float32(224) / np.float32(size)
    formula = [min(int(np.floor(np.float32(i) * scale)), 223) for i in range(size)]
    np.testing.assert_array_equal(table, formula)
    # jax.image.resize(method='nearest') samples pixel centres: another table at every size here.
    ramp = jnp.arange(224, dtype=jnp.float32)[None, :, None, None] * jnp.ones((1, 1, 224, 1))
    centres = np.asarray(jax.image.resize(ramp, (1, size, size, 1), 'nearest'))[0, :, 0, 0]
    assert np.any(centres.astype(int) != table), size
    # On device: the same table picks the rows and columns of the view.
    image = jnp.asarray(np.random.default_rng(size).integers(0, 255, (2, 224, 224, 3)), jnp.float32)
    view = preprocess.resize(image, size, 'nearest_tf1')
    np.testing.assert_array_equal(view, np.asarray(image)[:, table][:, :, table])
  np.testing.assert_array_equal(preprocess.nearest_tf1_indices(224, 160)[:8], [0, 1, 2, 4, 5, 7, 8, 9])


def test_quantized_protocol_views():
  crops = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)), jnp.uint8)
  key = jax.random.key(0)
  views = preprocess.train_views(crops, (16, 8), key, 'shared', None, None, 'nearest_tf1', 0.1)
  plain = preprocess.train_views(crops, (16, 8), key, 'shared', None, None, 'nearest_tf1', 0.0)
  # One flip of the crop, before the smaller view is taken from it: the 8 px view is the nearest
  # resize of the 16 px one, flipped or not alike.
  table = preprocess.nearest_tf1_indices(16, 8)
  np.testing.assert_array_equal(plain[8], np.asarray(plain[16])[:, table][:, :, table])
  # Lighting shifts each image by one RGB offset (before clipping), a different one per image.
  shift = np.asarray(views[16] - plain[16])
  unclipped = (np.asarray(plain[16]) > 0.1) & (np.asarray(plain[16]) < 0.9)
  for i in range(8):
    for c in range(3):
      values = shift[i, ..., c][unclipped[i, ..., c]]
      np.testing.assert_allclose(values, values[0], atol=1e-5)
  assert len({round(float(shift[i, 0, 0, 0]), 5) for i in range(8)}) > 4


def test_googlenet_crop_params():
  rng = np.random.default_rng(0)
  aspects = []
  for _ in range(300):
    top, left, h, w = transforms.googlenet_crop_params(rng, 120, 160, (0.08, 1.0))
    assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
    assert 0.08 * 0.9 <= h * w / (120 * 160) <= 1.0 + 1e-9
    aspects.append(w / h)
  # Uniform in [0.75, 1.333] (a range its own inverse, so the swap keeps it), up to rounding.
  assert 0.7 < min(aspects) < 0.8 and 1.28 < max(aspects) < 1.43
  assert 0.4 < np.mean(np.array(aspects) > 1) < 0.6
  # Nothing fits a 1000x10 strip (area 0.9 or more): the centred square of the shorter side.
  assert transforms.googlenet_crop_params(rng, 10, 1000, (0.9, 1.0)) == (0, 495, 10, 10)
  a = transforms.googlenet_crop_params(np.random.default_rng(5), 64, 64)
  assert a == transforms.googlenet_crop_params(np.random.default_rng(5), 64, 64)


def test_eval_views_nearest_from_largest():
  from PIL import Image
  pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3)).astype(np.uint8)
  image = Image.fromarray(pixels)
  views = transforms.eval_views(image, (32, 24, 16), 'nearest_from_largest', 'bicubic')
  big = transforms.eval_view(image, 32, 'bicubic')
  np.testing.assert_array_equal(views[32], big)
  for res in (24, 16):
    table = preprocess.nearest_tf1_indices(32, res)
    np.testing.assert_array_equal(views[res], big[table][:, table])
  # An added resolution is taken from the largest training resolution's view too.
  added = transforms.eval_views(image, (20,), 'nearest_from_largest', 'bicubic', largest=32)
  np.testing.assert_array_equal(added[20], big[preprocess.nearest_tf1_indices(32, 20)][
      :, preprocess.nearest_tf1_indices(32, 20)])
  per_res = transforms.eval_views(image, (32, 24), 'per_resolution')
  np.testing.assert_array_equal(per_res[24], transforms.eval_view(image, 24))


QUANTIZED_RUN = config_flags(dataset='synthetic', num_classes=16, resolutions='(16, 8)',
                             width=0.125, synthetic_image_size=24, synthetic_train_size=64,
                             synthetic_val_size=40, batch_size=16, eval_batch_size=40,
                             num_workers=0, read_threads=2, checkpoint_every_steps=2,
                             eval_every_epochs=0, log_every_steps=1)


def test_main_trains_resumes_and_evaluates_a_w2a2_network(tmp_path):
  """configs/resnet18_w2a2.py, the whole quantized protocol (crop, lighting, nearest views, step
  schedule, kernel-only weight decay, refits) on generated data, through the product's command."""
  cache = tmp_path / 'xla_cache'
  workdir = tmp_path / 'run'
  config = 'configs/resnet18_w2a2.py'
  code, out = main(workdir, *QUANTIZED_RUN, '--config.max_steps=4', config=config, cache=cache)
  assert code == 0, out[-3000:]
  code, out = main(workdir, *QUANTIZED_RUN, '--config.max_steps=6', config=config, cache=cache)
  assert code == 0, out[-3000:]
  assert 'resumed from step 4' in out, out[-3000:]
  net, params, stats = rsnets_jax.load(workdir)
  assert (net.arch, net.weight_bits, net.activation_bits) == ('lq_preact_resnet18', 2, 2)
  flat = traverse_util.flatten_dict(params['quantizers'])
  # Six steps of two resolutions each: twelve updates of every quantizer, across the resume.
  assert {int(v) for k, v in flat.items() if k[-1] == 'step'} == {12}
  # The resumed run's final evaluation: every validation image once, at both resolutions.
  results = json.loads((workdir / 'results.json').read_text())
  assert results['count'] == 40 and [r['resolution'] for r in results['rows']] == [16, 8]
  assert results['step'] == 6


def test_added_resolution_keeps_the_shared_quantizers():
  """BatchNorm recalibration of a quantized network adds a resolution's statistics and leaves
  the quantizer state, which no resolution owns, as it was."""
  net = rsnets_jax.create_model('lq_preact_resnet18', (16, 8), 4, width=0.125, weight_bits=2,
                                activation_bits=2)
  params, stats = net.init(jax.random.key(0))
  images = np.random.default_rng(0).random((8, 12, 12, 3)).astype(np.float32)
  net2, params2, stats2 = rsnets_jax.add_resolution(net, params, stats, 12, [images])
  assert net2.all_resolutions == (16, 12, 8) and net2.weight_bits == 2
  same = jax.tree.map(np.array_equal, params['quantizers'], params2['quantizers'])
  assert all(jax.tree.leaves(same))
  logits = net2.apply(params2, stats2[12], images[:2])
  assert logits.shape == (2, 4) and np.all(np.isfinite(logits))
