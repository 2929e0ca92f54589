"""The Cloud TPU pod path on this machine: gs:// data and checkpoints in a local Cloud Storage
emulator, the pod command on two jax.distributed processes, a preemption notice, resume.

No Google account and nothing beyond loopback: tests/gcs_emulator.py serves the Cloud Storage JSON
API on 127.0.0.1, and `emulator_env` (the one place that does) points every client of the product
at it. The tfds fixture (tests/data/tfds) is copied into a bucket; the command is the one the
docs/cloud_tpu.md gives for a pod slice (configs/tpu_pod.py, run by every host), on a tiny network.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

pytest.importorskip('gcsfs', reason="gs:// needs the cloud extra: pip install -e '.[cloud]'")
pytest.importorskip('gcp_storage_emulator', reason="the test extra: pip install -e '.[test]'")

# pylint: disable=wrong-import-position
import rsnets_jax
from rsnets_jax import checkpoints, cli, defaults, errors
from rsnets_jax.train import loop

from helpers import config_flags, override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(ROOT, 'tests', 'data', 'tfds')  # made by tests/data/make_tfds_fixture.py
EMULATOR = os.path.join(ROOT, 'tests', 'gcs_emulator.py')
BUCKET = 'rsnets-test'
# The fixture's 16 images, batch 8 (4 per process): 2 steps per epoch, 8 steps, a checkpoint
# every 2 (the last with the evaluation). The rest of configs/tpu_pod.py stays as it is.
FIELDS = dict(arch='resnet18', width=0.125, resolutions='(16,)', num_classes=16,
              dtype='float32', tfds_name='rsnets_tiny', batch_size=8, eval_batch_size=8,
              num_workers=0, read_threads=2, num_epochs=4, checkpoint_every_steps=2,
              eval_every_epochs=0, log_every_steps=1, learning_rate=0.1, warmup_epochs=1.0)
FINAL_STEP = 8


def emulator_env(url: str) -> dict:
  """Every variable that points a client at the emulator at `url`, found in each client's source
  and checked against the emulator one by one; the product itself names none of them."""
  return {
      # gcsfs, which etils.epath uses for gs:// (tfds' dataset_info.json and file lists, Orbax's
      # metadata and commit markers, the reports, the checks before a run), and
      # google-cloud-storage (TensorBoard's event files; Orbax's look at the bucket). Without it
      # gcsfs goes to storage.googleapis.com.
      'STORAGE_EMULATOR_HOST': url,
      # gcsfs >= 2026 first asks the storage-control gRPC API (TLS, which the emulator does not
      # serve) whether each bucket is zonal, and with credentials waits 60 s per bucket for it.
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
      # array_record's reader (google-cloud-cpp): the records. Without it: retries the real
      # endpoint for minutes.
      'CLOUD_STORAGE_EMULATOR_ENDPOINT': url,
      # TensorStore's gcs driver: Orbax's arrays (OCDBT). Without it: as array_record.
      'TENSORSTORE_GCS_HTTP_URL': url,
      # Not needed where there are no Google credentials (gcsfs and TensorStore then send none),
      # but where there are (a gcloud login, a cloud VM) these keep them unlooked-for and unsent.
      'FSSPEC_GCS_TOKEN': 'anon',  # gcsfs
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # TensorStore: this bearer token
  }


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def bucket(tmp_path_factory):
  """The emulator, with this module's environment pointing every client at it and the tfds
  fixture at gs://rsnets-test/tensorflow_datasets; stopped at the end of the module."""
  import gcsfs  # pylint: disable=import-outside-toplevel
  log = tmp_path_factory.mktemp('emulator') / 'emulator.log'
  with open(log, 'w') as stderr:
    emulator = subprocess.Popen([sys.executable, EMULATOR], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
  try:
    line = emulator.stdout.readline()
    assert line.startswith('port '), log.read_text()[-3000:]
    port = int(line.split()[1])
    with pytest.MonkeyPatch.context() as patch:
      for name, value in emulator_env(f'http://127.0.0.1:{port}').items():
        patch.setenv(name, value)
      # GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT takes effect when gcsfs is imported, which this
      # process has done: the class it would have chosen.
      patch.setattr(gcsfs, 'GCSFileSystem', gcsfs.core.GCSFileSystem)
      gcsfs.GCSFileSystem.clear_instance_cache()
      fs = gcsfs.GCSFileSystem()
      for name in (BUCKET, 'empty', 'no-access', 'read-only', 'objects-only'):
        fs.mkdir(name)
      fs.put(os.path.join(TFDS_DIR, 'rsnets_tiny'), f'{BUCKET}/tensorflow_datasets/rsnets_tiny',
             recursive=True)
      yield fs
      gcsfs.GCSFileSystem.clear_instance_cache()
  finally:
    emulator.stdin.close()
    emulator.wait(timeout=30)


def pod(workdir, data_dir, out, cache, *flags):
  """The pod command as every host of a slice runs it, here as two processes with one CPU
  device each; `--config.distributed=True` comes from configs/tpu_pod.py, the coordinator (which
  a pod slice discovers) from flags. Returns the processes; their output goes to out<i>.log."""
  port = free_port()
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_NUM_CPU_DEVICES': '1',
         'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
         # Each process compiles the steps in each run (JAX caches compilations of process 0
         # only): without optimisation, half as long. Every run compiles the same programs.
         'XLA_FLAGS': '--xla_backend_optimization_level=0',
         'JAX_COMPILATION_CACHE_DIR': str(cache), 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  procs = []
  for i in range(2):
    cmd = [sys.executable, '-m', 'rsnets_jax.main', '--config=configs/tpu_pod.py',
           f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *config_flags(**FIELDS),
           f'--config.coordinator_address=localhost:{port}', '--config.num_processes=2',
           f'--config.process_id={i}', *flags]
    with open(f'{out}{i}.log', 'w') as log:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def finish(procs, out, timeout=300):
  """Each process's exit status and output, once both have exited."""
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail('the pod run hung:\n' + '\n'.join(
          open(f'{out}{i}.log').read()[-3000:] for i in range(len(procs))))
  return [p.returncode for p in procs], [open(f'{out}{i}.log').read() for i in range(len(procs))]


def committed(fs, workdir):
  """The steps whose checkpoint Orbax has marked complete in the bucket."""
  fs.invalidate_cache()
  steps = [p.rsplit('/', 1)[-1] for p in fs.ls(f'{workdir[5:]}/checkpoints')]
  return sorted(int(s) for s in steps if s.isdigit() and
                fs.exists(f'{workdir[5:]}/checkpoints/{s}/commit_success.txt'))


def test_a_pod_run_on_buckets_is_preempted_resumes_and_equals_a_local_run(bucket, tmp_path):
  fs, cache = bucket, tmp_path / 'xla_cache'
  workdir, data_dir = f'gs://{BUCKET}/runs/pod', f'gs://{BUCKET}/tensorflow_datasets'
  procs = pod(workdir, data_dir, tmp_path / 'first', cache)
  # Once the asynchronous checkpoint of step 2 is complete in the bucket, host 1 (not the one
  # that coordinates) gets the preemption notice as Cloud TPU gives it: SIGTERM. Orbax starts a
  # save once the previous one is complete, so the run is at step 6 at most when the notice comes
  # (unless all of step 4's save fits between two looks at the bucket), and every host stops at
  # the step after the furthest one: before the last.
  deadline = time.time() + 300
  while not fs.exists(f'{workdir[5:]}/checkpoints/2/commit_success.txt'):
    assert all(p.poll() is None for p in procs) and time.time() < deadline, finish(
        procs, tmp_path / 'first', 1)
    time.sleep(0.05)
    fs.invalidate_cache()
  procs[1].send_signal(signal.SIGTERM)
  codes, logs = finish(procs, tmp_path / 'first')
  assert codes == [0, 0], logs
  stopped = committed(fs, workdir)[-1]
  assert 2 < stopped < FINAL_STEP, (stopped, logs)
  # Both hosts saved the same step and said so; neither evaluated.
  for log in logs:
    assert f'stopped at step {stopped} after a preemption request' in log, log[-3000:]
  assert not fs.exists(f'{workdir[5:]}/results.json')

  # The same command resumes from the bucket, finishes and evaluates; beside it, the same pod
  # command on local disk, uninterrupted.
  local = tmp_path / 'local'
  resumed = pod(workdir, data_dir, tmp_path / 'resumed', cache)
  uninterrupted = pod(local, TFDS_DIR, tmp_path / 'local', cache)
  codes, logs = finish(resumed, tmp_path / 'resumed')
  assert codes == [0, 0], logs
  assert f'resumed from step {stopped} in {workdir}/checkpoints' in logs[0], logs[0][-3000:]
  assert committed(fs, workdir)[-1] == FINAL_STEP  # (and fs's listings are fresh)
  results = json.loads(fs.cat(f'{workdir[5:]}/results.json'))
  assert results['count'] == 10 and results['skipped_images'] == 0  # every image once
  assert fs.exists(f'{workdir[5:]}/accuracy_vs_macs.png') and fs.ls(f'{workdir[5:]}/tensorboard')
  codes, logs = finish(uninterrupted, tmp_path / 'local')
  assert codes == [0, 0], logs

  # The same parameters, bit for bit, and the same evaluation.
  _, params, stats = rsnets_jax.load(workdir)
  _, local_params, local_stats = rsnets_jax.load(local)
  same = jax.tree.map(np.array_equal, (params, stats), (local_params, local_stats))
  assert all(jax.tree.leaves(same))
  assert results == json.loads((local / 'results.json').read_text())


# -- what a pod user meets first: one line each, before any work ----------------------------------

def tiny(data_dir, **fields):
  return override(defaults.get_config(),
                  **{**FIELDS, 'resolutions': (16,), 'data_dir': data_dir, **fields})


@pytest.fixture
def no_work(monkeypatch):
  """Any start of the work (the network's initial state, an evaluation) fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError('the run started working')
  monkeypatch.setattr(loop, 'create_train_state', refuse)
  monkeypatch.setattr(loop, 'run_eval', refuse)


DATA = f'gs://{BUCKET}/tensorflow_datasets'
FAILURES = {
    'data in a bucket that does not exist': (
        dict(data_dir='gs://nowhere/tensorflow_datasets'), f'gs://{BUCKET}/runs/x',
        errors.DataError, 'config.data.data_dir gs://nowhere/tensorflow_datasets: bucket '
        'gs://nowhere does not exist'),
    'data in a bucket this account cannot read': (
        dict(data_dir='gs://no-access/tensorflow_datasets'), f'gs://{BUCKET}/runs/x',
        errors.DataError, 'cannot list bucket gs://no-access (rsnets-test@'),
    'a data set not prepared there': (
        dict(data_dir='gs://empty/tensorflow_datasets', tfds_name='imagenet2012'),
        f'gs://{BUCKET}/runs/x', errors.DataError,
        'imagenet2012 is not prepared in gs://empty/tensorflow_datasets: run pip install'),
    'a data set of no known name': (
        dict(data_dir='gs://empty/tensorflow_datasets'), f'gs://{BUCKET}/runs/x', errors.DataError,
        "no data set 'rsnets_tiny' in gs://empty/tensorflow_datasets"),
    'class folders on a bucket': (
        dict(data_dir=DATA, dataset='folder'), f'gs://{BUCKET}/runs/x', errors.DataError,
        'config.data.dataset=folder reads a folder of this machine, not gs://'),
    'a work directory in a bucket that does not exist': (
        dict(data_dir=DATA), 'gs://nowhere/runs/x', errors.ConfigError,
        '--workdir gs://nowhere/runs/x: bucket gs://nowhere does not exist'),
    'a work directory whose bucket Orbax cannot look up': (
        dict(data_dir=DATA), 'gs://objects-only/runs/x', errors.ConfigError,
        '--workdir gs://objects-only/runs/x: cannot read bucket gs://objects-only (rsnets-test@'),
    'a work directory this account cannot write': (
        dict(data_dir=DATA), 'gs://read-only/runs/x', errors.ConfigError,
        'cannot write to gs://read-only/runs/x (rsnets-test@'),
}


@pytest.mark.parametrize('case', FAILURES)
def test_bucket_failures_are_one_line_before_any_work(bucket, no_work, case):
  fields, workdir, error, start = FAILURES[case]
  with pytest.raises(error) as raised:
    loop.train_and_evaluate(tiny(**fields), workdir)
  line = cli.one_line(raised.value)
  assert start in line, line
  assert '\n' not in str(raised.value), line


def test_without_the_cloud_extra_a_gs_path_names_it(bucket, no_work, monkeypatch):
  monkeypatch.setitem(sys.modules, 'gcsfs', None)  # as if not installed
  with pytest.raises(errors.DataError, match=r"needs the cloud extra: pip install -e '\.\[cloud\]' "
                     r'\(gcsfs is missing\)'):
    loop.train_and_evaluate(tiny(DATA), f'gs://{BUCKET}/runs/x')


def test_a_damaged_checkpoint_on_a_bucket_is_moved_aside(bucket):
  """A bucket has no empty folders: the damaged_checkpoints folder exists once a file is in it."""
  fs, run = bucket, f'{BUCKET}/runs/damaged'
  for name in ('commit_success.txt', 'meta/metadata', 'model/manifest.ocdbt'):
    fs.pipe(f'{run}/checkpoints/4/{name}', b'not a checkpoint')
  ckpts = checkpoints.TrainCheckpoints(f'gs://{run}')
  try:
    where = ckpts._set_aside(4)  # pylint: disable=protected-access  # as restore_newest does
  finally:
    ckpts.close()
  fs.invalidate_cache()
  assert os.fspath(where) == f'gs://{run}/damaged_checkpoints/4'
  assert fs.cat(f'{run}/damaged_checkpoints/4/model/manifest.ocdbt') == b'not a checkpoint'
  assert not fs.exists(f'{run}/checkpoints/4/commit_success.txt')


def test_one_writer_per_work_directory_in_a_bucket(bucket):
  """The lock of tests/test_faults.py on gs://: created only if absent (a generation
  precondition), a second writer is one line naming the holder, released at the end."""
  from rsnets_jax.train import lock  # pylint: disable=import-outside-toplevel
  workdir = f'gs://{BUCKET}/runs/locked'
  with lock.RunLock(workdir) as held:
    record = json.loads(bucket.cat(f'{BUCKET}/runs/locked/{lock.LOCK}'))
    assert record['token'] == held.token and record['pid'] == os.getpid()
    with pytest.raises(errors.ConfigError, match=rf'{workdir} is being written by another run '
                                                 rf'\(host {socket.gethostname()}, process '
                                                 rf'{os.getpid()}, since'):
      lock.RunLock(workdir).__enter__()
  assert not bucket.exists(f'{BUCKET}/runs/locked/{lock.LOCK}')
  # A lock whose holder is gone (its process ended on this host) is taken over.
  bucket.pipe(f'{BUCKET}/runs/locked/{lock.LOCK}', json.dumps({
      'host': socket.gethostname(), 'pid': 2**22 + 1, 'started': 0, 'heartbeat': 0,
      'token': 'old'}).encode())
  with lock.RunLock(workdir) as held:
    assert json.loads(bucket.cat(f'{BUCKET}/runs/locked/{lock.LOCK}'))['token'] == held.token
