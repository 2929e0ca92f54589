"""The training job, top to bottom: mesh, input, model, checkpoints, loop, evaluation, reports.

Runs unchanged on one CPU, one GPU, a multi-GPU host or a multi-host TPU pod: the batch is split
over every device of every host, each process reads its own part of the data, and only process 0
writes logs, summaries and reports. A run resumes by itself from its work directory, and on
SIGTERM (or a TPU preemption notice) it saves a checkpoint and exits cleanly.
"""
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

import jax
import ml_collections
import numpy as np

from rsnets_jax import checkpoint, data, evaluate, train

log = logging.getLogger('rsnets_jax')


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. a non-finite loss); the message is one line."""


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


# -- the job ---------------------------------------------------------------------------------------

def run_eval(config, net, params, stats, eval_step, mesh) -> Dict[str, float]:
  """Accuracies at every resolution of `net`, trained and added; `skipped`: unreadable images."""
  batches = data.eval_batches(config, net.all_resolutions)
  accuracies = evaluate.evaluate(eval_step, params, stats, batches,
                                 lambda b: train.shard_batch(b, mesh))
  accuracies['skipped'] = getattr(batches, 'skipped', 0)
  return accuracies


def report(workdir, config, net, accuracies, when: str, extra: Dict[str, Any]):
  table = evaluate.results_table(net, accuracies, net.all_resolutions, trained=net.resolutions)
  title = f'RS-{net.arch} on {config.dataset}, {when}'
  evaluate.write_reports(workdir, table, {**extra, 'skipped_images': accuracies.get('skipped', 0)},
                         title)
  if jax.process_index() == 0:
    log.info('evaluation, %s:\n%s', when, evaluate.markdown(table))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, writes reports."""
  # -- mesh --
  mesh = train.make_mesh()
  if config.batch_size % jax.device_count():
    raise TrainingError(f'batch_size {config.batch_size} is not a multiple of the '
                        f'{jax.device_count()} devices')

  # -- input --
  num_train = data.num_train_examples(config)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise TrainingError(f'batch_size {config.batch_size} exceeds the {num_train} training images')
  total_steps = config.max_steps or int(math.ceil(config.num_epochs * steps_per_epoch))
  train_iter = data.train_iterator(config)

  # -- model and optimiser --
  net = train.create_network(config)
  tx, schedule = train.create_optimizer(config, steps_per_epoch)
  state = train.replicate(train.create_train_state(net, tx, jax.random.key(config.seed)), mesh)
  train_step = train.make_train_step(net, tx, schedule, config, mesh)
  eval_step = train.make_eval_step(net, config, mesh)

  # -- checkpoints: resume where the last run stopped --
  best_metric = f'top1/{max(net.resolutions)}'
  ckpts = checkpoint.TrainCheckpoints(workdir, keep=config.checkpoint_keep, best_metric=best_metric)
  meta = {'network': net.config(), 'config': config.to_dict()}
  if ckpts.latest_step() is not None:
    state, data_state = ckpts.restore(state)
    train_iter.set_state(data_state)
    log.info('resumed from step %d in %s', int(state.step), ckpts.directory)
  start = int(jax.device_get(state.step))
  if start >= total_steps:
    log.info('%s already holds the final step %d; use --config.mode=eval to evaluate it',
             ckpts.directory, start)

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
    ckpts.save(state, train_iter.get_state(), meta, metrics=metrics, force=force)

  try:
    for step in range(start + 1, total_steps + 1):
      batch = next(train_iter)
      state, last_metrics = train_step(state, train.shard_batch(batch, mesh))

      if step % config.log_every_steps == 0 or step == total_steps:
        metrics = jax.device_get(last_metrics)
        check_finite(metrics, step)
        now = time.time()
        img_per_s = (step - timer_step) * config.batch_size / max(now - timer, 1e-9)
        eta = (total_steps - step) * config.batch_size / max(img_per_s, 1e-9)
        timer, timer_step = now, step
        if jax.process_index() == 0:
          log.info(progress_line(step, total_steps, steps_per_epoch, metrics, net.resolutions,
                                 img_per_s, eta))
        scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        scalars['img_per_s'] = img_per_s
        summaries.scalars(step, {f'train/{k}': v for k, v in scalars.items()})

      if (eval_every and step % eval_every == 0) or step == total_steps:
        accuracies = run_eval(config, net, state.params, state.stats, eval_step, mesh)
        summaries.scalars(step, {f'eval/{k}': v for k, v in accuracies.items()})
        epoch = step / steps_per_epoch
        report(workdir, config, net, accuracies, f'step {step} (epoch {epoch:.1f})',
               {'step': step, 'epoch': epoch})
        save(step, metrics={k: v for k, v in accuracies.items() if k.startswith('top')},
             force=True)
      elif step % config.checkpoint_every_steps == 0:
        save(step)

      if preemption.should_stop(step, ckpts.manager):
        save(step, force=True)
        ckpts.wait()
        log.warning('stopped at step %d after a preemption request; rerun the same command '
                    'to resume', step)
        break
  finally:
    ckpts.close()
    summaries.close()
    preemption.restore()
  return accuracies


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, float]:
  """Evaluates the latest (or `config.eval_checkpoint`: 'best') checkpoint of `workdir`."""
  mesh = train.make_mesh()
  net, params, stats = checkpoint.load(workdir, which=config.eval_checkpoint)
  eval_step = train.make_eval_step(net, config, mesh)
  params, stats = train.replicate((params, stats), mesh)
  accuracies = run_eval(config, net, params, stats, eval_step, mesh)
  report(workdir, config, net, accuracies, f'{config.eval_checkpoint} checkpoint',
         {'checkpoint': config.eval_checkpoint})
  return accuracies
