"""The jitted multi-resolution train step: sharding-invariant, per-resolution BatchNorm, learns."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsnets_jax
from rsnets_jax import defaults, errors
from rsnets_jax.data import preprocess
from rsnets_jax.train import losses, optim, recalibrate, sharding, step as steps
from rsnets_jax.models import RSNet

from helpers import override


def tiny_config(**overrides):
  c = override(defaults.get_config(), arch='resnet18', width=0.125, num_classes=4,
               resolutions=(32, 16), batch_size=16, num_epochs=1, learning_rate=0.1,
               weight_decay=1e-4)
  return override(c, **overrides)


def learnable_batch(n, res, seed):
  """Class k: a bright quadrant k on noise; learnable in a few steps at any resolution."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n).astype(np.int32)
  images = rng.integers(0, 100, (n, res, res, 3)).astype(np.uint8)
  h = res // 2
  for i, k in enumerate(labels):
    images[i, (k // 2) * h:(k // 2 + 1) * h, (k % 2) * h:(k % 2 + 1) * h] += 120
  return {'image': images, 'label': labels}


def run_steps(config, devices, batches, seed=None):
  """`seed` None: key 0 for both the weights and the steps, the draws this file's tolerances
  were set on; else the keys of a run with that seed."""
  net = RSNet(**config.model)
  optimizer = optim.create_optimizer(config.optim, len(batches), len(batches))
  mesh = sharding.make_mesh(devices)
  init_key, step_key = ((jax.random.key(0),) * 2 if seed is None else steps.run_keys(seed))
  state = sharding.replicate(steps.create_train_state(net, optimizer, init_key), mesh)
  step = steps.make_train_step(net, config, mesh)
  step_key = sharding.replicate(step_key, mesh)
  history = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh), step_key)
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def test_sharded_step_equals_single_device_step():
  config = tiny_config()
  batches = [learnable_batch(16, 32, seed) for seed in range(2)]
  one, hist_one = run_steps(config, jax.devices()[:1], batches)
  eight, hist_eight = run_steps(config, jax.devices()[:8], batches)
  assert len(jax.devices()) == 8
  for a, b in zip(hist_one, hist_eight):
    np.testing.assert_allclose(a['loss'], b['loss'], rtol=1e-5)
  # Only the order of floating-point reductions differs (a real sharding bug, such as per-device
  # BatchNorm statistics, moves parameters by orders of magnitude more).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  jax.tree.map(close, one.params, eight.params)
  jax.tree.map(close, one.stats, eight.stats)
  assert int(eight.step) == 2
  # Something did change: the test would be vacuous otherwise.
  assert not np.allclose(one.stats[16]['bn1']['mean'], 0)


def test_one_compiled_step_serves_every_seed_and_the_key_decides_the_flips():
  config = tiny_config()
  batches = [learnable_batch(16, 32, seed) for seed in range(2)]
  first, hist_first = run_steps(config, jax.devices(), batches, seed=0)
  other, hist_other = run_steps(config, jax.devices(), batches, seed=1)
  again, hist_again = run_steps(config, jax.devices(), batches, seed=0)
  net, mesh = RSNet(**config.model), sharding.make_mesh(jax.devices())
  step = steps.make_train_step(net, config, mesh)
  assert step._cache_size() == 1  # three runs, two seeds, one compilation
  # Not a different recipe: a different distillation is another step.
  assert steps.make_train_step(net, override(config.copy_and_resolve_references(),
                                             distillation='none'), mesh) is not step
  jax.tree.map(np.testing.assert_array_equal, first.params, again.params)
  assert hist_first[-1]['loss'] == hist_again[-1]['loss']
  assert hist_first[-1]['loss'] != hist_other[-1]['loss']


def test_the_flips_come_from_the_key_folded_with_the_step():
  """Same weights and batch, two step keys: the views (and so the loss) differ; the same key at
  the same step gives the same loss, as a resumed run needs."""
  config = tiny_config(distillation='none')
  net, mesh = RSNet(**config.model), sharding.make_mesh(jax.devices()[:1])
  optimizer = optim.create_optimizer(config.optim, 4, 4)
  step = steps.make_train_step(net, config, mesh)
  batch = sharding.shard_batch(learnable_batch(16, 32, 0), mesh)
  losses_by_key = []
  for key in (1, 2, 1):
    state = sharding.replicate(steps.create_train_state(net, optimizer, jax.random.key(0)), mesh)
    _, metrics = step(state, batch, sharding.replicate(jax.random.key(key), mesh))
    losses_by_key.append(float(metrics['loss']))
  assert losses_by_key[0] == losses_by_key[2] != losses_by_key[1]


def test_a_few_steps_lower_the_loss_at_every_resolution():
  config = tiny_config(resolutions=(32, 24, 16), learning_rate=0.03, batch_size=32)
  batches = [learnable_batch(32, 32, seed % 4) for seed in range(12)]
  _, history = run_steps(config, jax.devices(), batches)
  for res in config.model.resolutions:
    first = np.mean([h[f'ce/{res}'] for h in history[:3]])
    last = np.mean([h[f'ce/{res}'] for h in history[-3:]])
    assert last < 0.7 * first, (res, first, last)
  assert np.isclose(history[-1]['alpha'].sum(), 1.0)


