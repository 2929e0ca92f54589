"""Orbax checkpoints: a training run's checkpoints, and `load(path)` for other JAX code.

Every checkpoint (a training step, or a `save_model` directory) holds model/ (params, and stats
keyed by str(resolution)) and meta/ (JSON: `format`, the `model` section that
`RSNet(**meta['model'])` rebuilds, and the run's config and results, if any); a training one adds
train/ (optimiser state, step) and data/ (JSON: input position). Arrays and JSON only: nothing is
unpickled. Format 1 (kernels at `<layer>/conv/kernel`, `meta['network']`) is migrated on read.
"""
import json
import logging
import os
import re
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import jax
import orbax.checkpoint as ocp
from etils import epath

from rsnets_jax import storage
from rsnets_jax.errors import CheckpointError
from rsnets_jax.models import RSNet

CHECKPOINT_SUBDIR = 'checkpoints'
DAMAGED_SUBDIR = 'damaged_checkpoints'
FORMAT = 2
NAMES = ('latest', 'best')  # and step numbers

log = logging.getLogger('rsnets_jax')


def _is_conv(node) -> bool:
  return isinstance(node, dict) and set(node) == {'kernel'}  # dense layers also have a bias


def _is_format1_conv(node) -> bool:
  return isinstance(node, dict) and set(node) == {'conv'} and _is_conv(node['conv'])


def to_format1(tree):
  """`tree` (params, or e.g. optimiser state) in format 1's layout: kernels one level deeper."""
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
  return epath.Path(storage.absolute(path))


def _abstract(tree, sharding=None):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree)


def network_from_meta(meta: Dict[str, Any]) -> RSNet:
  model = dict(meta['model'] if 'model' in meta else meta['network'])  # format 1: 'network'
  model['resolutions'] = tuple(model['resolutions'])
  # Checkpoints written before resolutions could be added have no such field.
  model['extra_resolutions'] = tuple(model.get('extra_resolutions', ()))
  return RSNet(**model)


def model_meta(net: RSNet, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
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


# -- damage: what an unreadable checkpoint raises, said in one line --------------------------------

def is_damage(error: BaseException) -> bool:
  """Whether `error`, raised reading a checkpoint, means damaged files (or another network's)
  rather than a bug. TensorStore raises a bare Exception whose cause says what broke."""
  return isinstance(error, (OSError, ValueError, KeyError, TypeError)) or type(error) is Exception


def _reason(error: BaseException) -> str:
  """The gist of a damage error: its (or its cause's) first line, without TensorStore's specs."""
  if type(error) is Exception and error.__cause__ is not None:
    error = error.__cause__
  text = (str(error).strip().splitlines() or [type(error).__name__])[0]
  if isinstance(error, json.JSONDecodeError):
    text = f'not valid JSON: {text}'
  elif isinstance(error, FileNotFoundError):
    text = f'missing {error.filename}' if error.filename else text
  text = re.split(r' \[tensorstore_spec| See full TensorStore details', text)[0]
  text = re.sub(r'Error opening "\w+" driver: ', '', text)
  text = re.sub(r' in OCDBT database at local file "[^"]*"', '', text)
  return text if len(text) <= 160 else text[:157] + '...'


class _UnretrievedReads(logging.Filter):
  def filter(self, record):
    message = record.getMessage()
    return not (message.startswith(('Future exception was never retrieved',
                                    'Task exception was never retrieved')) and
                ('tensorstore' in message or 'orbax' in message))


class _FailedSaveNoise(logging.Filter):
  """Drops what Orbax's threads log about a save that the storage refused (every array's error,
  a worker thread's OSError, then the commit's and the finalisation's): the loop reports it once,
  in one line."""
  SIGNS = ('os_error_code', 'RESOURCE_EXHAUSTED', 'PERMISSION_DENIED')

  def filter(self, record):
    message = record.getMessage()
    refused = record.exc_info is not None and isinstance(record.exc_info[1], OSError)
    return not (any(sign in message for sign in self.SIGNS) or refused or
                'background save thread' in message or 'Save Finalize thread' in message)


def _quiet_failed_saves():
  """Installs `_FailedSaveNoise` on the handlers of the root logger, through which Orbax's
  (absl's) and asyncio's records reach the terminal, and the read echoes' filters."""
  _quiet_event_loop_noise()
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _FailedSaveNoise) for f in handler.filters):
      handler.addFilter(_FailedSaveNoise())


