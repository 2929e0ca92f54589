"""The training loop, top to bottom: checks, mesh, input, model, checkpoints, loop, evaluation,
reports.

The only loop in the project: `main` runs it on the config's data, and experiments run it on
iterators they build themselves (`train_and_evaluate(config, workdir, train_iter, eval_batches,
steps_per_epoch)`), so every run gets resume, the non-finite-loss stop, checkpoints, TensorBoard
and the reports. Runs unchanged on one CPU, one GPU, a multi-GPU host or a multi-host TPU pod: the
batch is split over every device of every host, each process reads its own part of the data, and
only process 0 writes logs, summaries and reports. A run resumes by itself from its work
directory (from the newest checkpoint that restores; damaged newer ones are moved aside), and on
SIGTERM (or a TPU preemption notice) it saves a checkpoint and stops.

Before any work, a run checks its config values, that the buckets of gs:// paths exist and can be
read, that the work directory is writable, that the data set has the network's classes, and that
the work directory's checkpoints are of the same network; each failure is one line.
"""
import contextlib
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Dict, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rsnets_jax import checkpoints, data, defaults, storage
from rsnets_jax.errors import (CheckpointError, ConfigError, StorageError, TrainingError,
                               require)
from rsnets_jax.models import RSNet
from rsnets_jax.train import optim, sharding
from rsnets_jax.train.evaluate import run_eval
from rsnets_jax.train.lock import RunLock
from rsnets_jax.train.reports import report
from rsnets_jax.train.step import create_train_state, make_train_step, reported_parts, run_keys

log = logging.getLogger('rsnets_jax')

EVAL_SUBDIR = 'eval'


# -- checks before any work ------------------------------------------------------------------------

MODES = ('train', 'eval')


def check_config(config):
  """The config rules of the job: its length, logging, checkpoints and mode."""
  require(config.num_epochs > 0, 'num_epochs', config.num_epochs, 'positive')
  require(config.max_steps >= 0, 'max_steps', config.max_steps, '0 (num_epochs decides) or more')
  require(config.log_every_steps >= 1, 'log_every_steps', config.log_every_steps, 'at least 1')
  require(config.eval_every_epochs >= 0, 'eval_every_epochs', config.eval_every_epochs,
          '0 (only at the end) or more')
  require(config.checkpoint_every_steps >= 1, 'checkpoint_every_steps',
          config.checkpoint_every_steps, 'at least 1')
  require(config.checkpoint_keep >= 1, 'checkpoint_keep', config.checkpoint_keep, 'at least 1')
  require(config.mode in MODES, 'mode', config.mode, f'one of {MODES}')
  try:
    checkpoints.parse_which(config.eval_checkpoint)
  except CheckpointError as e:
    raise ConfigError(f'config.eval_checkpoint: {e}') from e


def _flag_value(value) -> str:
  text = str(tuple(value) if isinstance(value, (list, tuple)) else value)
  return f"'{text}'" if ' ' in text else text


def check_same_network(workdir, net: RSNet):
  """A ConfigError when `workdir` holds checkpoints of a network other than `net`: resuming would
  mix two runs. Names each differing field and the two ways out."""
  stored = checkpoints.stored_network(workdir)
  if stored is None or stored[1] == net:
    return
  where, old = stored
  old_fields, new_fields = old.config(), net.config()
  differ = [k for k in new_fields if old_fields[k] != new_fields[k]]
  said = '; '.join(f'{k} {old_fields[k]} there, {new_fields[k]} here' for k in differ)
  flags = ' '.join(f'--config.model.{k}={_flag_value(old_fields[k])}' for k in differ)
  raise ConfigError(f'{workdir} holds checkpoints of another network ({where}: {said}): use '
                    f'another --workdir, or its own config: {flags}')


# What a step is: a resume with another value would not continue the same run.
SCHEDULE_FIELDS = ('data.batch_size', 'num_epochs', 'seed', 'distillation', 'between_resolutions',
                   'optim')


def _flat(config_dict, prefix=''):
  out = {}
  for key, value in config_dict.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = tuple(value) if isinstance(value, list) else value
  return out