def test_training_one_resolution_touches_only_its_batchnorm():
  net = rsnets_jax.create_model('resnet18', resolutions=(32, 24, 16), num_classes=4, width=0.125)
  params, stats = net.init(jax.random.key(0))
  batch = learnable_batch(8, 24, 0)
  x = jnp.asarray(batch['image'], jnp.float32) / 255

  def loss_fn(p):
    logits, new_stats = net.apply(p, stats[24], x, train=True)
    return losses.cross_entropy(logits, batch['label']), new_stats

  grads, new_stats24 = jax.grad(loss_fn, has_aux=True)(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  bn_grads = {jax.tree_util.keystr(path): g for path, g in flat if 'scale_' in str(path) or 'bias_' in str(path)}
  assert bn_grads
  for name, g in bn_grads.items():
    if name.endswith("_24']"):
      assert np.abs(g).max() > 0, name
    else:
      assert np.abs(g).max() == 0, name
  assert np.abs(grads['alpha']).max() == 0
  # One SGD step (no weight decay, which would also shrink untouched parameters).
  tx = optax.sgd(0.1, momentum=0.9)
  updated = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  for path, old in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path)
    new = dict(jax.tree_util.tree_flatten_with_path(updated)[0])[path]
    if ('scale_' in name or 'bias_' in name) and not name.endswith("_24']"):
      np.testing.assert_array_equal(old, new)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), stats[24], new_stats24)
  assert all(jax.tree.leaves(changed)[:-1]) or any(jax.tree.leaves(changed))
  assert int(new_stats24['resolution']) == 24
  assert not np.allclose(new_stats24['bn1']['var'], stats[24]['bn1']['var'])


def test_grouped_batchnorm_equals_separate_batches():
  """bn_group_size=G normalises each group of G examples by its own statistics, as G examples per
  GPU did in the reference; the running estimate is the groups' average."""
  grouped = rsnets_jax.create_model('resnet18', resolutions=(16,), num_classes=4, width=0.125,
                                    bn_group_size=4)
  plain = rsnets_jax.create_model('resnet18', resolutions=(16,), num_classes=4, width=0.125)
  params, stats = plain.init(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
  logits_g, stats_g = grouped.apply(params, stats[16], x, train=True)
  logits_a, stats_a = plain.apply(params, stats[16], x[:4], train=True)
  logits_b, stats_b = plain.apply(params, stats[16], x[4:], train=True)
  np.testing.assert_allclose(logits_g, np.concatenate([logits_a, logits_b]), rtol=1e-3, atol=1e-4)
  mean_of = lambda a, b, g: np.testing.assert_allclose((a + b) / 2, g, rtol=1e-4, atol=1e-6)
  jax.tree.map(mean_of, stats_a, stats_b, stats_g)
  with pytest.raises(ValueError, match='group size'):
    grouped.apply(params, stats[16], x[:6], train=True)


def test_eval_step_counts_masked_batch_exactly():
  config = tiny_config()
  net = RSNet(**config.model)
  params, stats = net.init(jax.random.key(0))
  mesh = sharding.make_mesh()
  eval_step = steps.make_eval_step(net, config.data, mesh)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 16).astype(np.int32)
  images = {r: rng.integers(0, 255, (16, r, r, 3)).astype(np.uint8) for r in (32, 16)}
  mask = np.arange(16) < 11
  sums = jax.device_get(eval_step(params, stats, sharding.shard_batch(
      {'images': images, 'label': labels, 'mask': mask}, mesh)))
  assert sums['count'] == 11
  for r in (32, 16):
    logits = np.asarray(net.apply(params, stats[r], jnp.asarray(images[r], jnp.float32) / 255))
    top1 = (logits.argmax(-1) == labels)[mask].sum()
    top4 = np.any(np.argsort(-logits, -1)[:, :4] == labels[:, None], -1)[mask].sum()
    assert sums[f'top1/{r}'] == top1 and sums[f'top5/{r}'] == top4 == 11
  assert 'top1/ensemble' in sums


def test_a_warmup_as_long_as_the_run_is_a_config_error():
  config = tiny_config(warmup_epochs=1.0, num_epochs=1)
  with pytest.raises(errors.ConfigError, match='warmup_epochs=1.0 .* shorter than num_epochs'):
    optim.create_optimizer(config.optim, 4, 4)
  optim.create_optimizer(config.optim, 5, 4)  # one step of cosine is enough


def test_an_unknown_flip_or_distillation_is_a_config_error_before_any_work():
  for field, value, message in (('flip', 'sideways', 'data.flip must be one of'),
                                ('distillation', 'all', 'distillation must be one of')):
    config = tiny_config(**{field: value})
    with pytest.raises(errors.ConfigError, match=message):
      defaults.check(config)


