"""The training loop, top to bottom: mesh, input, model, checkpoints, loop, evaluation, reports.

The only loop in the project: `main` runs it on the config's data, and experiments run it on
iterators they build themselves (`train_and_evaluate(config, workdir, train_iter, eval_batches,
steps_per_epoch)`), so every run gets resume, the non-finite-loss stop, checkpoints, TensorBoard
and the reports. Runs unchanged on one CPU, one GPU, a multi-GPU host or a multi-host TPU pod: the
batch is split over every device of every host, each process reads its own part of the data, and
only process 0 writes logs, summaries and reports. A run resumes by itself from its work
directory, and on SIGTERM (or a TPU preemption notice) it saves a checkpoint and stops.
"""
import logging
import math
import os
import signal
import time
from typing import Any, Dict, Iterable, Iterator, Optional

import jax
import ml_collections
import numpy as np

from rsnets_jax import checkpoint, data, evaluate, steps
from rsnets_jax.errors import ConfigError, TrainingError
from rsnets_jax.network import RSNet

log = logging.getLogger('rsnets_jax')


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


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def progress_line(step, total, steps_per_epoch, metrics, resolutions, img_per_s, eta_s) -> str:
  ce = ' '.join(f"{r}:{metrics[f'ce/{r}']:.3f}" for r in resolutions)
  return (f'step {step}/{total} epoch {step / steps_per_epoch:.2f} | loss {metrics["loss"]:.4f} '
          f'| ce {ce} | ens {metrics["ens_ce"]:.3f} kd {metrics["kd"]:.3f} '
          f'| lr {metrics["learning_rate"]:.4g} | {img_per_s:.0f} img/s | ETA {_format_eta(eta_s)}')