def check_same_schedule(ckpts, step: int, config, steps_per_epoch: int):
  """A ConfigError when the checkpoint of `step` was trained with another batch size, length,
  seed, distillation, between sizes, optimiser or number of steps per epoch than `config` asks:
  resuming would mislabel the run (epochs, schedule) or change what its steps mean. `max_steps`
  may change."""
  meta = checkpoints.read_meta(ckpts.directory / str(step))
  stored = _flat(meta.get('config') or {})
  if not stored:
    return  # a checkpoint without its config: nothing to compare
  here = _flat(config.to_dict())
  names = [k for k in here if any(k == f or k.startswith(f + '.') for f in SCHEDULE_FIELDS)]
  pairs = [(k, here[k], stored[k]) for k in names if k in stored and stored[k] != here[k]]
  if 'steps_per_epoch' in meta and meta['steps_per_epoch'] != steps_per_epoch:
    pairs.append(('(steps per epoch: training images // data.batch_size)', steps_per_epoch,
                  meta['steps_per_epoch']))
  if pairs:
    field, new, old = pairs[0]
    fix = (f'resume with --config.{field}={_flag_value(old)}' if not field.startswith('(')
           else 'resume on the same training set')
    raise ConfigError(f'{ckpts.directory} was trained with another schedule: config.{field} is '
                      f'{new} here, {old} in its checkpoints; {fix}, or start in another '
                      f'--workdir'.replace('config.(', '('))


def _check_batches(config, names=('batch_size', 'eval_batch_size')):
  for name in names:
    if config.data[name] % jax.device_count():
      raise ConfigError(f'config.data.{name} {config.data[name]} is not a multiple of the '
                        f'{jax.device_count()} devices')


# -- summaries (process 0 only) --------------------------------------------------------------------

class Summaries:
  """TensorBoard event files, written without TensorFlow."""

  def __init__(self, workdir: str):
    self.writer = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def scalars(self, step: int, values: Dict[str, float]):
    if self.writer:
      for k, v in values.items():
        self.writer.add_scalar(k, v, step)
      self.writer.flush()

  def close(self):
    if self.writer:
      self.writer.close()


# -- progress -------------------------------------------------------------------------------------

def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def progress_line(step, total, steps_per_epoch, metrics, resolutions, parts,
                  img_per_s: Optional[float], eta_s: Optional[float]) -> str:
  """One progress line; `metrics` are the means over the steps since the last line, `parts` the
  distillation mode's parts of the loss. Speed and ETA are None until a step after the compiling
  one has been timed."""
  ce = ' '.join(f"{r}:{metrics[f'ce/{r}']:.3f}" for r in resolutions)
  named = ' '.join(f'{name} {metrics[name]:.3f}' for name in parts)
  speed = ('- img/s | ETA -' if img_per_s is None else
           f'{img_per_s:.0f} img/s | ETA {_format_eta(eta_s)}')
  return (f'step {step}/{total} epoch {step / steps_per_epoch:.2f} | loss {metrics["loss"]:.4f} '
          f'| ce {ce} | {named} | lr {metrics["learning_rate"]:.4g} | {speed}')


@jax.jit
def _sum_metrics(total, metrics):
  return jax.tree.map(jnp.add, total, metrics)


def train_scalars(metric_sums, count: int) -> Dict[str, float]:
  """The mean of each scalar train metric over `count` steps, top-1 in percent as the evaluation
  reports it (the step measures it as a fraction of the batch)."""
  scalars = {k: float(v) / count for k, v in metric_sums.items() if np.ndim(v) == 0}
  return {k: 100.0 * v if k.startswith('top1/') else v for k, v in scalars.items()}


class Interrupted(KeyboardInterrupt):
  """The user's Ctrl-C, after the run stopped at a safe point; commands exit 130."""


class StopSignals:
  """SIGTERM and Ctrl-C, turned into a stop at the next step boundary.

  SIGTERM (or a TPU preemption notice) is a preemption request: save, stop, exit 0, resume later.
  The first Ctrl-C stops at the next safe point too, with a checkpoint when a step ran since the
  last one, and raises `Interrupted`; Ctrl-C goes back to the system's default then, so a second
  one stops the process at once. Long waits (compiling, evaluating) run on a worker thread while
  this one waits (`wait`), so that Ctrl-C is seen during them.

  With several processes a signal reaches one of them, yet all must stop at the same step: there
  SIGTERM is left to JAX's preemption service (started by jax.distributed), which tells every
  process, and `manager.reached_preemption` turns true on all of them at the same step; and
  Ctrl-C keeps Python's default."""

  def __init__(self):
    self.preempted = self.interrupted = False
    self._previous = {}
    if jax.process_count() > 1:
      return
    for sig, handler in ((signal.SIGTERM, self._preempt), (signal.SIGINT, self._interrupt)):
      try:
        self._previous[sig] = signal.signal(sig, handler)
      except ValueError:  # not in the main thread
        pass

  def _preempt(self, signum, frame):
    del signum, frame
    log.warning('SIGTERM received (a preemption request): saving a checkpoint and stopping')
    self.preempted = True

  def _interrupt(self, signum, frame):
    del signum, frame
    log.warning('interrupted (Ctrl-C): stopping at the next step, with a checkpoint; Ctrl-C again '
                'stops at once')
    self.interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_DFL)

  def should_stop(self, step: int, manager) -> bool:
    # On a TPU pod every host must agree; Orbax's manager also sees the platform's notice.
    return self.preempted or self.interrupted or manager.reached_preemption(step)

  def wait(self, fn, *args):
    """`fn(*args)`, run on a worker thread; `Interrupted` as soon as Ctrl-C comes (the worker is
    left to finish on its own)."""
    outcome = {}

    def work():
      try:
        outcome['value'] = fn(*args)
      except BaseException as e:  # pylint: disable=broad-except  # re-raised in this thread
        outcome['error'] = e

    worker = threading.Thread(target=work, daemon=True, name='rsnets_jax-wait')
    worker.start()
    while worker.is_alive():
      worker.join(0.1)
      if self.interrupted:
        raise Interrupted()
    if 'error' in outcome:
      raise outcome['error']
    return outcome['value']

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# -- descriptions ----------------------------------------------------------------------------------

