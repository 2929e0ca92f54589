"""Orbax checkpoints: training checkpoints in a work directory, and `load(path)` for other JAX code.

Every checkpoint (a step of a training run, or a directory written by `save_model`, e.g. by the
converter) holds the same items, so both are read the same way:
    model/  params and stats (stats keyed by str(resolution) on disk)
    meta/   JSON: `format`, the network's `model` section (`RSNet(**meta['model'])` rebuilds it
            with no config file), and the run's config and evaluation results, when there are any
A training checkpoint adds:
    train/  optimiser state and step
    data/   JSON: the input iterator's position
Orbax files hold arrays and JSON only; nothing is unpickled when reading them.

Format 1 (before the models bound their layers the Flax way) kept every convolution kernel one
level deeper, at `<layer>/conv/kernel`, and the network under `meta['network']`; it is read and
moved to today's layout on the fly, for `load` and for resuming a run alike.
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from etils import epath

from rsnets_jax.errors import CheckpointError
from rsnets_jax.network import RSNet

CHECKPOINT_SUBDIR = 'checkpoints'
FORMAT = 2


def _is_conv(node) -> bool:
  return isinstance(node, dict) and set(node) == {'kernel'}  # dense layers also have a bias


def _is_format1_conv(node) -> bool:
  return isinstance(node, dict) and set(node) == {'conv'} and _is_conv(node['conv'])


def to_format1(tree):
  """`tree` (params, or any pytree holding params-shaped trees such as the optimiser state) with
  each convolution kernel one level deeper, as format 1 stored it."""
  return jax.tree.map(lambda n: {'conv': n} if _is_conv(n) else n, tree, is_leaf=_is_conv)


def from_format1(tree):
  return jax.tree.map(lambda n: n['conv'] if _is_format1_conv(n) else n, tree,
                      is_leaf=_is_format1_conv)


def _format_of(meta: Dict[str, Any], directory) -> int:
  version = int(meta.get('format', 1))
  if version > FORMAT:
    raise CheckpointError(f'{directory} was written by a newer rsnets_jax (checkpoint format '
                          f'{version}, this one reads up to {FORMAT}): upgrade rsnets_jax')
  return version


def _layout(template, version: int):
  """Shapes to restore a checkpoint of format `version` into; `_migrate` undoes the difference."""
  return to_format1(template) if version == 1 else template


def _migrate(tree, version: int):
  return from_format1(tree) if version == 1 else tree


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
  model = dict(meta['model'] if 'model' in meta else meta['network'])  # format 1: 'network'
  model['resolutions'] = tuple(model['resolutions'])
  # Checkpoints written before resolutions could be added have no such field.
  model['extra_resolutions'] = tuple(model.get('extra_resolutions', ()))
  return RSNet(**model)


def model_meta(net: RSNet, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """The meta item of a checkpoint of `net`: its format, its model section and `extra`."""
  return {'format': FORMAT, 'model': net.config(), **(extra or {})}


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
  _composite_checkpointer().save(
      directory, args=ocp.args.Composite(
          model=ocp.args.StandardSave({'params': params, 'stats': _stats_to_disk(stats)}),
          meta=ocp.args.JsonSave(model_meta(net, extra_meta))), force=True)


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
    version = _format_of(meta, directory)
    net = network_from_meta(meta)
    model = checkpointer.restore(directory, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_layout(model_template(net), version))))['model']
  except CheckpointError:
    raise
  except (KeyError, TypeError, ValueError, FileNotFoundError) as e:
    raise CheckpointError(f'cannot read checkpoint {directory}: {str(e).splitlines()[0]}') from e
  model = _migrate(model, version)
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
    """Saves `state`, the input's position `data_state` (None when the input cannot say) and
    `meta` (from `model_meta`)."""
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
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    version = _format_of(meta, self.directory / str(step))
    model_template = {'params': state_template.params, 'stats': _stats_to_disk(state_template.stats)}
    train_template = {'opt_state': state_template.opt_state, 'step': state_template.step}
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          model=ocp.args.StandardRestore(_layout(_abstract(model_template), version)),
          train=ocp.args.StandardRestore(_layout(_abstract(train_template), version)),
          data=ocp.args.JsonRestore()))
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f'cannot resume from {self.directory / str(step)}: it does not fit '
                            f'this run ({str(e).splitlines()[0]}); use another --workdir') from e
    model, train = _migrate(restored['model'], version), _migrate(restored['train'], version)
    state = state_template.replace(params=model['params'], stats=_stats_from_disk(model['stats']),
                                   opt_state=train['opt_state'], step=train['step'])
    return state, restored['data']['iterator']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

