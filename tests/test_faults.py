"""Faults that lose a user's trust rather than their data: a full disk, two writers on one work
directory, a changed schedule on resume, Ctrl-C at any moment, an export over an export, and bad
inputs to `load`, `predict` and the class folders. Each case checks the message, the exit status
and that nothing was lost."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image

import rsnets_jax
from rsnets_jax import checkpoints, defaults
from rsnets_jax import export as export_command, predict as predict_command
from rsnets_jax.data import folder
from rsnets_jax.deploy import manifest as manifests
from rsnets_jax.errors import ConfigError, DataError
from rsnets_jax.train import lock, loop

from helpers import config_flags, override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny run of the demo's network and data: 16 steps of 2 epochs, a checkpoint every 4.
TINY = dict(resolutions=(24, 16), width=0.125, synthetic_image_size=24, synthetic_train_size=256,
            synthetic_val_size=32, batch_size=32, eval_batch_size=32, num_epochs=2,
            checkpoint_every_steps=4, log_every_steps=2, eval_every_epochs=0.0)


def command(workdir, *flags, env=None, wait=True, cache=None):
  env = {**os.environ, 'PYTHONPATH': ROOT, **(env or {})}
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  cmd = [sys.executable, '-m', 'rsnets_jax.main', '--config=configs/synthetic_demo.py',
         f'--workdir={workdir}', *config_flags(**TINY), *flags]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  return proc.returncode, out, err


def complete_steps(workdir):
  return checkpoints.store.committed_steps(os.path.join(workdir, 'checkpoints'))


def tiny_config(**fields):
  return override(defaults.get_config(), **{**TINY, 'dataset': 'synthetic', 'num_classes': 16,
                                            'num_workers': 0, 'read_threads': 2, **fields})


# -- a full disk -------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def enospc_shim(tmp_path_factory):
  """tests/enospc_shim.c built: with LD_PRELOAD, writes under $ENOSPC_DIR fail with ENOSPC after
  $ENOSPC_AFTER bytes, a full disk without privileges."""
  compiler = shutil.which('cc') or shutil.which('gcc')
  if compiler is None:
    pytest.skip('no C compiler to build the full-disk shim')
  library = tmp_path_factory.mktemp('shim') / 'enospc.so'
  subprocess.run([compiler, '-shared', '-fPIC', '-O2', '-o', str(library),
                  os.path.join(ROOT, 'tests', 'enospc_shim.c'), '-ldl'], check=True)
  return str(library)


def test_a_full_disk_is_one_line_that_says_what_is_intact_and_the_rerun_resumes(
    enospc_shim, tmp_path):
  workdir = tmp_path / 'run'
  cache = tmp_path / 'cache'
  # A run on a disk with room for everything measures one checkpoint.
  code, _, err = command(tmp_path / 'measure', '--config.max_steps=4', cache=cache)
  assert code == 0, err[-3000:]
  step4 = tmp_path / 'measure' / 'checkpoints' / '4'
  size = sum(f.stat().st_size for f in step4.rglob('*') if f.is_file())
  # Room for the checkpoint of step 4 and half of the next: the save at step 8 fails.
  env = {'LD_PRELOAD': enospc_shim, 'ENOSPC_DIR': str(workdir / 'checkpoints'),
         'ENOSPC_AFTER': str(int(size * 1.5))}
  code, _, err = command(workdir, env=env, cache=cache)
  lines = err.strip().splitlines()
  assert code == 1, err[-3000:]
  assert 'Traceback' not in err and len(lines) < 30, err[-3000:]
  assert lines[-1].startswith('error: cannot write ') and 'No space left on device' in lines[-1]
  assert f'the checkpoint of step 4 in {workdir}' in lines[-1] and 'rerun' in lines[-1], lines[-1]
  assert 'step 16/' not in err  # noticed as soon as the save is known to fail, by the next one
  assert complete_steps(workdir) == [4]
  # Space again: the same command resumes from step 4 and finishes.
  code, _, err = command(workdir, cache=cache)
  assert code == 0, err[-3000:]
  assert 'resumed from step 4' in err and complete_steps(workdir)[-1] == 16


# -- a changed schedule ------------------------------------------------------------------------

def test_a_resume_with_another_batch_size_or_length_is_refused_in_one_line(tmp_path):
  workdir = tmp_path / 'run'
  accuracies = loop.train_and_evaluate(tiny_config(max_steps=4), workdir)
  assert accuracies and complete_steps(workdir) == [4]
  before = sorted(p.relative_to(workdir) for p in workdir.rglob('*'))
  for field, value, said in (('batch_size', 16, 'data.batch_size is 16 here, 32 in'),
                             ('num_epochs', 3, 'num_epochs is 3 here, 2 in'),
                             ('learning_rate', 0.01, 'optim.learning_rate is 0.01 here, 0.1 in')):
    with pytest.raises(ConfigError, match=said) as error:
      loop.train_and_evaluate(tiny_config(**{field: value}), workdir)
    assert str(workdir) in str(error.value) and '\n' not in str(error.value)
  assert sorted(p.relative_to(workdir) for p in workdir.rglob('*')) == before
  # max_steps only says where to stop: changing it continues the same schedule.
  assert loop.train_and_evaluate(tiny_config(max_steps=8), workdir)
  assert complete_steps(workdir)[-1] == 8


# -- two writers -------------------------------------------------------------------------------

def test_a_second_writer_is_one_line_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    (workdir / lock.LOCK).write_text(json.dumps({
        'host': socket.gethostname(), 'pid': holder.pid, 'started': time.time(),
        'heartbeat': time.time(), 'token': 'other'}))
    with pytest.raises(ConfigError, match=rf'is being written by another run \(host '
                                          rf'{socket.gethostname()}, process {holder.pid}, since'):
      loop.train_and_evaluate(tiny_config(max_steps=2), workdir)
    assert not (workdir / 'checkpoints').exists()
  finally:
    holder.kill()
    holder.wait()
  # Its process is gone: the next run takes the lock over, trains, and leaves no lock behind.
  assert loop.train_and_evaluate(tiny_config(max_steps=2), workdir)
  assert not (workdir / lock.LOCK).exists()
  # A holder on another host is gone once its heartbeat is older than lock.STALE_S.
  (workdir / lock.LOCK).write_text(json.dumps({
      'host': 'elsewhere', 'pid': 1, 'started': 0, 'heartbeat': time.time() - lock.STALE_S - 1,
      'token': 'old'}))
  with lock.RunLock(workdir) as held:
    assert json.loads((workdir / lock.LOCK).read_text())['token'] == held.token
  assert not (workdir / lock.LOCK).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
  with pytest.raises(ConfigError):
    loop.train_and_evaluate(tiny_config(max_steps=2, batch_size=3), tmp_path)  # 8 devices
  assert not (tmp_path / lock.LOCK).exists()


# -- Ctrl-C ------------------------------------------------------------------------------------

def wait_for(proc, text, timeout=300):
  """stderr lines until one holds `text`; the process must still run."""
  seen, deadline = '', time.time() + timeout
  while time.time() < deadline:
    line = proc.stderr.readline()
    seen += line
    if text in line:
      return seen
    assert line or proc.poll() is None, seen[-3000:]
  raise AssertionError(f'no {text!r} in {seen[-3000:]}')


def test_ctrl_c_while_compiling_stops_at_once_without_a_traceback(tmp_path):
  proc = command(tmp_path, wait=False)  # no compilation cache: the step compiles for seconds
  wait_for(proc, 'compiling')
  time.sleep(0.5)
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert time.time() - sent < 10, 'waited for the compilation to end'
  assert 'interrupted' in err and 'preemption' not in err and 'Traceback' not in err
  assert complete_steps(tmp_path) == []


def test_ctrl_c_during_training_saves_says_interrupted_and_exits_130(tmp_path):
  proc = command(tmp_path, '--config.checkpoint_every_steps=1000', wait=False,
                 cache=tmp_path / 'cache')
  wait_for(proc, 'step 2/')
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  assert 'interrupted' in err and 'preemption' not in err and 'Traceback' not in err
  steps = complete_steps(tmp_path)
  assert len(steps) == 1 and 2 <= steps[0] < 16  # the step it stopped at, saved
  # The same command resumes there.
  code, _, err = command(tmp_path, '--config.checkpoint_every_steps=1000', cache=tmp_path / 'cache')
  assert code == 0 and f'resumed from step {steps[0]}' in err, err[-3000:]


def test_a_second_ctrl_c_stops_at_once_and_one_at_startup_prints_no_traceback(tmp_path):
  proc = command(tmp_path, wait=False)
  wait_for(proc, 'compiling')
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode in (130, -signal.SIGINT) and 'Traceback' not in err, err[-3000:]
  # The first moments: Python is still importing.
  proc = command(tmp_path / 'early', wait=False)
  time.sleep(0.3)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130 and 'Traceback' not in err, err[-3000:]


# -- numbers out of range ----------------------------------------------------------------------

@pytest.mark.parametrize('field, value, said', [
    ('learning_rate', -1.0, 'optim.learning_rate must be positive'),
    ('momentum', 1.5, 'optim.momentum must be in [0, 1)'),
    ('weight_decay', -1e-4, 'optim.weight_decay must be 0 (off) or more'),
    ('warmup_epochs', -1.0, 'optim.warmup_epochs must be 0 (off) or more'),
    ('decay_factor', 0.0, 'optim.decay_factor must be positive'),
    ('num_epochs', 0, 'num_epochs must be positive'),
    ('checkpoint_every_steps', 0, 'checkpoint_every_steps must be at least 1'),
])
def test_every_signed_number_is_checked_before_any_work(field, value, said):
  with pytest.raises(ConfigError, match=rf'config\.{said}'.replace('[', r'\[').replace(')', r'\)')
                     .replace('(', r'\(')):
    defaults.check(tiny_config(**{field: value}))


# -- export over an export ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  loop.train_and_evaluate(tiny_config(max_steps=2), workdir)
  return workdir


def test_an_export_over_an_export_is_refused_unless_overwrite_which_replaces_it_whole(trained,
                                                                                      tmp_path,
                                                                                      capsys):
  dst = tmp_path / 'export'
  assert export_command.main([f'--workdir={trained}', f'--dst={dst}', '--formats=jax']) == 0
  (dst / 'latency.md').write_text('an old measurement')
  before = {p.name: p.read_bytes() for p in dst.iterdir()}
  assert export_command.main([f'--workdir={trained}', f'--dst={dst}', '--formats=jax']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].endswith('already holds an export; pass --overwrite to replace it'), err
  assert {p.name: p.read_bytes() for p in dst.iterdir()} == before
  assert export_command.main([f'--workdir={trained}', f'--dst={dst}', '--formats=jax',
                              '--resolutions=16', '--overwrite']) == 0
  assert sorted(p.name for p in dst.iterdir()) == ['16px.jaxexport', 'manifest.json']
  assert [r['resolution'] for r in manifests.read_manifest(dst)['resolutions']] == [16]
  assert not list(tmp_path.glob('.export*'))  # nothing left beside it


# -- bad inputs --------------------------------------------------------------------------------

def test_load_says_what_it_takes(tmp_path):
  pth = tmp_path / 'model.pth'
  pth.write_bytes(b'PK\x03\x04 not really')
  with pytest.raises(rsnets_jax.CheckpointError, match='rsnets_jax.convert') as error:
    rsnets_jax.load(pth)
  assert 'a work directory' in str(error.value)


def test_predict_turns_a_decompression_bomb_into_its_one_line(trained, tmp_path, capsys):
  dst = tmp_path / 'export'
  assert export_command.main([f'--workdir={trained}', f'--dst={dst}', '--formats=jax']) == 0
  bomb = tmp_path / 'huge.png'
  Image.new('L', (12_000, 12_000)).save(bomb)  # 144 Mpixels: over PIL's limit of about 179 / 2
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # any warning that escapes fails the test
    assert predict_command.main([f'--model={dst}', '--resolution=16', str(bomb)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert any(line.startswith(f'error: {bomb}: cannot read the image') and 'pixels' in line
             for line in err), err
  assert not any('DecompressionBomb' in line and not line.startswith('error:') for line in err)


def test_an_empty_class_folder_is_one_line(tmp_path):
  for name in ('cat', 'dog'):
    (tmp_path / 'train' / name).mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'train' / 'cat' / 'a.png')
  with pytest.raises(DataError, match=r"class folder .*dog has no images"):
    folder.FolderSource(str(tmp_path), 'train')


def test_the_exit_statuses_the_readme_documents(tmp_path):
  """README: 1 for a problem the user can fix, 2 for a rejected command line (130 for Ctrl-C is
  checked above)."""
  readme = open(os.path.join(ROOT, 'README.md')).read()
  assert all(f'{status} means' in readme for status in (0, 1, 2, 130))
  env = {**os.environ, 'PYTHONPATH': ROOT}
  for status, args in (
      (2, ['-m', 'rsnets_jax.main', '--config=configs/synthetic_demo.py', f'--workdir={tmp_path}',
           '--config.data.batchsize=3']),
      (2, ['-m', 'rsnets_jax.export', f'--workdir={tmp_path}', f'--dst={tmp_path}/x', '--nope']),
      (1, ['-m', 'rsnets_jax.main', '--config=configs/synthetic_demo.py', f'--workdir={tmp_path}',
           '--config.optim.learning_rate=-1']),
      (1, ['-m', 'rsnets_jax.predict', f'--model={tmp_path}', 'a.jpg'])):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == status, (args, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr and 'error:' in proc.stderr.strip().splitlines()[-1]
