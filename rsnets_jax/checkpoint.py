"""Orbax checkpoints: training checkpoints in a work directory, and `load(path)` for other JAX code.

Every checkpoint (a step of a training run, or a directory written by `save_model`, e.g. by the
converter) holds the same items, so both are read the same way:
    model/  params and stats (stats keyed by str(resolution) on disk)
    meta/   JSON: the network's definition (enough to rebuild it with no config file) and the
            run's config and evaluation results, when there are any
A training checkpoint adds:
    train/  optimiser state and step
    data/   JSON: the input iterator's position
Orbax files hold arrays and JSON only; nothing is unpickled when reading them.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rsnets_jax.network import RSNet

CHECKPOINT_SUBDIR = 'checkpoints'


class CheckpointError(ValueError):
  """A checkpoint that is missing or cannot be read; the message is one line."""


def _stats_to_disk(stats: Dict[int, Any]) -> Dict[str, Any]:
  return {str(res): tree for res, tree in stats.items()}


def _stats_from_disk(stats: Dict[str, Any]) -> Dict[int, Any]:
  return {int(res): tree for res, tree in stats.items()}


def _path(path) -> epath.Path:
  """`path` as an epath; a local one made absolute, which Orbax requires."""
  path = os.fspath(path)
  return epath.Path(path if '://' in path else os.path.abspath(path))


def _abstract(tree, sharding=None):
  """Shapes and dtypes of `tree`, placed by `sharding` (default: where each leaf already is)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree)


def network_from_meta(meta: Dict[str, Any]) -> RSNet:
  network = dict(meta['network'])
  network['resolutions'] = tuple(network['resolutions'])
  # Checkpoints written before resolutions could be added have no such field.
  network['extra_resolutions'] = tuple(network.get('extra_resolutions', ()))
  return RSNet(**network)


def model_template(net: RSNet, sharding=None):
  """Shapes and dtypes of `(params, stats-on-disk)` for `net`, placed by `sharding`."""
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params, stats = net.init_shapes()
  return _abstract({'params': params, 'stats': _stats_to_disk(stats)}, sharding)


def _composite_checkpointer():
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_model(directory, net: RSNet, params, stats, extra_meta: Optional[Dict[str, Any]] = None):
  """Writes a checkpoint that `load` reads: the network, its params and every `stats[r]`."""
  directory = _path(directory)
  meta = {'network': net.config(), **(extra_meta or {})}
  _composite_checkpointer().save(
      directory, args=ocp.args.Composite(
          model=ocp.args.StandardSave({'params': params, 'stats': _stats_to_disk(stats)}),
          meta=ocp.args.JsonSave(meta)), force=True)


def _step_directory(path: epath.Path, which: str) -> epath.Path:
  """The checkpoint to read under `path`: itself, or the latest/best step of a run."""
  if (path / 'model').exists():
    return path
  if (path / CHECKPOINT_SUBDIR).exists():
    path = path / CHECKPOINT_SUBDIR
  steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / 'model').exists())
  if not steps:
    raise CheckpointError(f'no checkpoint in {path}')
  if which == 'best':
    best = path / 'best_step'
    if best.exists():
      return path / best.read_text().strip()
  return path / str(steps[-1])


def read_meta(path) -> Dict[str, Any]:
  directory = _step_directory(_path(path), 'latest')
  return _composite_checkpointer().restore(
      directory, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def load(path, which: str = 'latest') -> Tuple[RSNet, Any, Dict[int, Any]]:
  """`net, params, stats = load(path)` from a work directory, a run's checkpoint directory, one
  checkpoint step, or a directory written by `save_model` / the converter. No config is needed.

  `which` picks the checkpoint of a run: 'latest' or 'best' (by the largest resolution's top-1).
  """
  path = _path(path)
  if not path.exists():
    raise CheckpointError(f'no checkpoint at {path}')
  directory = _step_directory(path, which)
  checkpointer = _composite_checkpointer()
  try:
    meta = checkpointer.restore(directory, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    net = network_from_meta(meta)
    model = checkpointer.restore(directory, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(model_template(net))))['model']
  except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
    raise CheckpointError(f'cannot read checkpoint {directory}: {str(e).splitlines()[0]}') from e
  return net, model['params'], _stats_from_disk(model['stats'])


class TrainCheckpoints:
  """The checkpoints of one training run: asynchronous saves, the last `keep` plus the best one."""

  def __init__(self, workdir, keep: int = 3, best_metric: Optional[str] = None,
               async_save: bool = True):
    self.directory = _path(workdir) / CHECKPOINT_SUBDIR
    self.best_metric = best_metric
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'model': ocp.StandardCheckpointHandler(), 'train': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state, data_state: Any, meta: Dict[str, Any],
           metrics: Optional[Dict[str, float]] = None, force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    saved = self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'stats': _stats_to_disk(state.stats)}),
        train=ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
        data=ocp.args.JsonSave({'iterator': data_state}),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=force)
    if saved and metrics and self.best_metric in metrics:
      self._note_best(step, metrics)
    return saved

  def _note_best(self, step: int, metrics: Dict[str, float]):
    best_file = self.directory / 'best_step'
    best_value = self.directory / 'best_value'
    value = float(metrics[self.best_metric])
    if best_value.exists() and float(best_value.read_text()) >= value:
      return
    if jax.process_index() == 0:
      best_value.write_text(repr(value))
      best_file.write_text(str(step))

  def restore(self, state_template, step: Optional[int] = None):
    """`(state, data_state)` of `step` (default: the latest), laid out like `state_template`."""
    step = self.latest_step() if step is None else step
    model_template = {'params': state_template.params, 'stats': _stats_to_disk(state_template.stats)}
    train_template = {'opt_state': state_template.opt_state, 'step': state_template.step}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(model_template)),
        train=ocp.args.StandardRestore(_abstract(train_template)),
        data=ocp.args.JsonRestore()))
    model, train = restored['model'], restored['train']
    state = state_template.replace(params=model['params'], stats=_stats_from_disk(model['stats']),
                                   opt_state=train['opt_state'], step=train['step'])
    return state, restored['data']['iterator']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