def _quiet_event_loop_noise():
  """Silences the late echoes of a failed read ('Event loop is closed', Orbax's other reads,
  asyncio's unretrieved exceptions), which add nothing to its one-line error; all else passes."""
  asyncio_log = logging.getLogger('asyncio')
  if not any(isinstance(f, _UnretrievedReads) for f in asyncio_log.filters):
    asyncio_log.addFilter(_UnretrievedReads())
  if getattr(sys.unraisablehook, 'rsnets_jax_quiet', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    error, code = unraisable.exc_value, getattr(unraisable.object, 'cr_code', None)
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      return
    if _FailedSaveNoise().filter(logging.makeLogRecord({'msg': str(error)})) is False:
      return  # a refused write of a save, finalised late
    if code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename:
      return  # one of Orbax's reads, finalised after the read that failed
    previous(unraisable)

  hook.rsnets_jax_quiet = True
  sys.unraisablehook = hook


class Unreadable(CheckpointError):
  """A checkpoint whose files do not restore: '<directory> does not restore (<item>: <why>)'."""

  def __init__(self, directory, item: str, reason: str):
    super().__init__(f'checkpoint {directory} does not restore ({item}: {reason})')
    self.directory, self.why = directory, f'{item}: {reason}'


def _restore_items(restore, directory, items: Dict[str, Any]) -> Dict[str, Any]:
  """`restore(Composite)` of each item of `items` in turn, so that a failure names its item."""
  _quiet_event_loop_noise()
  restored = {}
  for name, args in items.items():
    try:
      restored[name] = restore(ocp.args.Composite(**{name: args}))[name]
    except Exception as e:  # pylint: disable=broad-except  # is_damage decides; the rest re-raise
      if not is_damage(e):
        raise
      raise Unreadable(directory, name, _reason(e)) from e
  return restored


def _restore_fn(directory: epath.Path):
  checkpointer = _composite_checkpointer()
  return lambda args: checkpointer.restore(directory, args=args)


# -- finding a checkpoint ---------------------------------------------------------------------------

def parse_which(which: Union[str, int]) -> Union[str, int]:
  """'latest', 'best' or a step number (int or digits); anything else is a CheckpointError."""
  if isinstance(which, int) and not isinstance(which, bool) and which >= 0:
    return which
  if isinstance(which, str):
    if which.strip() in NAMES:
      return which.strip()
    if which.strip().isdigit():
      return int(which)
  raise CheckpointError(f"a checkpoint is 'latest', 'best' or a step number, not {which!r}")


def _complete(step_directory: epath.Path) -> bool:
  """Whether a step's checkpoint is complete: Orbax renames a finished step's temporary folder,
  but on a bucket (no rename) it writes commit_success.txt instead."""
  if storage.is_remote(step_directory):
    return (step_directory / 'commit_success.txt').exists()
  return step_directory.exists()


def committed_steps(directory) -> List[int]:
  """The complete steps of a run's checkpoint directory, oldest first."""
  directory = _path(directory)
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and _complete(p))


def _best_step(directory: epath.Path) -> Optional[int]:
  best = directory / 'best_step'
  return int(best.read_text().strip()) if best.exists() else None


