"""The command line as a user runs it: end to end, resume after a kill, clear errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import jax

import rsnets_jax
import rsnets_jax.cli
import rsnets_jax.errors

from helpers import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small but complete run: five resolutions, generated data, evaluation, checkpoints, reports.
SMALL = config_flags(synthetic_train_size=512, synthetic_val_size=96, batch_size=32,
                     eval_batch_size=64, log_every_steps=2)


def main(workdir, *flags, config='configs/synthetic_demo.py', cache=None, wait=True):
  env = {**os.environ, 'PYTHONPATH': ROOT}
  if cache:  # later runs of the same program skip XLA compilation
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  cmd = [sys.executable, '-m', 'rsnets_jax.main', f'--config={config}', f'--workdir={workdir}', *flags]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  if not wait:
    return proc
  out = proc.communicate(timeout=600)[0]
  return proc.returncode, out


def test_default_command_end_to_end(tmp_path):
  code, out = main(tmp_path, *SMALL, '--config.max_steps=8')
  assert code == 0, out[-3000:]
  assert 'step 8/8' in out and 'img/s' in out and 'ETA' in out
  results = json.loads((tmp_path / 'results.json').read_text())
  assert [r['resolution'] for r in results['rows']] == [32, 28, 24, 20, 16]
  assert results['count'] == 96 and 'ensemble' in results
  assert all(0 <= r['top1'] <= 100 and r['macs'] > 0 for r in results['rows'])
  table = (tmp_path / 'results.md').read_text()
  assert '| 32 |' in table and 'ensemble' in table
  assert (tmp_path / 'accuracy_vs_macs.png').stat().st_size > 10_000
  assert (tmp_path / 'accuracy_vs_macs.svg').stat().st_size > 10_000
  assert any((tmp_path / 'tensorboard').iterdir())
  net, params, stats = rsnets_jax.load(tmp_path)
  assert net.resolutions == (32, 28, 24, 20, 16) and sorted(stats) == [16, 20, 24, 28, 32]
  # The evaluation command reads the same checkpoint and reproduces the table, beside it.
  code, out = main(tmp_path, *SMALL, '--config.mode=eval')
  assert code == 0, out[-3000:]
  again = json.loads((tmp_path / 'eval' / '8' / 'results.json').read_text())
  assert again['step'] == 8 and again['eval_checkpoint'] == 'latest'
  assert [r['top1'] for r in again['rows']] == [r['top1'] for r in results['rows']]
  assert json.loads((tmp_path / 'results.json').read_text()) == results


RESUME = SMALL + config_flags(resolutions='(24, 16)', width=0.125, synthetic_image_size=24,
                              max_steps=12, checkpoint_every_steps=3, eval_every_epochs=0,
                              log_every_steps=1)


def committed_steps(workdir):
  d = workdir / 'checkpoints'
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  cache = tmp_path / 'xla_cache'
  code, out = main(tmp_path / 'whole', *RESUME, cache=cache)
  assert code == 0, out[-3000:]

  proc = main(tmp_path / 'killed', *RESUME, cache=cache, wait=False)
  deadline = time.time() + 300
  while not [s for s in committed_steps(tmp_path / 'killed') if s >= 6] and time.time() < deadline:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert max(committed_steps(tmp_path / 'killed')) < 12, 'the run finished before it was killed'

  code, out = main(tmp_path / 'killed', *RESUME, cache=cache)
  assert code == 0, out[-3000:]
  assert 'resumed from step' in out
  _, whole, whole_stats = rsnets_jax.load(tmp_path / 'whole')
  _, resumed, resumed_stats = rsnets_jax.load(tmp_path / 'killed')
  same = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-6, atol=1e-7),
                      (whole, whole_stats), (resumed, resumed_stats))
  assert all(jax.tree.leaves(same))


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  proc = main(tmp_path, *RESUME, '--config.max_steps=100000', '--config.checkpoint_every_steps=1000',
              wait=False)
  deadline = time.time() + 300
  out = ''
  while time.time() < deadline:
    line = proc.stdout.readline()
    out += line
    if 'step 2/' in line:
      break
  proc.send_signal(signal.SIGTERM)
  out += proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out[-3000:]
  assert 'preemption' in out
  steps = committed_steps(tmp_path)
  assert steps and steps[-1] >= 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  code, out = main(tmp_path, *RESUME, '--config.optim.learning_rate=1e30')
  assert code != 0
  assert 'loss is' in out and 'untouched' in out
  last = out.strip().splitlines()[-1]
  assert last.startswith('error: loss is'), last


def test_unknown_config_key_is_one_clear_error(tmp_path):
  code, out = main(tmp_path, '--config.data.batch_sise=64')
  assert code != 0
  assert 'batch_sise' in out
  assert 'Traceback' not in out
  assert out.strip().splitlines()[-1].startswith(
      "error: unknown config field 'data.batch_sise'; did you mean data.batch_size")


def test_wrong_data_path_is_one_clear_error(tmp_path):
  code, out = main(tmp_path, f'--config.data.data_dir={tmp_path}/nowhere', config='configs/imagenette.py')
  assert code == 1
  lines = [l for l in out.strip().splitlines() if l.strip()]
  assert lines[-1].startswith('error:') and 'nowhere' in lines[-1], out
  assert 'Traceback' not in out


def test_a_bug_keeps_its_traceback(tmp_path):
  """Only errors a user can cause are one line; anything else is a bug and shows where it is."""
  program = ('import sys\n'
             'from absl import app\n'
             'from rsnets_jax import cli, main\n'
             'from rsnets_jax.train import loop\n'
             'def broken(*args, **kwargs):\n'
             '  raise ValueError("a bug, not a user error")\n'
             'loop.train_and_evaluate = broken\n'
             'app.run(main.main, flags_parser=cli.parse_absl_flags)\n')
  proc = subprocess.run([sys.executable, '-c', program, '--config=configs/synthetic_demo.py',
                         f'--workdir={tmp_path}'], cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'Traceback' in proc.stderr and 'in broken' in proc.stderr
  assert 'ValueError: a bug, not a user error' in proc.stderr


def test_user_errors_are_one_line_and_status_1(capsys):
  def body():
    raise rsnets_jax.errors.DataError('no images in /x')
  assert rsnets_jax.cli.run_command(body, prog='tool') == 1
  assert capsys.readouterr().err == 'tool: error: no images in /x\n'
  assert rsnets_jax.cli.run_command(lambda: None) == 0


# A work directory written by the first release (checkpoint format 1: kernels at .../conv/kernel),
# 3 steps of `configs/default.py` (today's synthetic_demo.py) with these fields; and the logits of
# its latest checkpoint on fixed inputs, computed by that release.
FORMAT1_RUN = os.path.join(ROOT, 'tests', 'data', 'v1_run')
FORMAT1_FLAGS = config_flags(
    width=0.0625, resolutions='(16, 12)', synthetic_train_size=64, synthetic_val_size=32,
    synthetic_image_size=16, batch_size=16, eval_batch_size=32, checkpoint_keep=1,
    checkpoint_every_steps=1, log_every_steps=1)


def test_format1_checkpoints_load_with_the_same_logits():
  net, params, stats = rsnets_jax.load(FORMAT1_RUN)
  assert net.resolutions == (16, 12) and net.width == 0.0625
  assert set(params['conv1']) == {'kernel'}  # today's layout
  expected = np.load(os.path.join(FORMAT1_RUN, 'expected_logits.npz'))
  for res in net.resolutions:
    logits = net.apply(params, stats[res], expected[f'x{res}'])
    np.testing.assert_allclose(logits, expected[f'logits{res}'], rtol=1e-5, atol=1e-6)


def test_a_format1_run_resumes(tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(os.path.join(FORMAT1_RUN, 'checkpoints'), tmp_path / 'checkpoints')
  code, out = main(tmp_path, *FORMAT1_FLAGS, '--config.max_steps=5')
  assert code == 0, out[-3000:]
  assert 'resumed from step 3' in out and 'step 5/5' in out
  assert committed_steps(tmp_path)[-1] == 5
  net, params, _ = rsnets_jax.load(tmp_path)
  _, old_params, _ = rsnets_jax.load(FORMAT1_RUN)
  assert not np.allclose(params['conv1']['kernel'], old_params['conv1']['kernel'])  # it trained on
  meta = json.loads((tmp_path / 'checkpoints' / '5' / 'meta' / 'metadata').read_text())
  assert meta['format'] == 2 and meta['model']['resolutions'] == [16, 12]


def test_a_bad_config_value_is_one_clear_error(tmp_path):
  code, out = main(tmp_path, *SMALL, '--config.model.resolutions=(16, 32)')
  assert code == 1 and 'Traceback' not in out
  assert out.strip().splitlines()[-1].startswith('error: resolutions must be distinct and largest first')


@pytest.mark.parametrize('environ, libc, thp, want', [
    ({}, ('glibc', '2.36'), 'always [madvise] never', True),
    ({}, ('glibc', '2.35'), 'always [madvise] never\n', True),
    ({}, ('glibc', '2.34'), 'always [madvise] never', False),   # no such tunable yet
    ({}, ('', ''), 'always [madvise] never', False),            # musl and others
    ({}, ('glibc', '2.36'), '[always] madvise never', False),   # every allocation has them already
    ({}, ('glibc', '2.36'), 'always madvise [never]', False),
    ({}, ('glibc', '2.36'), None, False),                       # no transparent huge pages
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, ('glibc', '2.36'), 'always [madvise] never',
     False),                                                    # the user's own choice
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, ('glibc', '2.36'), 'always [madvise] never',
     True),
    ({'RSNETS_JAX_NO_RESTART': '1'}, ('glibc', '2.36'), 'always [madvise] never', False),
])
def test_when_a_command_restarts_with_huge_pages(environ, libc, thp, want):
  assert rsnets_jax.cli.wants_huge_pages(environ, libc, thp) is want


def _thp_mode():
  try:
    with open(rsnets_jax.cli.THP_MODE) as f:
      return f.read()
  except OSError:
    return None


@pytest.mark.parametrize('opt_out', [False, True])
def test_a_command_restarts_once_and_gets_huge_pages(opt_out):
  """The restart keeps the command line and the environment, adds the tunable once, and glibc
  then backs a large allocation with huge pages; RSNETS_JAX_NO_RESTART=1 keeps the process."""
  script = ("import os, sys; print('started', flush=True); from rsnets_jax import cli; "
            "cli.restart_with_huge_pages(); import numpy as np; a = np.ones(64 << 20, np.uint8); "
            "huge = [int(l.split()[1]) for l in open('/proc/self/smaps_rollup') "
            "if l.startswith('AnonHugePages')]; "
            "print(os.environ.get('GLIBC_TUNABLES'), huge[0] if huge else 0, sys.argv[1:])")
  env = {**os.environ, 'PYTHONPATH': ROOT, 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'}
  env.pop('RSNETS_JAX_NO_RESTART', None)
  if opt_out:
    env['RSNETS_JAX_NO_RESTART'] = '1'
  out = subprocess.run([sys.executable, '-c', script, 'a b', '--flag=1'], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  import platform  # pylint: disable=import-outside-toplevel
  restarts = not opt_out and sys.platform.startswith('linux') and rsnets_jax.cli.wants_huge_pages(
      {}, platform.libc_ver(), _thp_mode())
  tunables, huge_kb, argv = out[-1].split(' ', 2)
  assert out[:-1] == ['started'] * (1 + restarts)
  assert argv == "['a b', '--flag=1']"
  if restarts:
    assert tunables == 'glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1'
    assert int(huge_kb) >= 2048, out
  else:
    assert tunables == 'glibc.malloc.arena_max=4'
