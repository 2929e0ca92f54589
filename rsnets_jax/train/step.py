"""The train state and the jitted, sharded steps: `train_step(state, batch, rng) -> (state,
metrics)` and `eval_step(params, stats, batch) -> sums`.

One jit runs every resolution (views made on device from uint8 crops, shared weights, each
resolution's BatchNorm, the RS-Nets loss). The batch is split over the mesh's 'data' axis, the
state replicated, so BatchNorm's plain batch means span the global batch (or `bn_group_size`
groups) with no axis names in the model. A step's randomness is `fold_in(rng, state.step)` (as
big_vision's update_fn): one compiled step serves every seed, and a resumed run draws what an
uninterrupted one would. Steps are cached, so rerunning a network and recipe compiles nothing.

`config.between_resolutions` (not the paper's recipe): each step also trains one size drawn from
that list as `add_resolution` will later run it (edge padding, BatchNorm affine interpolated
between its neighbours, batch statistics; no running statistics are kept for it), so the shared
weights learn the sizes between the trained ones (experiments/imagenette/RESULTS.md).
"""
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rsnets_jax.data import preprocess
from rsnets_jax.errors import ConfigError
from rsnets_jax.models import RESOLUTION_KEY, RSNet, trainable
from rsnets_jax.train import losses, recalibrate
from rsnets_jax.train.sharding import batch_sharded, replicated


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and changes; the optimiser and its schedule ride along unchanged."""
  step: jax.Array
  params: Any
  stats: Dict[int, Any]  # stats[res]: that resolution's BatchNorm running statistics
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  learning_rate: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)


def create_train_state(net: RSNet, optimizer: Tuple[optax.GradientTransformation, Callable],
                       key) -> TrainState:
  """Step 0 of `net` initialised from `key`; `optimizer` from `optim.create_optimizer`."""
  tx, schedule = optimizer
  params, stats = net.init(key)
  return TrainState(step=jnp.int32(0), params=params, stats=stats,
                    opt_state=tx.init(trainable(params)), tx=tx, learning_rate=schedule)


def check_config(config: ml_collections.ConfigDict):
  """The between-size rule: distinct sizes strictly between the smallest and the largest training
  resolution, none of them trained."""
  trained = tuple(config.model.resolutions)
  sizes = tuple(config.between_resolutions)
  bad = [r for r in sizes if not isinstance(r, int) or not min(trained) < r < max(trained)
         or r in trained]
  if bad or len(set(sizes)) != len(sizes):
    raise ConfigError(f'config.between_resolutions must be distinct sizes strictly between '
                      f'{min(trained)} and {max(trained)} that are not training resolutions '
                      f'{trained}, got {sizes}')


def run_keys(seed: int) -> Tuple[jax.Array, jax.Array]:
  """`(init_key, step_key)` of a run: the initial weights and the steps' randomness."""
  init_key, step_key = jax.random.split(jax.random.key(seed))
  return init_key, step_key


# -- the steps ------------------------------------------------------------------------------------

def _untagged(stats):
  return {k: v for k, v in stats.items() if k != RESOLUTION_KEY}


def compute_train_loss(train_params, params, stats, views, labels, net: RSNet, distillation: str):
  """`(loss, (new stats, loss parts, logits, quantizer targets))`, per resolution largest first;
  `train_params` (differentiated) replaces `params`' trainable part. Every resolution reads the
  start-of-step quantizers; a shared BatchNorm is updated by each in turn, as in PyTorch."""
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


def between_size_value_and_grad(net: RSNet, sizes: Tuple[int, ...], train_params, params,
                                batch_stats, ens_logits, labels,
                                make_view: Callable[[int], jax.Array], key, distillation: str):
  """`(loss, gradient wrt train_params)` of one size drawn uniformly from `sizes` by `key`, run
  as `add_resolution` runs an added size (`recalibrate.added_network`, affine `blended_affine`
  from its neighbours, which the gradient reaches) in train mode on `make_view(size)`;
  `batch_stats` (any resolution's) is only read for its shapes. Its teacher `ens_logits` is
  detached, so this gradient simply adds to the RS-Nets loss's. One `lax.switch` whose branches
  each run their own forward and backward: one size runs per step, and no branch's residuals
  ride along in the main backward pass (XLA:CPU runs the conditional slowly: RESULTS.md)."""
  def branch(res):
    net_r = recalibrate.added_network(net, res, recalibrate.DEFAULT_PADDING)
    sources = recalibrate.affine_sources(net.resolutions, res, 'interpolated')

    def loss(train_params):
      p = {**params, **train_params}
      p = p if net.shared_bn else recalibrate.blended_affine(p, sources, res)
      z, _, _ = net_r.forward(p, batch_stats, make_view(res), train=True)
      return losses.between_loss(z, labels, ens_logits, distillation)
    return jax.value_and_grad(loss)
  index = jax.random.randint(key, (), 0, len(sizes))
  return jax.lax.switch(index, [branch(r) for r in sizes], train_params)