def find(path, which: Union[str, int] = 'latest') -> Tuple[epath.Path, Optional[int]]:
  """`(directory, step)` that `load(path, which)` reads: `path` itself when it is one checkpoint
  (step None unless it is a step folder), else the chosen step of the run in `path`."""
  which = parse_which(which)
  path = _path(path)
  if not path.exists():
    raise CheckpointError(f'no checkpoint at {path}')
  if not path.is_dir():
    raise CheckpointError(
        f'{path} is a file; rsnets_jax.load takes a work directory, a run\'s checkpoint directory, '
        f'one checkpoint, or a directory written by save_model (a PyTorch checkpoint: convert it '
        f'first with python -m rsnets_jax.convert)')
  if (path / 'model').exists():
    step = int(path.name) if path.name.isdigit() else None
    if isinstance(which, int) and which != step:
      raise CheckpointError(f'{path} is one checkpoint, not a run with steps: it has no step {which}')
    return path, step
  directory = path / CHECKPOINT_SUBDIR if (path / CHECKPOINT_SUBDIR).exists() else path
  steps = committed_steps(directory)
  if not steps:
    raise CheckpointError(f'no checkpoint in {directory}')
  listed = ', '.join(map(str, steps))
  if which == 'latest':
    step = steps[-1]
  elif which == 'best':
    step = _best_step(directory)
    if step is None:
      raise CheckpointError(f'{directory} has no best checkpoint (the best is chosen when training '
                            f'evaluates); choose latest or a step: {listed}')
    if step not in steps:
      raise CheckpointError(f'the best checkpoint of {directory}, step {step}, is gone; choose '
                            f'latest or a step: {listed}')
  else:
    step = which
    if step not in steps:
      raise CheckpointError(f'{directory} has no step {step}; its steps: {listed}')
  return directory / str(step), step


def _read_meta_of(directory: epath.Path) -> Dict[str, Any]:
  return _restore_items(_restore_fn(directory), directory,
                        {'meta': ocp.args.JsonRestore()})['meta']


def read_meta(path, which: Union[str, int] = 'latest') -> Dict[str, Any]:
  return _read_meta_of(find(path, which)[0])


def stored_network(workdir) -> Optional[Tuple[epath.Path, RSNet]]:
  """`(checkpoint, network)` of `workdir`'s newest checkpoint whose meta reads, or None."""
  directory = _path(workdir) / CHECKPOINT_SUBDIR
  for step in reversed(committed_steps(directory)):
    try:
      return directory / str(step), network_from_meta(_read_meta_of(directory / str(step)))
    except Unreadable:
      continue  # resuming reports it and moves it aside
  return None


def load(path, which: Union[str, int] = 'latest') -> Tuple[RSNet, Any, Dict[int, Any]]:
  """`net, params, stats` from a work directory, its checkpoint directory, one step, or a
  `save_model` / converter directory; no config needed. `which`: 'latest', 'best' (by the largest
  resolution's top-1) or a step. One that does not restore: CheckpointError saying what broke."""
  directory, _ = find(path, which)
  restore = _restore_fn(directory)
  meta = _restore_items(restore, directory, {'meta': ocp.args.JsonRestore()})['meta']
  version = _format_of(meta, directory)
  try:
    net = network_from_meta(meta)
  except (KeyError, TypeError) as e:
    raise CheckpointError(f'checkpoint {directory} does not restore (meta: no network: {e})') from e
  model = _restore_items(restore, directory, {
      'model': ocp.args.StandardRestore(_layout(model_template(net), version))})['model']
  model = _migrate(model, version)
  return net, model['params'], _stats_from_disk(model['stats'])


# -- a training run's checkpoints -------------------------------------------------------------------