def _describe(net: RSNet) -> str:
  return (f'RS-{net.arch} (width {net.width}, resolutions {"/".join(map(str, net.all_resolutions))}'
          f', {net.num_classes} classes)')


def _devices() -> str:
  return (f'{jax.device_count()} {jax.devices()[0].platform} device'
          f'{"s" if jax.device_count() > 1 else ""} ({jax.process_count()} '
          f'process{"es" if jax.process_count() > 1 else ""})')


# -- the job ---------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       train_iter: Optional[Iterator[Dict[str, Any]]] = None,
                       eval_batches: Optional[Iterable[Dict[str, Any]]] = None,
                       steps_per_epoch: Optional[int] = None) -> Dict[str, float]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, writes reports.

  By default the input comes from `config.data`. A caller may pass its own `train_iter` (this
  process's batches, as `data.train_iterator` yields them; its position is checkpointed when it
  has `get_state`/`set_state`) with the `steps_per_epoch` it makes, and `eval_batches` (iterable
  once per evaluation, as `data.eval_batches`). Returns the final evaluation's accuracies, or {}
  when the run stopped early on a preemption request.
  """
  # -- checks: every one before any work --
  defaults.check(config)
  if train_iter is None or eval_batches is None:
    data.kind(config.data).check_storage(config.data)
  storage.check_storage(workdir, '--workdir', checkpoints=True)
  net = RSNet(**config.model)
  _check_batches(config)
  check_same_network(workdir, net)
  batch_size = config.data.batch_size
  if train_iter is None:
    num_train = data.num_train_examples(config)
    data.check_num_classes(config, net.num_classes)
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch == 0:
      raise ConfigError(f'config.data.batch_size {batch_size} exceeds the {num_train} training '
                        f'images')
  elif not steps_per_epoch:
    raise ValueError('a train_iter needs the steps_per_epoch it makes')
  num_val = data.num_eval_examples(config) if eval_batches is None else getattr(
      eval_batches, 'num_examples', '?')
  total_steps = config.max_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
  schedule_steps = int(config.num_epochs * steps_per_epoch)
  optim.create_optimizer(config.optim, schedule_steps, steps_per_epoch)  # its checks, before work
  storage.check_writable(workdir, 'choose another --workdir')
  log.info('training %s on %s: %s training images (%d steps per epoch), %s validation images',
           _describe(net), data.describe(config.data) if train_iter is None else 'the given input',
           num_train if train_iter is None else steps_per_epoch * batch_size, steps_per_epoch,
           num_val)
  log.info('%d steps (%.2f epochs) of batch %d on %s; work directory %s', total_steps,
           total_steps / steps_per_epoch, batch_size, _devices(), storage.absolute(workdir))
  try:
    return _train(config, workdir, net, train_iter, eval_batches, steps_per_epoch, total_steps,
                  schedule_steps, num_val)
  except Exception as e:  # a storage failure anywhere (a save, a report, TensorBoard): one line
    failure = storage.failure(e)
    if failure is None:
      raise
    raise StorageError(f'cannot write {failure.path or workdir} ({failure.reason}); '
                       f'{_intact(workdir)}') from e


def _intact(workdir) -> str:
  """What a failed run leaves to resume from, and how."""
  steps = checkpoints.store.committed_steps(os.path.join(os.fspath(workdir),
                                                         checkpoints.CHECKPOINT_SUBDIR))
  if not steps:
    return 'no checkpoint is complete yet: free space (or restore access) and rerun to start again'
  return (f'the checkpoint of step {steps[-1]} in {workdir} is complete: free space (or restore '
          f'access) and rerun the same command to resume')


def _train(config, workdir, net, train_iter, eval_batches, steps_per_epoch: int, total_steps: int,
           schedule_steps: int, num_val) -> Dict[str, float]:
  """`train_and_evaluate` after its checks: the run itself."""
  owns_input = train_iter is None
  batch_size = config.data.batch_size
  optimizer = optim.create_optimizer(config.optim, schedule_steps, steps_per_epoch)
  with contextlib.ExitStack() as cleanup:
    cleanup.enter_context(RunLock(workdir))
    signals = StopSignals()
    cleanup.callback(signals.restore)

    # -- input --
    if owns_input:
      train_iter = data.train_iterator(config)
      if hasattr(train_iter, 'close'):
        cleanup.callback(train_iter.close)  # stops the loader's worker processes

    # -- mesh, model, optimiser and steps --
    log.info('compiling: the first step waits for the train step')
    compile_start = time.time()
    mesh = sharding.make_mesh()
    init_key, step_key = run_keys(config.seed)
    state = sharding.replicate(create_train_state(net, optimizer, init_key), mesh)
    step_key = sharding.replicate(step_key, mesh)
    train_step = make_train_step(net, config, mesh)
    parts = reported_parts(config.distillation, tuple(config.between_resolutions))

    # -- checkpoints: resume where the last run stopped --
    best_metric = f'top1/{max(net.resolutions)}'
    ckpts = checkpoints.TrainCheckpoints(workdir, keep=config.checkpoint_keep,
                                        best_metric=best_metric)
    cleanup.push(lambda *error: ckpts.close(quiet=error[0] is not None))
    meta = checkpoints.model_meta(net, {'config': config.to_dict(),
                                        'steps_per_epoch': steps_per_epoch})
    restored = ckpts.restore_newest(state)
    if restored is not None:
      check_same_schedule(ckpts, int(restored[0].step), config, steps_per_epoch)
      state, data_state = restored
      if data_state is not None and hasattr(train_iter, 'set_state'):
        train_iter.set_state(data_state)
      else:
        log.warning('the input cannot restore its position: the data order restarts')
      log.info('resumed from step %d in %s', int(state.step), ckpts.directory)
    start = int(jax.device_get(state.step))

    # -- loop --
    summaries = Summaries(workdir)
    cleanup.callback(summaries.close)
    accuracies: Dict[str, float] = {}
    last_metrics: Optional[Dict[str, Any]] = None
    metric_sums, summed = None, 0
    eval_every = (max(int(config.eval_every_epochs * steps_per_epoch), 1)
                  if config.eval_every_epochs else 0)
    timer, timer_step = time.time(), start

    def check_finite(metrics, step, steps_meant):
      loss = float(metrics['loss'])
      if not math.isfinite(loss):
        last = ckpts.latest_step()
        kept = (f'the last good checkpoint (step {last}) in {ckpts.directory} is untouched'
                if last is not None else f'{ckpts.directory} is untouched (no checkpoint yet)')
        raise TrainingError(f'loss is {loss} at step {step} ({steps_meant}); stopping without '
                            f'saving: {kept}')

    def save(step, metrics=None, force=False):
      if ckpts.latest_step() == step:  # e.g. preempted right after the evaluation's save
        return
      if last_metrics is not None:
        check_finite(jax.device_get(last_metrics), step, 'this step')
      data_state = train_iter.get_state() if hasattr(train_iter, 'get_state') else None
      ckpts.save(state, data_state, meta, metrics=metrics, force=force)

    def evaluate_and_report(step):
      log.info('evaluating step %d on %s validation images', step, num_val)
      result = run_eval(config, net, state.params, state.stats, mesh, eval_batches)
      summaries.scalars(step, {f'eval/{k}': v for k, v in result.items()})
      epoch = step / steps_per_epoch
      report(workdir, config, net, result, f'step {step} (epoch {epoch:.1f})',
             {'step': step, 'epoch': epoch})
      return result

    def evaluate_interruptibly(step):
      try:
        return signals.wait(evaluate_and_report, step)
      except Interrupted:
        save(step, force=True)
        ckpts.wait()
        raise Interrupted(f'stopped at step {step}, saved: rerun the same command to resume') from None

    def first_step(state, batch):
      out = train_step(state, batch, step_key)
      jax.block_until_ready(out)
      return out

    if start >= total_steps:
      log.info('%s already holds the final step %d: evaluating it', ckpts.directory, start)
      accuracies = evaluate_interruptibly(start)
    for step in range(start + 1, total_steps + 1):
      batch = sharding.shard_batch(next(train_iter), mesh)
      if step == start + 1:
        # Compiles: on a worker thread, so that Ctrl-C need not wait for it. Speed and ETA count
        # from the end of this step.
        try:
          state, last_metrics = signals.wait(first_step, state, batch)
        except Interrupted:
          raise Interrupted('stopped before the first step; nothing was saved' + (
              f' (the checkpoint of step {start} is as it was)' if start else '')) from None
        log.info('first step done %.1f s after compiling began', time.time() - compile_start)
        timer, timer_step = time.time(), step
      else:
        state, last_metrics = train_step(state, batch, step_key)
      ckpts.check_for_errors()  # a failed asynchronous save stops the run here, at once
      metric_sums = last_metrics if metric_sums is None else _sum_metrics(metric_sums, last_metrics)
      summed += 1

      if step % config.log_every_steps == 0 or step == total_steps:
        scalars = train_scalars(jax.device_get(metric_sums), summed)
        check_finite(scalars, step, f'mean of steps {step - summed + 1}-{step}')
        metric_sums, summed = None, 0
        now = time.time()
        img_per_s = eta = None
        if step > timer_step:
          img_per_s = (step - timer_step) * batch_size / max(now - timer, 1e-9)
          eta = (total_steps - step) * batch_size / img_per_s
          timer, timer_step = now, step
        if jax.process_index() == 0:
          log.info(progress_line(step, total_steps, steps_per_epoch, scalars, net.resolutions,
                                 parts, img_per_s, eta))
        if img_per_s is not None:
          scalars['img_per_s'] = img_per_s
        summaries.scalars(step, {f'train/{k}': v for k, v in scalars.items()})

      if (eval_every and step % eval_every == 0) or step == total_steps:
        accuracies = evaluate_interruptibly(step)
        save(step, metrics={k: v for k, v in accuracies.items() if k.startswith('top')},
             force=True)
        timer, timer_step = time.time(), step  # the evaluation's time is not training speed
      elif step % config.checkpoint_every_steps == 0:
        save(step)

      if signals.should_stop(step, ckpts.manager):
        save(step, force=True)
        ckpts.wait()
        if signals.interrupted:
          raise Interrupted(f'stopped at step {step}, saved: rerun the same command to resume')
        log.warning('stopped at step %d after a preemption request; rerun the same command '
                    'to resume', step)
        accuracies = {}
        break
  return accuracies


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Evaluates the checkpoint `config.eval_checkpoint` ('latest', 'best' or a step number) of
  `workdir` and writes the reports to `<eval_dir>/<step>/` (`eval_dir` defaults to
  `<workdir>/eval`; a single checkpoint, e.g. a converted one, reports to `<eval_dir>/` itself),
  never over the training reports. Checks that the reports can be written before evaluating."""
  defaults.check(config)
  data.kind(config.data).check_storage(config.data)
  storage.check_storage(workdir, '--workdir', checkpoints=True)
  if config.eval_dir:
    storage.check_storage(config.eval_dir, 'config.eval_dir')
  _check_batches(config, ('eval_batch_size',))
  directory, step = checkpoints.find(workdir, config.eval_checkpoint)
  eval_dir = config.eval_dir or os.path.join(os.fspath(workdir), EVAL_SUBDIR)
  out = eval_dir if step is None else os.path.join(eval_dir, str(step))
  storage.check_writable(out, 'pass --config.eval_dir=DIR to write the reports elsewhere')
  net, params, stats = checkpoints.load(directory)
  data.check_num_classes(config, net.num_classes, network=f'the network in {directory}',
                         fix='evaluate it on a data set with its classes')
  name = f'step {step}' if step is not None else 'the checkpoint'
  log.info('evaluating %s of %s, %s, on %s (%d validation images) on %s; reports go to %s', name,
           directory, _describe(net), data.describe(config.data), data.num_eval_examples(config),
           _devices(), out)
  mesh = sharding.make_mesh()
  params, stats = sharding.replicate((params, stats), mesh)
  accuracies = run_eval(config, net, params, stats, mesh)
  which = checkpoints.parse_which(config.eval_checkpoint)
  title = f'{name} (the {which} checkpoint)' if which in checkpoints.NAMES else name
  report(out, config, net, accuracies, title,
         {'step': step, 'checkpoint': os.fspath(directory), 'eval_checkpoint': str(which)})
  return accuracies