class Preemption:
  """Turns SIGTERM (and SIGINT) into a request to save and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not in the main thread
        pass

  def _handle(self, signum, frame):
    del frame
    log.warning('signal %d received: saving a checkpoint and stopping', signum)
    self.requested = True

  def should_stop(self, step: int, manager) -> bool:
    # On a TPU pod every host must agree; Orbax's manager also sees the platform's preemption notice.
    return self.requested or manager.reached_preemption(step)

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# -- evaluation and reports -------------------------------------------------------------------------

def run_eval(config, net: RSNet, params, stats, mesh, batches: Optional[Iterable] = None
             ) -> Dict[str, float]:
  """Accuracies at every resolution of `net`, trained and added, over `batches` (default: the
  config's validation set); a batch may hold more resolutions than `net`, which are not used.
  `skipped` counts unreadable images."""
  batches = data.eval_batches(config, net.all_resolutions) if batches is None else batches
  eval_step = steps.make_eval_step(net, config.data, mesh)

  def shard(batch):
    batch = {**batch, 'images': {r: batch['images'][r] for r in net.all_resolutions}}
    return steps.shard_batch(batch, mesh)

  accuracies = evaluate.evaluate(eval_step, params, stats, batches, shard)
  accuracies['skipped'] = getattr(batches, 'skipped', 0)
  return accuracies


def report(workdir, config, net, accuracies, when: str, extra: Dict[str, Any]):
  table = evaluate.results_table(net, accuracies, net.all_resolutions, trained=net.resolutions)
  title = f'RS-{net.arch} on {config.data.dataset}, {when}'
  evaluate.write_reports(workdir, table, {**extra, 'skipped_images': accuracies.get('skipped', 0)},
                         title)
  if jax.process_index() == 0:
    log.info('evaluation, %s:\n%s', when, evaluate.markdown(table))


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
  # -- mesh --
  mesh = steps.make_mesh()
  batch_size = config.data.batch_size
  if batch_size % jax.device_count():
    raise ConfigError(f'data.batch_size {batch_size} is not a multiple of the '
                      f'{jax.device_count()} devices')

  # -- input --
  owns_input = train_iter is None
  if owns_input:
    num_train = data.num_train_examples(config)
    steps_per_epoch = num_train // batch_size
    if steps_per_epoch == 0:
      raise ConfigError(f'data.batch_size {batch_size} exceeds the {num_train} training images')
    train_iter = data.train_iterator(config)
  elif not steps_per_epoch:
    raise ValueError('a train_iter needs the steps_per_epoch it makes')
  total_steps = config.max_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
  schedule_steps = int(config.num_epochs * steps_per_epoch)

  # -- model, optimiser and steps --
  net = RSNet(**config.model)
  init_key, step_key = steps.run_keys(config.seed)
  tx, _ = steps.create_optimizer(config.optim, schedule_steps, steps_per_epoch)
  state = steps.replicate(steps.create_train_state(net, tx, init_key), mesh)
  step_key = steps.replicate(step_key, mesh)
  train_step = steps.make_train_step(net, config, schedule_steps, steps_per_epoch, mesh)

  # -- checkpoints: resume where the last run stopped --
  best_metric = f'top1/{max(net.resolutions)}'
  ckpts = checkpoint.TrainCheckpoints(workdir, keep=config.checkpoint_keep, best_metric=best_metric)
  meta = checkpoint.model_meta(net, {'config': config.to_dict()})
  if ckpts.latest_step() is not None:
    state, data_state = ckpts.restore(state)
    if data_state is not None and hasattr(train_iter, 'set_state'):
      train_iter.set_state(data_state)
    else:
      log.warning('the input cannot restore its position: the data order restarts')
    log.info('resumed from step %d in %s', int(state.step), ckpts.directory)
  start = int(jax.device_get(state.step))

  # -- loop --
  summaries = Summaries(workdir)
  preemption = Preemption()
  accuracies: Dict[str, float] = {}
  last_metrics: Optional[Dict[str, Any]] = None
  eval_every = max(int(config.eval_every_epochs * steps_per_epoch), 1) if config.eval_every_epochs else 0
  timer, timer_step = time.time(), start

  def check_finite(metrics, step):
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      last = ckpts.latest_step()
      raise TrainingError(f'loss is {loss} at step {step}; stopping. The last good checkpoint '
                          f'(step {last}) in {ckpts.directory} is untouched.')

  def save(step, metrics=None, force=False):
    if ckpts.latest_step() == step:  # e.g. preempted right after the evaluation's save
      return
    if last_metrics is not None:
      check_finite(jax.device_get(last_metrics), step)
    data_state = train_iter.get_state() if hasattr(train_iter, 'get_state') else None
    ckpts.save(state, data_state, meta, metrics=metrics, force=force)

  def evaluate_and_report(step):
    result = run_eval(config, net, state.params, state.stats, mesh, eval_batches)
    summaries.scalars(step, {f'eval/{k}': v for k, v in result.items()})
    epoch = step / steps_per_epoch
    report(workdir, config, net, result, f'step {step} (epoch {epoch:.1f})',
           {'step': step, 'epoch': epoch})
    return result

  try:
    if start >= total_steps:
      log.info('%s already holds the final step %d: evaluating it', ckpts.directory, start)
      accuracies = evaluate_and_report(start)
    for step in range(start + 1, total_steps + 1):
      batch = next(train_iter)
      state, last_metrics = train_step(state, steps.shard_batch(batch, mesh), step_key)

      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = jax.device_get(last_metrics)
        check_finite(metrics, step)
        now = time.time()
        img_per_s = (step - timer_step) * batch_size / max(now - timer, 1e-9)
        eta = (total_steps - step) * batch_size / max(img_per_s, 1e-9)
        timer, timer_step = now, step
        if jax.process_index() == 0:
          log.info(progress_line(step, total_steps, steps_per_epoch, metrics, net.resolutions,
                                 img_per_s, eta))
        scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        scalars['img_per_s'] = img_per_s
        summaries.scalars(step, {f'train/{k}': v for k, v in scalars.items()})

      if (eval_every and step % eval_every == 0) or step == total_steps:
        accuracies = evaluate_and_report(step)
        save(step, metrics={k: v for k, v in accuracies.items() if k.startswith('top')},
             force=True)
      elif step % config.checkpoint_every_steps == 0:
        save(step)

      if preemption.should_stop(step, ckpts.manager):
        save(step, force=True)
        ckpts.wait()
        log.warning('stopped at step %d after a preemption request; rerun the same command '
                    'to resume', step)
        accuracies = {}
        break
  finally:
    ckpts.close()
    summaries.close()
    preemption.restore()
    if owns_input and hasattr(train_iter, 'close'):
      train_iter.close()  # stops the loader's worker processes
  return accuracies


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Evaluates the latest (or `config.eval_checkpoint`: 'best') checkpoint of `workdir`."""
  mesh = steps.make_mesh()
  net, params, stats = checkpoint.load(workdir, which=config.eval_checkpoint)
  params, stats = steps.replicate((params, stats), mesh)
  accuracies = run_eval(config, net, params, stats, mesh)
  report(workdir, config, net, accuracies, f'{config.eval_checkpoint} checkpoint',
         {'checkpoint': config.eval_checkpoint})
  return accuracies