def top_k_correct(logits, labels, k: int):
  topk = jax.lax.top_k(logits, k)[1]
  return jnp.any(topk == labels[:, None], axis=-1)


def make_train_step(net: RSNet, config: ml_collections.ConfigDict, mesh: Mesh):
  """The jitted `(state, batch, rng) -> (state, metrics)` of `config`'s recipe (the optimiser is
  the state's); `batch` = {'image': uint8 (N, R, R, 3) at the largest resolution R, 'label': int32
  (N,)}, split over the mesh's data axis; `rng` the run's (replicated) step key."""
  mean, std = preprocess.input_normalisation(config.data)
  return _train_step(net, config.distillation, config.data.flip, mean, std,
                     config.data.view_resize, float(config.data.lighting),
                     bool(config.optim.refit_activations_from_largest_only), mesh,
                     tuple(config.between_resolutions))


def reported_parts(distillation: str, between_sizes: Tuple[int, ...]) -> Tuple[str, ...]:
  """The parts of the loss the step reports beside the per-resolution CEs (progress line, logs)."""
  return losses.distillation_mode(distillation).parts + (('between',) if between_sizes else ())


_BETWEEN_STREAM = 0x6274  # the between size's draw and view, apart from the trained views' keys


@functools.lru_cache(maxsize=32)
def _train_step(net: RSNet, distillation: str, flip: str, mean, std, view_resize: str,
                lighting: float, refit_activations_from_largest_only: bool, mesh: Mesh,
                between_sizes: Tuple[int, ...] = ()):
  parts = reported_parts(distillation, between_sizes)

  def train_step(state: TrainState, batch, rng):
    key = jax.random.fold_in(rng, state.step)
    views = preprocess.train_views(batch['image'], net.resolutions, key, flip, mean, std,
                                   view_resize, lighting)
    labels = batch['label']
    grad_fn = jax.value_and_grad(compute_train_loss, has_aux=True)
    train_params = trainable(state.params)
    (loss, (new_stats, loss_parts, logits, targets)), grads = grad_fn(
        train_params, state.params, state.stats, views, labels, net, distillation)
    if between_sizes:
      between_key = jax.random.fold_in(key, _BETWEEN_STREAM)

      def make_view(res):
        return preprocess.train_views(batch['image'], (res,), jax.random.fold_in(between_key, res),
                                      flip, mean, std, view_resize, lighting)[res]

      between_loss, between_grads = between_size_value_and_grad(
          net, between_sizes, train_params, state.params,
          _untagged(state.stats[net.resolutions[0]]), loss_parts['ens_logits'], labels, make_view,
          between_key, distillation)
      loss = loss + between_loss
      loss_parts = {**loss_parts, 'between': between_loss}
      grads = jax.tree.map(jnp.add, grads, between_grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, train_params)
    params = {**state.params, **optax.apply_updates(train_params, updates)}
    # The quantizers' S refits, folded after the optimiser update, largest resolution first.
    params = net.update_quantizers(params, targets, refit_activations_from_largest_only)
    metrics = {'loss': loss, **{name: loss_parts[name] for name in parts},
               'learning_rate': state.learning_rate(state.step),
               'alpha': jax.nn.softmax(params['alpha'])}
    for i, res in enumerate(net.resolutions):
      metrics[f'ce/{res}'] = loss_parts['ce'][i]
      metrics[f'top1/{res}'] = jnp.mean(top_k_correct(logits[i], labels, 1))
    metrics['top1/ensemble'] = jnp.mean(top_k_correct(loss_parts['ens_logits'], labels, 1))
    new_state = state.replace(step=state.step + 1, params=params, stats=new_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return jax.jit(train_step,
                 in_shardings=(replicated(mesh), batch_sharded(mesh), replicated(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=(0,))


def make_eval_step(net: RSNet, data: ml_collections.ConfigDict, mesh: Mesh):
  """The jitted `(params, stats, batch) -> sums`, `batch` = {'images': {res: uint8 (N, res, res,
  3)}, 'label': int32 (N,), 'mask': bool (N,), False for padding}. Sums: 'count' of images, and
  correct top-1/top-5 per resolution and, when every training resolution is present, ensemble."""
  mean, std = preprocess.input_normalisation(data)
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