def test_a_between_size_is_trained_as_add_resolution_runs_it():
  """`between_resolutions`: each step draws one size from the list by the step key and adds its
  loss and gradient, computed by hand here as `add_resolution` would run that size (edge padding,
  affine interpolated between its neighbours, train-mode BatchNorm) on its own view, taught by
  the ensemble: one SGD step without momentum or decay gives the RS-Nets gradient plus its own."""
  sizes = (28, 24, 20)
  config = tiny_config(between_resolutions=sizes, distillation='ens', weight_decay=0.0,
                       momentum=0.0)
  net, mesh = RSNet(**config.model), sharding.make_mesh(jax.devices()[:1])
  optimizer = optim.create_optimizer(config.optim, 4, 4)
  step = steps.make_train_step(net, config, mesh)
  batch = learnable_batch(16, 32, 0)
  state0 = steps.create_train_state(net, optimizer, jax.random.key(0))
  params, stats = jax.device_get(state0.params), jax.device_get(state0.stats)
  lr = float(state0.learning_rate(0))

  @functools.partial(jax.jit, static_argnums=0)
  def by_hand(res, key):
    """(the drawn size's loss, the step's update) for a step key `key` at step 0."""
    step_key = jax.random.fold_in(key, 0)
    views = preprocess.train_views(batch['image'], net.resolutions, step_key)
    (_, (_, parts, _, _)), rs_grads = jax.value_and_grad(steps.compute_train_loss, has_aux=True)(
        params, params, stats, views, batch['label'], net, 'ens')
    between_key = jax.random.fold_in(step_key, steps._BETWEEN_STREAM)
    x = preprocess.train_views(batch['image'], (res,), jax.random.fold_in(between_key, res))[res]
    added = recalibrate.added_network(net, res, 'edge')

    def size_loss(p):
      p = recalibrate.blended_affine(p, recalibrate.affine_sources(net.resolutions, res), res)
      logits, _, _ = added.forward(p, net.check_stats(stats[32], 32), x, train=True)
      return (losses.cross_entropy(logits, batch['label']) +
              losses.kl_divergence(parts['ens_logits'], logits))
    loss, grads = jax.value_and_grad(size_loss)(params)
    update = jax.tree.map(lambda p, a, b: p - lr * (a + b), params, rs_grads, grads)
    return loss, update

  drawn = set()
  for seed in range(3):
    key = jax.random.key(seed)
    state = steps.create_train_state(net, optimizer, jax.random.key(0))  # donated by the step
    new_state, metrics = step(sharding.replicate(state, mesh),
                              sharding.shard_batch(batch, mesh), sharding.replicate(key, mesh))
    between_key = jax.random.fold_in(jax.random.fold_in(key, 0), steps._BETWEEN_STREAM)
    res = sizes[int(jax.random.randint(between_key, (), 0, len(sizes)))]
    drawn.add(res)
    loss, update = by_hand(res, key)
    np.testing.assert_allclose(metrics['between'], loss, rtol=1e-5)
    rs = (sum(metrics[f'ce/{r}'] for r in net.resolutions) + metrics['ens_ce'] + metrics['kd'])
    np.testing.assert_allclose(metrics['loss'], rs + metrics['between'], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 jax.device_get(new_state.params), update)
  assert len(drawn) > 1


def test_between_sizes_reach_the_weights_and_only_their_neighbours_affine():
  config = tiny_config(resolutions=(32, 24, 16), between_resolutions=(28,), distillation='none')
  net = RSNet(**config.model)
  params, stats = net.init(jax.random.key(0))
  batch = learnable_batch(8, 32, 0)
  x = preprocess.train_views(batch['image'], (28,), jax.random.key(1))[28]
  untagged = net.check_stats(stats[32], 32)
  loss, grads = steps.between_size_value_and_grad(
      net, (28,), params, params, untagged, None, batch['label'], lambda r: x, jax.random.key(2),
      'none')
  bn1 = grads['bn1']
  assert np.abs(bn1['scale_32']).max() > 0 and np.abs(bn1['scale_24']).max() > 0
  assert np.abs(bn1['scale_16']).max() == 0
  # Halfway between 32 and 24: each neighbour gets half the gradient of the blended pair.
  np.testing.assert_allclose(bn1['scale_32'], bn1['scale_24'], rtol=1e-6)
  assert np.abs(grads['conv1']['kernel']).max() > 0 and np.abs(grads['alpha']).max() == 0
  assert np.isfinite(loss) and loss > 0


def test_between_sizes_outside_the_trained_range_are_a_config_error():
  for sizes in ((40,), (32,), (16,), (24, 24), (12,)):
    config = tiny_config(between_resolutions=sizes)
    with pytest.raises(errors.ConfigError, match='between_resolutions must be distinct sizes '
                                                 'strictly between 16 and 32'):
      defaults.check(config)
  defaults.check(tiny_config(between_resolutions=(30, 18)))
