"""Training processes that SIGKILL themselves at a chosen point: the fault-injection test's child.

`run(jobs, config_fields, log)` trains `config_fields` (names as tests/helpers.override takes them)
once per job through the product's loop, in one process; a job `(workdir, kill, report)` with a
kill point dies there by SIGKILL, as `kill -9` or a lost machine ends a run: no `finally`, no
flush, an asynchronous save cut wherever it was. Later jobs of the process then never run, so a
kill point belongs to the process's last job. Kill points `(kind, step, delay)`:
    ('step', s, 0)      once step s is computed, before anything else happens
    ('before', s, 0)    when step s's checkpoint save is called, before it starts
    ('during', s, d)    d seconds after that save returned, its files still being written
    ('after', s, 0)     once that save has finished writing
Before dying it writes to `report` what the checkpoint directory held (and the best step it
names), so that the test can tell that a 'during' kill did cut a save. Jobs after the first one of a process reuse its compiled
steps, so a process costs one compilation however many runs it holds.
"""
import json
import os
import signal
import time

import jax

_kill = {}  # the running job's kill point: workdir, kill, report


def _die():
  checkpoints = os.path.join(_kill['workdir'], 'checkpoints')
  names = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
  best = os.path.join(checkpoints, 'best_step')
  with open(_kill['report'], 'w') as f:
    json.dump({'kill': list(_kill['kill']), 'checkpoints': names,
               'best_step': open(best).read() if os.path.exists(best) else None}, f)
  os.kill(os.getpid(), signal.SIGKILL)


def _at(kind: str, step: int) -> bool:
  kill = _kill.get('kill')
  return kill is not None and (kill[0], kill[1]) == (kind, step)


def _install_kill_points():
  from rsnets_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from rsnets_jax.train import loop  # pylint: disable=import-outside-toplevel
  make_train_step, save = loop.make_train_step, checkpoints.TrainCheckpoints.save

  def make_killing_step(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)

    def step(state, batch, rng):
      state, metrics = train_step(state, batch, rng)
      if _kill.get('kill') and _at('step', int(state.step)):
        _die()
      return state, metrics
    return step

  def killing_save(self, state, *args, **kwargs):
    step = int(jax.device_get(state.step))
    if _at('before', step):
      _die()
    saved = save(self, state, *args, **kwargs)
    if _at('during', step):
      time.sleep(_kill['kill'][2])
      _die()
    if _at('after', step):
      self.wait()
      _die()
    return saved

  loop.make_train_step = make_killing_step
  checkpoints.TrainCheckpoints.save = killing_save


def run(jobs, config_fields: dict, log: str, compilation_cache=None):
  with open(log, 'a') as f:  # the process's output, for the test to show when it fails
    os.dup2(f.fileno(), 1)
    os.dup2(f.fileno(), 2)
  jax.config.update('jax_num_cpu_devices', 1)
  if compilation_cache:
    jax.config.update('jax_compilation_cache_dir', compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

  from helpers import override  # pylint: disable=import-outside-toplevel
  from rsnets_jax import cli, defaults  # pylint: disable=import-outside-toplevel
  from rsnets_jax.train import loop  # pylint: disable=import-outside-toplevel
  cli.setup_logging()
  _install_kill_points()
  config = override(defaults.get_config(), **config_fields)
  for workdir, kill, report in jobs:
    _kill.update(workdir=workdir, kill=kill, report=report)
    loop.train_and_evaluate(config, workdir)
