"""A run that survives its own checkpoints: damaged or mismatched work directories, evaluation that
never overwrites training, bad values caught before any work, kills at any point, real tfds data.

One tiny network and data set serve every test (16 classes, resolutions 16 and 12, 6 steps with a
checkpoint every 2), so the compiled steps are shared: the file takes about two minutes on 2 CPU
cores, half of it the fault-injection test's 11 processes.
"""
import contextlib
import gc
import glob
import json
import logging
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import rsnets_jax
from rsnets_jax import checkpoints, cli, data, defaults, errors
from rsnets_jax.data import tfds as tfds_data, transforms
from rsnets_jax.train import loop, reports, step as steps
from rsnets_jax.models import RSNet

from helpers import config_flags, override
import kill_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TFDS_DIR = os.path.join(ROOT, 'tests', 'data', 'tfds')  # made by tests/data/make_tfds_fixture.py
# 2 steps per epoch, 6 steps, checkpoints at steps 2, 4 and 6 (the last with the evaluation).
TINY = dict(dataset='synthetic', resolutions=(16, 12), width=0.125, num_classes=16,
            synthetic_image_size=16, synthetic_train_size=16, synthetic_val_size=10, batch_size=8,
            eval_batch_size=8, num_workers=0, read_threads=2, num_epochs=3,
            checkpoint_every_steps=2, eval_every_epochs=0, log_every_steps=2)
FINAL_STEP = 6


def tiny(**fields):
  return override(override(defaults.get_config(), **TINY), **fields)


