"""The optimiser: SGD as the references, and its learning-rate schedule, built once per recipe.

The optimiser lives in the train state (`TrainState.tx`); a run builds it here once. Equal recipes
get the same object, so a second run of the same network and recipe in one process reuses the
compiled step.
"""
import functools

import flax
import ml_collections
import optax

from rsnets_jax.errors import ConfigError, require

SCHEDULES = ('cosine', 'steps')
WEIGHT_DECAY_ON = ('all', 'kernels')


def check_config(optim: ml_collections.ConfigDict):
  """The config rules of the optimiser (`config.optim`) that need no step count."""
  require(optim.schedule in SCHEDULES, 'optim.schedule', optim.schedule, f'one of {SCHEDULES}')
  require(optim.weight_decay_on in WEIGHT_DECAY_ON, 'optim.weight_decay_on',
          optim.weight_decay_on, f'one of {WEIGHT_DECAY_ON}')
  require(optim.learning_rate > 0, 'optim.learning_rate', optim.learning_rate, 'positive')
  require(0 <= optim.momentum < 1, 'optim.momentum', optim.momentum, 'in [0, 1)')
  require(optim.weight_decay >= 0, 'optim.weight_decay', optim.weight_decay, '0 (off) or more')
  require(optim.warmup_epochs >= 0, 'optim.warmup_epochs', optim.warmup_epochs, '0 (off) or more')
  require(optim.decay_factor > 0, 'optim.decay_factor', optim.decay_factor, 'positive')
  epochs = tuple(optim.decay_epochs)
  if list(epochs) != sorted(set(epochs)) or any(e <= 0 for e in epochs):
    raise ConfigError(f'optim.decay_epochs must be increasing positive epochs, got {epochs}')


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int,
                           steps_per_epoch: int) -> optax.Schedule:
  """After an optional linear warm-up of `optim.warmup_epochs` (the references have none):
  'cosine', per-step cosine decay to zero at `total_steps` (the full-precision reference), or
  'steps', the rate times `optim.decay_factor` at each of `optim.decay_epochs` (the quantized
  reference: x0.1 at epochs 30, 60, 85, 95, 105 of 120)."""
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
  Returns the optimiser and its learning-rate schedule; it updates `trainable(params)`."""
  return _create_optimizer(ml_collections.FrozenConfigDict(optim), int(total_steps),
                           int(steps_per_epoch))


@functools.lru_cache(maxsize=32)
def _create_optimizer(optim, total_steps: int, steps_per_epoch: int):
  schedule = learning_rate_schedule(optim, total_steps, steps_per_epoch)
  mask = _kernels if optim.weight_decay_on == 'kernels' else None
  tx = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask=mask),
                   optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov))
  return tx, schedule
