"""The train state and the jitted, sharded steps: `train_step(state, batch, rng) -> (state, metrics)`
and `eval_step(params, stats, batch) -> sums`.

One `jax.jit` runs every resolution: the host sends uint8 crops at the largest resolution, the step
makes each resolution's view on device, runs forward and backward through the shared weights with
each resolution's own BatchNorm, and applies the RS-Nets loss. The batch is split over the mesh's
'data' axis across every device of every host; the state is replicated. BatchNorm statistics are
plain means over the batch axis, so under this sharding XLA computes them over the global batch
(or over fixed groups of `bn_group_size` examples), with no axis names in the model.

The randomness of a step (the flips) is `fold_in(rng, state.step)` of the key passed in, as
big_vision's `update_fn(train_state, rng, batch)`: one compiled step serves every seed, and a
resumed run draws exactly what an uninterrupted one would. Steps are cached by what they are
compiled from, so a second run of the same network and recipe in one process compiles nothing.
"""
import functools
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rsnets_jax import losses, preprocess
from rsnets_jax.errors import ConfigError
from rsnets_jax.network import RESOLUTION_KEY, RSNet, trainable

DATA_AXIS = 'data'


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  stats: Dict[int, Any]  # stats[res]: that resolution's BatchNorm running statistics
  opt_state: Any


# -- optimiser and state --------------------------------------------------------------------------

SCHEDULES = ('cosine', 'steps')
WEIGHT_DECAY_ON = ('all', 'kernels')


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """After an optional linear warm-up of `optim.warmup_epochs` (the references have none):
  'cosine', per-step cosine decay to zero at `total_steps` (the full-precision reference), or
  'steps', the rate times `optim.decay_factor` at each of `optim.decay_epochs` (the quantized
  reference: x0.1 at epochs 30, 60, 85, 95, 105 of 120)."""
  if optim.schedule not in SCHEDULES:
    raise ConfigError(f'optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}')
  total = max(int(total_steps), 1)
  warmup = int(optim.warmup_epochs * steps_per_epoch)
  if warmup >= total:
    raise ConfigError(f'optim.warmup_epochs={optim.warmup_epochs} ({warmup} steps) leaves nothing '
                      f'of the {total}-step schedule; make it shorter than num_epochs')
  if optim.schedule == 'cosine':
    if warmup:
      return optax.warmup_cosine_decay_schedule(0.0, optim.learning_rate, warmup, total, 0.0)
    return optax.cosine_decay_schedule(optim.learning_rate, total)
  epochs = tuple(optim.decay_epochs)
  if list(epochs) != sorted(set(epochs)) or any(e <= 0 for e in epochs):
    raise ConfigError(f'optim.decay_epochs must be increasing positive epochs, got {epochs}')
  boundaries = {int(round(e * steps_per_epoch)): optim.decay_factor for e in epochs}
  steps = optax.piecewise_constant_schedule(optim.learning_rate, boundaries)
  if not warmup:
    return steps
  ramp = optax.linear_schedule(0.0, optim.learning_rate, warmup)
  return optax.join_schedules([ramp, lambda step: steps(step + warmup)], [warmup])


def _kernels(params):
  """True at convolution and classifier kernels (leaves named 'kernel'), False elsewhere."""
  return flax.traverse_util.path_aware_map(lambda path, _: path[-1] == 'kernel', params)


def create_optimizer(optim: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
  """SGD as the references: weight decay added to the gradient (`optim.weight_decay_on`: 'all'
  parameters, BatchNorm and alpha included, as the full-precision reference; or 'kernels' only,
  as the quantized one), then momentum without dampening, Nesterov if the config asks.
  Returns the optimiser and its learning-rate schedule. It updates `trainable(params)`."""
  if optim.weight_decay_on not in WEIGHT_DECAY_ON:
    raise ConfigError(f'optim.weight_decay_on must be one of {WEIGHT_DECAY_ON}, '
                      f'got {optim.weight_decay_on!r}')
  schedule = learning_rate_schedule(optim, total_steps, steps_per_epoch)
  mask = _kernels if optim.weight_decay_on == 'kernels' else None
  tx = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask=mask),
                   optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov))
  return tx, schedule


def create_train_state(net: RSNet, tx: optax.GradientTransformation, key) -> TrainState:
  params, stats = net.init(key)
  return TrainState(step=jnp.int32(0), params=params, stats=stats,
                    opt_state=tx.init(trainable(params)))


def run_keys(seed: int) -> Tuple[jax.Array, jax.Array]:
  """`(init_key, step_key)` of a run: the initial weights and the steps' randomness."""
  init_key, step_key = jax.random.split(jax.random.key(seed))
  return init_key, step_key


# -- sharding -------------------------------------------------------------------------------------

def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over every device of every host (or the given ones); the batch is split over it."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch, mesh: Mesh):
  """Builds global arrays from each process's local part of the batch (its rows, in order)."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
  """`tree`, the same on every process, as arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    if jax.dtypes.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key):
      # device_put cannot place a key array on devices of other processes; its raw data it can.
      return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(x), sharding),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


# -- the steps ------------------------------------------------------------------------------------

def _untagged(stats):
  return {k: v for k, v in stats.items() if k != RESOLUTION_KEY}