class Records(logging.Handler):
  """The log records of a block, at INFO and above."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.records = []

  def emit(self, record):
    self.records.append(record)

  def messages(self, level=logging.INFO):
    return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def recorded_log():
  logger, handler = logging.getLogger('rsnets_jax'), Records()
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    yield handler
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


def tree(directory):
  """Every file under `directory` with its size and modification time."""
  return sorted((str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns)
                for p in directory.rglob('*'))


def same_trees(a, b):
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def read_scalars(workdir):
  """{(tag, step): value} from the TensorBoard event files (TFRecord framing, no TensorFlow)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  scalars = {}
  for path in glob.glob(os.path.join(workdir, 'tensorboard', 'events.*')):
    with open(path, 'rb') as f:
      buffer = f.read()
    pos = 0
    while pos < len(buffer):
      length = struct.unpack('<Q', buffer[pos:pos + 8])[0]
      event = event_pb2.Event.FromString(buffer[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


def refuse_work(monkeypatch):
  """Makes any start of the work (the network's initial state, an evaluation) fail the test."""
  def refuse(*args, **kwargs):
    raise AssertionError('the run started working')
  monkeypatch.setattr(loop, 'create_train_state', refuse)
  monkeypatch.setattr(loop, 'run_eval', refuse)


@pytest.fixture
def no_work(monkeypatch):
  refuse_work(monkeypatch)


# -- an uninterrupted run, watched -----------------------------------------------------------------

class FakeClock:
  """time.time() for the loop, plus `skew` seconds: lets the first step take 1000 s of
  'compilation' without anyone waiting for it."""

  def __init__(self):
    self.skew = 0.0

  def time(self):
    return time.time() + self.skew


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The tiny run, uninterrupted, with each step's metrics recorded and a first step that the
  loop's clock sees last 1000 s."""
  workdir = tmp_path_factory.mktemp('trained')
  per_step, clock = [], FakeClock()
  make_train_step = steps.make_train_step

  def recording(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)

    def step(state, batch, rng):
      state, metrics = train_step(state, batch, rng)
      per_step.append(jax.device_get(metrics))
      if len(per_step) == 1:
        clock.skew += 1000.0
      return state, metrics
    return step

  with pytest.MonkeyPatch.context() as patch, recorded_log() as log:
    patch.setattr(loop, 'make_train_step', recording)
    patch.setattr(loop, 'time', clock)
    accuracies = loop.train_and_evaluate(tiny(), str(workdir))
  _, params, stats = rsnets_jax.load(workdir)
  return {'workdir': workdir, 'accuracies': accuracies, 'per_step': per_step,
          'log': log.messages(), 'params': params, 'stats': stats}


def test_startup_banner_compiling_and_an_eta_that_does_not_count_compilation(trained):
  log = trained['log']
  assert any('training RS-resnet18 (width 0.125, resolutions 16/12, 16 classes) on generated '
             'images: 16 training images (2 steps per epoch), 10 validation images' in m for m in log)
  assert any(f'6 steps (3.00 epochs) of batch 8 on 8 cpu devices (1 process); work directory '
             f'{trained["workdir"]}' in m for m in log)
  compiling = next(i for i, m in enumerate(log) if m.startswith('compiling'))
  first = next(i for i, m in enumerate(log) if m.startswith('first step done'))
  progress = [m for m in log if m.startswith('step ')]
  assert compiling < first < log.index(progress[0])
  assert float(log[first].split()[3]) >= 1000  # the clock saw the 'compilation'
  # Counted from the end of the first step, the speed is the 6-step run's, not 1000 s worth.
  hours, minutes, seconds = map(int, progress[0].split('ETA ')[1].split(':'))
  assert progress[0].startswith('step 2/6') and hours * 3600 + minutes * 60 + seconds < 60
  img_per_s = float(progress[0].split(' img/s')[0].split('| ')[-1])
  assert img_per_s > 8 / 10  # with the first step inside: 16 images in over 1000 s


def test_train_scalars_are_interval_means_and_top1_is_in_percent_everywhere(trained):
  scalars, per_step = read_scalars(trained['workdir']), trained['per_step']
  assert len(per_step) == FINAL_STEP
  for step in (2, 4, 6):  # log_every_steps=2: each line the mean of its two steps
    pair = per_step[step - 2:step]
    np.testing.assert_allclose(scalars[('train/loss', step)],
                               np.mean([m['loss'] for m in pair]), rtol=1e-6)
    for res in (16, 12):
      np.testing.assert_allclose(scalars[(f'train/top1/{res}', step)],
                                 100 * np.mean([m[f'top1/{res}'] for m in pair]), rtol=1e-6)
  assert any(scalars[('train/loss', s)] != per_step[s - 1]['loss'] for s in (2, 4, 6))
  results = json.loads((trained['workdir'] / 'results.json').read_text())
  for row in results['rows']:
    np.testing.assert_allclose(scalars[(f'eval/top1/{row["resolution"]}', FINAL_STEP)],
                               row['top1'], rtol=1e-6)
  assert results['count'] == 10 and results['skipped_images'] == 0


# -- damaged checkpoints -----------------------------------------------------------------------------

def _truncate_largest_array(step_dir):
  files = [p for p in (step_dir / 'model' / 'ocdbt.process_0' / 'd').iterdir()]
  largest = max(files, key=lambda p: p.stat().st_size)
  with open(largest, 'r+b') as f:
    f.truncate(1000)


DAMAGE = {  # what each does, and the item the one line names
    'truncated array file': (_truncate_largest_array, 'model'),
    'deleted model manifest': (lambda d: (d / 'model' / 'manifest.ocdbt').unlink(), 'model'),
    'deleted train metadata': (lambda d: (d / 'train' / '_METADATA').unlink(), 'train'),
    'broken data JSON': (lambda d: (d / 'data' / 'metadata').write_text('{"iterator": {"a":\t1'),
                         'data'),
}


def killed_after_step_4(trained, workdir):
  """A copy of the run as a kill after step 4's save leaves it: checkpoints 2 and 4, no best."""
  shutil.copytree(trained['workdir'] / 'checkpoints', workdir / 'checkpoints')
  shutil.rmtree(workdir / 'checkpoints' / str(FINAL_STEP))
  for name in ('best_step', 'best_value'):
    (workdir / 'checkpoints' / name).unlink()
  return workdir


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
    trained, tmp_path, damage):
  workdir = killed_after_step_4(trained, tmp_path)
  harm, item = DAMAGE[damage]
  harm(workdir / 'checkpoints' / '4')
  damaged_files = tree(workdir / 'checkpoints' / '4')

  noise = []  # what reaches sys.unraisablehook; TensorStore's late 'Event loop is closed' must not
  previous_hook, sys.unraisablehook = sys.unraisablehook, noise.append
  try:
    if item == 'model':  # `load` reads the model and meta items only
      with pytest.raises(errors.CheckpointError) as error:
        rsnets_jax.load(workdir)
      # Up to what broke: which of the arrays fails first varies from read to read.
      said = ':'.join(str(error.value).split(':')[:2])
      assert said.startswith(f'checkpoint {workdir}/checkpoints/4 does not restore (model: ')
      assert '\n' not in str(error.value), error.value
      del error  # its traceback holds Orbax's unfinished reads
    else:
      rsnets_jax.load(workdir)
      said = f'checkpoint {workdir}/checkpoints/4 does not restore ({item}: '
    with recorded_log() as log:
      accuracies = loop.train_and_evaluate(tiny(), str(workdir))
    gc.collect()  # what the failed reads left behind reports now, not in a later test
  finally:
    sys.unraisablehook = previous_hook
  assert not noise, noise
  warnings = log.messages(logging.WARNING)
  assert len(warnings) == 1 and warnings[0].startswith(said), warnings
  assert warnings[0].endswith(f'); moved it to {workdir}/damaged_checkpoints/4')
  assert len(warnings[0].replace(str(workdir), '')) < 250, warnings[0]  # the gist, not a spec
  assert f'resumed from step 2 in {workdir}/checkpoints' in log.messages()
  assert tree(workdir / 'damaged_checkpoints' / '4') == damaged_files  # kept, not deleted
  _, params, stats = rsnets_jax.load(workdir)
  assert same_trees((params, stats), (trained['params'], trained['stats']))
  assert accuracies == trained['accuracies']


# A notebook keeps the last error; when it goes, asyncio would report each of Orbax's reads that
# failed with it ('Task exception was never retrieved' and a traceback, each).
NOTEBOOK = """
import gc, sys, time
import rsnets_jax
for _ in range(2):
  try:
    rsnets_jax.load(sys.argv[1])
  except rsnets_jax.CheckpointError as error:
    print(error)
    kept = error
  time.sleep(0.2)  # Orbax's other reads of the damaged checkpoint finish meanwhile, failing
del kept
gc.collect()
"""


def test_a_load_error_kept_and_dropped_later_leaves_no_asyncio_noise(trained, tmp_path):
  workdir = killed_after_step_4(trained, tmp_path)
  (workdir / 'checkpoints' / '4' / 'model' / 'manifest.ocdbt').unlink()
  proc = subprocess.run([sys.executable, '-c', NOTEBOOK, str(workdir)], cwd=ROOT,
                        env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  said = proc.stdout.splitlines()
  assert len(said) == 2 and all(line.startswith(f'checkpoint {workdir}/checkpoints/4 does not '
                                                f'restore (model: ') for line in said), said
  assert proc.stderr == '', proc.stderr[-3000:]


def test_when_no_checkpoint_restores_one_line_says_so_and_nothing_moves(trained, tmp_path,
                                                                       monkeypatch):
  workdir = killed_after_step_4(trained, tmp_path)
  for step in (2, 4):
    (workdir / 'checkpoints' / str(step) / 'model' / 'manifest.ocdbt').unlink()
  before = tree(workdir)
  made, train_iterator = [], data.train_iterator

  class Watched:
    """The loop's own input, which it must stop (its loader's workers) even when resuming fails."""

    def __init__(self, config):
      self.iterator, self.closed = train_iterator(config), False
      made.append(self)

    def __next__(self):
      return next(self.iterator)

    def close(self):
      self.closed = True
      self.iterator.close()

  monkeypatch.setattr(data, 'train_iterator', Watched)
  with pytest.raises(errors.CheckpointError) as error:
    loop.train_and_evaluate(tiny(), str(workdir))
  assert len(made) == 1 and made[0].closed
  said = str(error.value)
  del error  # its traceback holds Orbax's unfinished reads: let them go while the filter is on
  gc.collect()
  assert said.startswith(f'no checkpoint in {workdir}/checkpoints restores: step 4 (model: ')
  assert 'step 2 (model: ' in said and said.endswith('move them aside or use another --workdir')
  assert '\n' not in said
  assert not (workdir / 'damaged_checkpoints').exists()
  assert [f for f in tree(workdir) if 'tensorboard' not in f[0]] == before


# -- a work directory of another network -----------------------------------------------------------

@pytest.mark.parametrize('change,said,flag', [
    ({'width': 0.5}, 'width 0.125 there, 0.5 here', '--config.model.width=0.125'),
    ({'resolutions': (16, 8)}, 'resolutions (16, 12) there, (16, 8) here',
     "--config.model.resolutions='(16, 12)'"),
])
def test_a_changed_network_on_an_existing_workdir_is_one_line_and_writes_nothing(
    trained, tmp_path, capsys, no_work, change, said, flag):
  shutil.copytree(trained['workdir'], tmp_path / 'run')
  workdir = tmp_path / 'run'
  before = tree(workdir)
  assert cli.run_command(loop.train_and_evaluate, tiny(**change), str(workdir)) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(f'error: {workdir} holds checkpoints of another '
                                                 f'network'), err
  assert said in err and 'use another --workdir, or its own config' in err and flag in err
  assert tree(workdir) == before


# -- evaluation ---------------------------------------------------------------------------------------

def test_eval_mode_writes_beside_the_training_reports_and_records_the_step(trained, tmp_path):
  shutil.copytree(trained['workdir'], tmp_path / 'run')
  workdir = tmp_path / 'run'
  reports = {name: (workdir / name).read_bytes()
             for name in ('results.json', 'results.md', 'accuracy_vs_macs.png')}
  latest = loop.evaluate_checkpoint(tiny(mode='eval'), str(workdir))
  loop.evaluate_checkpoint(tiny(mode='eval', eval_checkpoint='2'), str(workdir))
  assert {name: (workdir / name).read_bytes() for name in reports} == reports
  training = json.loads(reports['results.json'])
  for step, which in ((6, 'latest'), (2, '2')):
    results = json.loads((workdir / 'eval' / str(step) / 'results.json').read_text())
    assert results['step'] == step and results['eval_checkpoint'] == which
    assert results['checkpoint'] == f'{workdir}/checkpoints/{step}'
    assert (workdir / 'eval' / str(step) / 'accuracy_vs_macs.png').exists()
  assert 'step 6 (the latest checkpoint)' in (workdir / 'eval' / '6' / 'results.md').read_text()
  # The latest checkpoint is the one the training run evaluated last: the same table.
  assert latest == trained['accuracies']
  assert json.loads((workdir / 'eval' / '6' / 'results.json').read_text())['rows'] == training['rows']


def test_only_latest_best_or_a_step_number_names_a_checkpoint(trained, capsys, no_work):
  workdir = trained['workdir']
  before = tree(workdir)
  assert cli.run_command(loop.evaluate_checkpoint, tiny(mode='eval', eval_checkpoint='bestt'),
                         str(workdir)) == 1
  assert capsys.readouterr().err == ("error: config.eval_checkpoint: a checkpoint is 'latest', "
                                     "'best' or a step number, not 'bestt'\n")
  assert cli.run_command(loop.evaluate_checkpoint, tiny(mode='eval', eval_checkpoint='5'),
                         str(workdir)) == 1
  assert capsys.readouterr().err == (f'error: {workdir}/checkpoints has no step 5; its steps: '
                                     f'2, 4, 6\n')
  assert tree(workdir) == before
  with pytest.raises(errors.CheckpointError, match="not 'bestt'"):
    rsnets_jax.load(workdir, which='bestt')
  for which, step in (('best', 6), ('latest', 6), (4, 4), ('2', 2)):
    directory, found = checkpoints.find(workdir, which)
    assert (str(directory), found) == (f'{workdir}/checkpoints/{step}', step)


# -- read-only directories -----------------------------------------------------------------------

@contextlib.contextmanager
def read_only(path):
  """`path` read-only: its write bits removed, or, for root (whom they do not stop), a
  read-only bind mount over it."""
  if os.geteuid() != 0:
    modes = {p: p.stat().st_mode for p in [path, *path.rglob('*')]}
    for p, mode in modes.items():
      p.chmod(mode & ~0o222)
    try:
      yield
    finally:
      for p, mode in modes.items():
        p.chmod(mode)
    return
  mounted = subprocess.run(['mount', '--bind', str(path), str(path)], capture_output=True)
  if mounted.returncode:
    pytest.skip(f'root without a read-only mount: {mounted.stderr.decode().strip()}')
  try:
    subprocess.run(['mount', '-o', 'remount,bind,ro', str(path)], check=True)
    yield
  finally:
    subprocess.run(['umount', str(path)], check=True)


def test_a_read_only_workdir_is_one_line_before_any_work(trained, tmp_path, capsys, monkeypatch):
  empty = tmp_path / 'empty'
  empty.mkdir()
  shutil.copytree(trained['workdir'], tmp_path / 'published')
  published = tmp_path / 'published'
  with read_only(empty), read_only(published):
    with monkeypatch.context() as patch:
      refuse_work(patch)
      assert cli.run_command(loop.train_and_evaluate, tiny(), str(empty)) == 1
      err = capsys.readouterr().err
      assert err.count('\n') == 1 and err.startswith(f'error: cannot write to {empty} (')
      assert err.endswith('): choose another --workdir\n'), err
      assert cli.run_command(loop.evaluate_checkpoint, tiny(mode='eval'), str(published)) == 1
      err = capsys.readouterr().err
      assert err.count('\n') == 1 and err.startswith(f'error: cannot write to {published}/eval/6 (')
      assert err.endswith('pass --config.eval_dir=DIR to write the reports elsewhere\n'), err
    # Evaluating a read-only (e.g. published) work directory is normal use, with eval_dir.
    accuracies = loop.evaluate_checkpoint(tiny(mode='eval', eval_dir=str(tmp_path / 'out')),
                                          str(published))
  assert accuracies == trained['accuracies']
  assert json.loads((tmp_path / 'out' / '6' / 'results.json').read_text())['step'] == 6
  assert not (published / 'eval').exists()


# -- bad values --------------------------------------------------------------------------------------

def make_class_folders(root, classes):
  for split in ('train', 'val'):
    for k in range(classes):
      os.makedirs(root / split / f'c{k}')
      Image.fromarray(np.full((20, 20, 3), 20 * k, np.uint8)).save(root / split / f'c{k}' / '0.png')
  return root


@pytest.mark.parametrize('fields,said', [
    ({'batch_size': 0}, 'config.data.batch_size must be a positive number of images, got 0'),
    ({'resolutions': (16, 0)}, 'resolutions must be positive, got (16, 0)'),
    ({'eval_batch_size': 12}, 'config.data.eval_batch_size 12 is not a multiple of the 8 devices'),
    ({'log_every_steps': 0}, 'config.log_every_steps must be at least 1, got 0'),
    ({'dataset': 'folder', 'num_classes': 3},
     '{root}/train (its class folders) has 5 classes but the network (model.num_classes) has 3: '
     'pass --config.model.num_classes=5'),
])
def test_a_bad_config_value_is_one_line_before_any_work(tmp_path, capsys, no_work, fields, said):
  root = make_class_folders(tmp_path / 'images', 5)
  config = tiny(**fields, data_dir=str(root))
  assert cli.run_command(loop.train_and_evaluate, config, str(tmp_path / 'run')) == 1
  assert capsys.readouterr().err == f'error: {said.format(root=root)}\n'
  assert not (tmp_path / 'run').exists()


def test_unknown_config_field_names_the_closest_ones():
  from absl import flags  # pylint: disable=import-outside-toplevel
  import rsnets_jax.main  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  argv = ['main', '--config=configs/synthetic_demo.py', '--workdir=x']
  unknown = lambda *args: cli.unknown_config_field([*argv, *args], flags.FLAGS)
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    assert unknown('--config.data.batch_sise=4').startswith(
        "unknown config field 'data.batch_sise'; did you mean data.batch_size")
    assert unknown('--config.batch_size=4') == ("unknown config field 'batch_size'; did you mean "
                                               "data.batch_size?")
    assert unknown('--config.nope=1') == ("unknown config field 'nope'; rsnets_jax/defaults.py "
                                         "lists every field")
    assert unknown('--config.data.batch_size=4', '--config.model.width=0.5') is None
  finally:
    os.chdir(cwd)


def test_results_md_says_how_many_images_were_skipped():
  net = RSNet('resnet18', (16, 12), 16, 0.125)
  accuracies = {'top1/16': 50.0, 'top5/16': 90.0, 'top1/12': 40.0, 'top5/12': 80.0,
                'count': 10, 'skipped': 2}
  table = reports.results_table(net, accuracies, net.resolutions)
  assert table['skipped_images'] == 2
  assert reports.markdown(table).endswith(
      '10 validation images, each counted once; 2 unreadable images skipped.\n')
  table = reports.results_table(net, {**accuracies, 'skipped': 0}, net.resolutions)
  assert reports.markdown(table).endswith('; none skipped.\n')


# -- real tfds data ------------------------------------------------------------------------------

def test_a_data_set_prepared_by_tfds_trains_and_evaluates_through_the_product_path(tmp_path):
  config = tiny(dataset='tfds', tfds_name='rsnets_tiny', data_dir=TFDS_DIR, max_steps=2)
  accuracies = loop.train_and_evaluate(config, str(tmp_path))
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['count'] == accuracies['count'] == 10 and results['skipped_images'] == 0
  assert 'tensorflow' not in sys.modules  # read without TensorFlow
  # The same numbers from the records themselves, decoded here and run through `apply`.
  net, params, stats = rsnets_jax.load(tmp_path)
  source = tfds_data.TfdsSource('rsnets_tiny', TFDS_DIR, 'validation')
  images = [transforms.open_image(source[i]['image']) for i in range(len(source))]
  labels = np.array([source[i]['label'] for i in range(len(source))])
  assert sorted(labels.tolist()) == sorted(i % 16 for i in range(10))
  for res in net.resolutions:
    x = jnp.asarray(np.stack([transforms.eval_view(image, res) for image in images]), jnp.float32) / 255
    logits = np.asarray(net.apply(params, stats[res], x))
    top1 = 100.0 * np.mean(logits.argmax(-1) == labels)
    assert accuracies[f'top1/{res}'] == pytest.approx(top1, abs=1e-9)


# -- kills at random points ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('xla_cache'))


def kill_points(seed: int, count: int):
  """`count` kill points from a seeded generator: kinds in turn (so each comes up), steps and
  delays drawn. Saves happen at steps 2, 4 and 6."""
  rng = np.random.default_rng(seed)
  points = []
  for i in range(count):
    kind = ('step', 'before', 'during', 'after')[i % 4]
    step = int(rng.integers(1, FINAL_STEP + 1) if kind == 'step' else rng.choice([2, 4, 6]))
    delay = float(rng.uniform(0.0, 0.05)) if kind == 'during' else 0.0
    points.append((kind, step, delay))
  return points


def test_a_run_killed_anywhere_reruns_to_the_uninterrupted_parameters(tmp_path, compile_cache):
  """Each of 10 runs is SIGKILLed at its own point, then rerun: every rerun completes with the
  uninterrupted run's parameters, bit for bit. One process holds a rerun and the next kill (and
  the first one the uninterrupted run), so 11 processes compile once each."""
  points = kill_points(seed=11, count=10)
  assert {kind for kind, _, _ in points} == {'step', 'before', 'during', 'after'}
  workdir = lambda i: str(tmp_path / f'run{i}')
  report = lambda i: str(tmp_path / f'kill{i}.json')
  processes = [[(str(tmp_path / 'uninterrupted'), None, None), (workdir(0), points[0], report(0))]]
  processes += [[(workdir(i), None, None), (workdir(i + 1), points[i + 1], report(i + 1))]
                for i in range(len(points) - 1)]
  processes += [[(workdir(len(points) - 1), None, None)]]

  context = multiprocessing.get_context('forkserver')
  context.set_forkserver_preload(['kill_worker', 'rsnets_jax.train.loop', 'tensorboardX',
                                  'matplotlib.pyplot'])
  # One resolution: the kills test the checkpoints, not the network, and each process then
  # traces half as much (the tests above resume the two-resolution network).
  fields = {**TINY, 'resolutions': (16,)}
  for n, jobs in enumerate(processes):
    log = str(tmp_path / f'process{n}.log')
    process = context.Process(target=kill_worker.run, args=(jobs, fields, log, compile_cache))
    process.start()
    process.join(timeout=300)
    killed = jobs[-1][1] is not None
    assert process.exitcode == (-9 if killed else 0), open(log).read()[-3000:]

  _, want, want_stats = rsnets_jax.load(tmp_path / 'uninterrupted')
  cut_saves = 0
  for i, point in enumerate(points):
    held = json.loads(open(report(i)).read())
    assert held['kill'] == list(point)
    cut_saves += point[0] == 'during' and any('tmp' in name for name in held['checkpoints'])
    assert held['best_step'] is None or held['best_step'] in held['checkpoints']  # a complete one
    _, params, stats = rsnets_jax.load(workdir(i))
    assert checkpoints.find(workdir(i))[1] == checkpoints.find(workdir(i), 'best')[1] == FINAL_STEP
    assert same_trees((params, stats), (want, want_stats)), (i, point)
  assert cut_saves >= 1  # some kill did land inside an asynchronous save


def test_the_command_line_shows_a_damaged_checkpoint_as_one_line(trained, tmp_path):
  """What a user's screen shows for the noisiest damage, a deleted manifest (before: 85 lines
  with 14 'Event loop is closed' tracebacks), when eval mode reads it."""
  workdir = killed_after_step_4(trained, tmp_path)
  (workdir / 'checkpoints' / '4' / 'model' / 'manifest.ocdbt').unlink()
  proc = subprocess.run([sys.executable, '-m', 'rsnets_jax.main', '--config=configs/synthetic_demo.py',
                         f'--workdir={workdir}', '--config.mode=eval', *config_flags(**TINY)],
                        cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stdout == ''
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith(f'error: checkpoint {workdir}/checkpoints/4 does not restore (model: '
                             f'NOT_FOUND: Metadata at "params.'), lines[0]