class TrainCheckpoints:
  """The checkpoints of one training run: asynchronous saves, the last `keep` plus the best one."""

  def __init__(self, workdir, keep: int = 3, best_metric: Optional[str] = None,
               async_save: bool = True):
    self.directory = _path(workdir) / CHECKPOINT_SUBDIR
    _quiet_failed_saves()
    self.best_metric = best_metric
    self._pending_best: Optional[Tuple[int, float]] = None
    policies = [ocp.checkpoint_managers.LatestN(n=keep)]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], n=1, keep_checkpoints_without_metrics=False))
    # A save cut short by a kill leaves a temporary folder that is never complete: clean it up.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'model': ocp.StandardCheckpointHandler(), 'train': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state, data_state: Any, meta: Dict[str, Any],
           metrics: Optional[Dict[str, float]] = None, force: bool = False) -> bool:
    """Saves `state`, input position `data_state` (None if unknown) and `meta` (`model_meta`)."""
    step = int(jax.device_get(state.step))
    saved = self.manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({'params': state.params, 'stats': _stats_to_disk(state.stats)}),
        train=ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
        data=ocp.args.JsonSave({'iterator': data_state}),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=force)
    self._note_best()  # the previous save has finished: Orbax waits for it before starting one
    if saved and metrics and self.best_metric in metrics:
      self._pending_best = (step, float(metrics[self.best_metric]))
    return saved

  def _note_best(self):
    """Records the pending best once saved in full: `best_step` never names a cut-short save."""
    if self._pending_best is None or not _complete(self.directory / str(self._pending_best[0])):
      return
    step, value = self._pending_best
    self._pending_best = None
    best_file = self.directory / 'best_step'
    best_value = self.directory / 'best_value'
    if best_value.exists() and float(best_value.read_text()) >= value:
      return
    if jax.process_index() == 0:
      best_value.write_text(repr(value))
      best_file.write_text(str(step))

  def restore(self, state_template, step: Optional[int] = None):
    """`(state, data_state)` of `step` (default: latest) like `state_template`, or Unreadable."""
    step = self.latest_step() if step is None else step
    directory = self.directory / str(step)
    restore = lambda args: self.manager.restore(step, args=args)
    meta = _restore_items(restore, directory, {'meta': ocp.args.JsonRestore()})['meta']
    version = _format_of(meta, directory)
    model_template = {'params': state_template.params, 'stats': _stats_to_disk(state_template.stats)}
    train_template = {'opt_state': state_template.opt_state, 'step': state_template.step}
    restored = _restore_items(restore, directory, {
        'model': ocp.args.StandardRestore(_layout(_abstract(model_template), version)),
        'train': ocp.args.StandardRestore(_layout(_abstract(train_template), version)),
        'data': ocp.args.JsonRestore()})
    model, train = _migrate(restored['model'], version), _migrate(restored['train'], version)
    state = state_template.replace(params=model['params'], stats=_stats_from_disk(model['stats']),
                                   opt_state=train['opt_state'], step=train['step'])
    return state, restored['data']['iterator']

  def restore_newest(self, state_template):
    """`(state, data_state)` of the newest checkpoint that restores, or None when there is none.
    Newer damaged ones are logged and set aside; if none restores: CheckpointError, none moved."""
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(state_template, step)
      except Unreadable as e:
        failures.append((step, e))
        continue
      for damaged, error in failures:
        log.warning('%s; moved it to %s', error, self._set_aside(damaged))
      if failures:
        self.manager.reload()
      return restored
    if failures:
      raise CheckpointError(f'no checkpoint in {self.directory} restores: ' + '; '.join(
          f'step {step} ({error.why})' for step, error in failures) + '; move them aside or use '
          f'another --workdir')
    return None

  def _set_aside(self, step: int) -> epath.Path:
    """Moves `step` to `damaged_checkpoints/<step>` (or `.1`, ...), unsets it as best; returns
    where it went."""
    aside = self.directory.parent / DAMAGED_SUBDIR
    target = aside / str(step)
    n = 0
    while target.exists():
      n += 1
      target = aside / f'{step}.{n}'
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      # A bucket's folder exists once a file is in it.
      if storage.is_remote(aside) and not aside.exists():
        (aside / 'README.txt').write_text('Checkpoints that did not restore, moved here by '
                                          'rsnets_jax when the run resumed.\n')
      (self.directory / str(step)).rename(target)
      if _best_step(self.directory) == step:
        for name in ('best_step', 'best_value'):
          (self.directory / name).unlink(missing_ok=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f'rsnets_jax set aside {step}')
    return target

  def check_for_errors(self):
    """Raises the error of an asynchronous save that failed since the last call (at once, not at
    the next save)."""
    self.manager.check_for_errors()

  def wait(self):
    self.manager.wait_until_finished()
    self._note_best()

  def close(self, quiet: bool = False):
    """Waits for the last save and closes; `quiet` (the run is already stopping on an error)
    drops a failure of that save, which the first error already explains."""
    if quiet:  # the abandoned save's coroutines are collected at exit, never awaited
      warnings.filterwarnings('ignore', message="coroutine '.*' was never awaited",
                              category=RuntimeWarning)
    try:
      self.wait()
      self.manager.close()
    except Exception:  # pylint: disable=broad-except
      if not quiet:
        raise