def compute_train_loss(train_params, params, stats, views, labels, net: RSNet, distillation: str):
  """Loss over every resolution, the new statistics, the parts of the loss, and each
  resolution's quantizer refit targets (largest first; empty for a full-precision network).
  `train_params` (differentiated) replaces the trainable part of `params`; every resolution's
  forward reads the same start-of-step quantizer state.

  With private BatchNorm each resolution starts from its own statistics. With one shared BatchNorm
  the resolutions update the same statistics one after the other, as a single BatchNorm module
  called once per resolution does in PyTorch.
  """
  params = {**params, **train_params}
  logits, new_stats, targets = [], {}, []
  carried = None
  for res in net.resolutions:
    bn_in = carried if (net.shared_bn and carried is not None) else _untagged(stats[res])
    z, carried, quantizer_targets = net.forward(params, bn_in, views[res], train=True)
    logits.append(z)
    new_stats[res] = carried
    targets.append(quantizer_targets)
  if net.shared_bn:
    new_stats = {res: carried for res in net.resolutions}
  new_stats = {res: {RESOLUTION_KEY: stats[res][RESOLUTION_KEY], **s} for res, s in new_stats.items()}
  loss, parts = losses.rs_loss(logits, labels, params['alpha'], distillation)
  return loss, (new_stats, parts, logits, targets)


def input_normalisation(data: ml_collections.ConfigDict):
  """`(mean, std)` of the data config, or `(None, None)` for the reference's plain [0, 1] input."""
  as_tuple = lambda v: tuple(v) if v is not None else None
  return as_tuple(data.input_mean), as_tuple(data.input_std)


def top_k_correct(logits, labels, k: int):
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1)


def _frozen(section: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  return ml_collections.FrozenConfigDict(section)


def make_train_step(net: RSNet, config: ml_collections.ConfigDict, total_steps: int,
                    steps_per_epoch: int, mesh: Mesh):
  """The jitted `(state, batch, rng) -> (state, metrics)` of `config`'s recipe (optim,
  distillation, flips, input scaling), with `total_steps` in its learning-rate schedule.
  `batch` = {'image': uint8 (N, R, R, 3) at the largest resolution R, 'label': int32 (N,)}, split
  over the mesh's data axis; `rng` a replicated key (the run's step key). A distillation, flip
  or input scaling that losses.py or preprocess.py does not know is a ConfigError when the step is
  first traced."""
  mean, std = input_normalisation(config.data)
  return _train_step(net, _frozen(config.optim), config.distillation, config.data.flip, mean, std,
                     config.data.view_resize, float(config.data.lighting),
                     int(total_steps), int(steps_per_epoch), mesh)


@functools.lru_cache(maxsize=32)
def _train_step(net: RSNet, optim, distillation: str, flip: str, mean, std, view_resize: str,
                lighting: float, total_steps: int,
                steps_per_epoch: int, mesh: Mesh):
  tx, schedule = create_optimizer(optim, total_steps, steps_per_epoch)

  def train_step(state: TrainState, batch, rng):
    key = jax.random.fold_in(rng, state.step)
    views = preprocess.train_views(batch['image'], net.resolutions, key, flip, mean, std,
                                   view_resize, lighting)
    labels = batch['label']
    grad_fn = jax.value_and_grad(compute_train_loss, has_aux=True)
    train_params = trainable(state.params)
    (loss, (new_stats, parts, logits, targets)), grads = grad_fn(
        train_params, state.params, state.stats, views, labels, net, distillation)
    updates, opt_state = tx.update(grads, state.opt_state, train_params)
    params = {**state.params, **optax.apply_updates(train_params, updates)}
    # The quantizers' S refits, folded after the optimiser update, largest resolution first.
    params = net.update_quantizers(params, targets, optim.refit_activations_from_largest_only)
    metrics = {'loss': loss, 'ens_ce': parts['ens_ce'], 'kd': parts['kd'],
               'learning_rate': schedule(state.step),
               'alpha': jax.nn.softmax(params['alpha'])}
    for i, res in enumerate(net.resolutions):
      metrics[f'ce/{res}'] = parts['ce'][i]
      metrics[f'top1/{res}'] = jnp.mean(top_k_correct(logits[i], labels, 1))
    metrics['top1/ensemble'] = jnp.mean(top_k_correct(parts['ens_logits'], labels, 1))
    new_state = state.replace(step=state.step + 1, params=params, stats=new_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))


def make_eval_step(net: RSNet, data: ml_collections.ConfigDict, mesh: Mesh):
  """The jitted `(params, stats, batch) -> sums`; `batch` = {'images': {res: uint8 (N, res, res, 3)},
  'label': int32 (N,), 'mask': bool (N,)} where padding rows have mask False and count for nothing.

  Returns the number of correct top-1 and top-5 predictions per resolution and, when every training
  resolution is present, for the alpha-weighted ensemble of their logits; and the number of images.
  """
  mean, std = input_normalisation(data)
  return _eval_step(net, mean, std, mesh)


@functools.lru_cache(maxsize=32)
def _eval_step(net: RSNet, mean: Optional[tuple], std: Optional[tuple], mesh: Mesh):
  k = min(5, net.num_classes)

  def eval_step(params, stats, batch):
    labels, mask = batch['label'], batch['mask']
    sums, logits = {'count': jnp.sum(mask.astype(jnp.int32))}, {}
    for res, images in sorted(batch['images'].items(), reverse=True):
      logits[res] = net.forward(params, _untagged(stats[res]), preprocess.to_float(images, mean, std))
    named = {str(res): z for res, z in logits.items()}
    if all(res in logits for res in net.resolutions):
      named['ensemble'] = losses.ensemble_logits([logits[r] for r in net.resolutions], params['alpha'])
    for name, z in named.items():
      sums[f'top1/{name}'] = jnp.sum(top_k_correct(z, labels, 1) & mask)
      sums[f'top5/{name}'] = jnp.sum(top_k_correct(z, labels, k) & mask)
    return sums

  return jax.jit(eval_step, in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
                 out_shardings=replicated(mesh))
