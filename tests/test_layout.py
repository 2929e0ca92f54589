"""The layout's promises: a data set added in one file runs through training, evaluation, the
reports and export; kinds (data sets, architectures, distillation modes, export formats) say what
they support where they are defined, so no other code branches on their names; the repository
stands alone."""
import ast
import json
import os
import pathlib
from typing import List, Optional

import numpy as np
import pytest

import rsnets_jax
from rsnets_jax import data, defaults, models
from rsnets_jax.deploy import export, formats
from rsnets_jax.train import loop, losses

from helpers import override

ROOT = pathlib.Path(__file__).resolve().parents[1]


# -- a data set added in one file (here: in this test), registered in one line -----------------

class Checkerboard(data.DataSet):
  """Two classes of 20 px images: a checkerboard whose cell is 2 px (class 0) or 5 px (class 1)."""
  name = 'checkerboard'
  train_split, val_split = 'train', 'test'
  reads_data_dir = False

  def open(self, config_data, split: str):
    size = 64 if split == 'train' else 24
    rng = np.random.default_rng(0 if split == 'train' else 1)
    records = []
    for i in range(size):
      label, cell = i % 2, (2, 5)[i % 2]
      y, x = np.mgrid[0:20, 0:20]
      board = (((y + rng.integers(cell)) // cell + (x + rng.integers(cell)) // cell) % 2) * 200
      image = np.repeat(board[..., None], 3, axis=-1) + rng.integers(0, 40, (20, 20, 3))
      records.append({'image': image.astype(np.uint8), 'label': label, 'name': f'{split}/{i}'})
    return records

  def num_classes(self, config_data, train_source=None) -> int:
    return 2

  def class_names(self, config_data) -> Optional[List[str]]:
    return ['fine', 'coarse']

  def report_name(self, config_data) -> str:
    return 'Checkerboards'

  def describe(self, config_data) -> str:
    return 'generated checkerboards'


@pytest.fixture
def checkerboard():
  data.register(Checkerboard())
  yield
  del data.DATA_SETS['checkerboard']


def test_a_data_set_added_in_one_file_trains_evaluates_reports_and_exports(checkerboard, tmp_path,
                                                                           caplog):
  config = override(defaults.get_config(), dataset='checkerboard', resolutions=(16, 12),
                    num_classes=2, width=0.0625, batch_size=16, eval_batch_size=8, num_workers=0,
                    read_threads=2, num_epochs=1, log_every_steps=2, checkpoint_every_steps=100,
                    eval_every_epochs=0.0)
  caplog.set_level('INFO', logger='rsnets_jax')
  accuracies = loop.train_and_evaluate(config, tmp_path / 'run')
  assert accuracies['count'] == 24 and {'top1/16', 'top1/12', 'top1/ensemble'} <= set(accuracies)
  assert 'on generated checkerboards: 64 training images (4 steps per epoch), 24 validation' in (
      caplog.text)
  assert (tmp_path / 'run' / 'results.md').read_text().startswith(
      '### RS-resnet18 on Checkerboards, step 4')

  config.mode = 'eval'
  again = loop.evaluate_checkpoint(config, tmp_path / 'run')
  assert again == accuracies

  manifest = export.export_model(tmp_path / 'run', tmp_path / 'export', formats=('jax',), log=str)
  assert manifest['class_names'] == ['fine', 'coarse']
  assert manifest['class_names_source'] == 'generated checkerboards'
  assert [r['top1'] for r in manifest['resolutions']] == [accuracies['top1/16'],
                                                          accuracies['top1/12']]


def test_an_unknown_data_set_is_one_line_naming_the_registered_ones():
  config = override(defaults.get_config(), dataset='checkerboards')
  with pytest.raises(rsnets_jax.UserError, match=r"unknown dataset 'checkerboards'; choose one of "
                                                 r"\['folder', 'synthetic', 'tfds'\]"):
    defaults.check(config)


# -- kinds say what they support where they are defined ----------------------------------------

def test_architectures_declare_what_they_support():
  archs = models.ARCHITECTURES
  assert {a for a, spec in archs.items() if spec.quantizes_weights} == {
      'lq_resnet18', 'lq_resnet50', 'lq_preact_resnet18', 'lq_preact_resnet50'}
  assert {a for a, spec in archs.items() if spec.quantizes_activations} == {
      'lq_preact_resnet18', 'lq_preact_resnet50'}
  # The PyTorch layouts the converter maps: the full-precision reference's networks only.
  assert {a for a, spec in archs.items() if spec.torch_name} == {
      'resnet18', 'resnet34', 'resnet50', 'mobilenet_v2'}
  with pytest.raises(rsnets_jax.UserError, match='needs a network with activation quantizers'):
    rsnets_jax.create_model('lq_resnet18', (16,), 10, activation_bits=2)


def test_distillation_modes_declare_their_loss_parts():
  assert {name: mode.parts for name, mode in losses.DISTILLATIONS.items()} == {
      'none': ('ens_ce',), 'ens': ('ens_ce', 'kd'), 'ens_topdown': ('ens_ce', 'kd')}
  logits = [np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)]
  for name, mode in losses.DISTILLATIONS.items():
    _, parts = losses.rs_loss(logits, np.array([0, 1]), np.zeros(2, np.float32), name)
    assert set(parts) == {'ce', 'ens_logits', *mode.parts}


def test_export_formats_declare_suffix_runtime_and_accuracy():
  assert {n: (f.suffix, f.runtime, f.accuracy_key, f.switchable)
          for n, f in formats.FORMATS.items()} == {
      'jax': ('jaxexport', 'jax', None, False), 'onnx': ('onnx', 'onnxruntime', None, False),
      'onnx_int8': ('int8.onnx', 'onnxruntime_int8', 'int8', False),
      'jax_switchable': ('jaxexport.zip', 'jax_switchable', None, True),
      'onnx_switchable': ('onnx', 'onnxruntime_switchable', None, True)}
  assert [formats.FORMATS[n].file_name(64) for n in ('jax', 'onnx_switchable')] == [
      '64px.jaxexport', 'switchable.onnx']
  row = {'top1': 70.0, 'int8': {'top1': 69.5}}
  assert [formats.by_runtime(f.runtime).top1(row) for f in formats.FORMATS.values()] == [
      70.0, 70.0, 69.5, 70.0, 70.0]


def _string_constants(path: pathlib.Path):
  """The string literals of a module that are not docstrings."""
  tree = ast.parse(path.read_text())
  docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                and node.body and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)}
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
      yield node.lineno, node.value


def _modules(*exclude):
  for path in sorted((ROOT / 'rsnets_jax').rglob('*.py')):
    relative = path.relative_to(ROOT / 'rsnets_jax').as_posix()
    if not relative.startswith(exclude):
      yield relative, path


def test_no_code_outside_a_kinds_room_names_one_of_its_kinds():
  # defaults.py is the base config, which names the paper's data set and network.
  data_sets = set(data.DATA_SETS) | {'imagenet2012', 'imagenette'}
  found = [(p, line, s) for p, path in _modules('data/', 'defaults.py')
           for line, s in _string_constants(path) if s in data_sets]
  assert not found, f'data-set names outside rsnets_jax/data: {found}'
  archs = set(models.ARCHITECTURES)
  found = [(p, line, s) for p, path in _modules('models/', 'defaults.py')
           for line, s in _string_constants(path)
           if s in archs or s.startswith(('resnet', 'mobilenet', 'lq_'))]
  assert not found, f'architecture names outside rsnets_jax/models: {found}'
  # What only an export format is called ('jax', 'onnx' and 'onnxruntime' are also packages).
  names = {n for f in formats.FORMATS.values() for n in (f.name, f.suffix, f.runtime)}
  names -= {'jax', 'onnx', 'onnxruntime'}
  found = [(p, line, s) for p, path in _modules('deploy/formats.py')
           for line, s in _string_constants(path) if s in names]
  assert not found, f'export formats named outside rsnets_jax/deploy/formats.py: {found}'


def test_the_repository_stands_alone():
  """Nothing a person who clones the repository reads points outside it."""
  places = [ROOT / 'README.md', *ROOT.glob('docs/**/*.md'), *ROOT.glob('configs/*.py'),
            *ROOT.glob('rsnets_jax/**/*.py')]
  found = [str(p.relative_to(ROOT)) for p in places if '../shared' in p.read_text()
           or '/work/' in p.read_text()]
  assert not found, f'references outside the repository: {found}'
  assert (ROOT / 'docs' / 'quantization.md').exists()


def test_the_readme_is_a_front_door():
  readme = (ROOT / 'README.md').read_text()
  assert len(readme.encode()) < 12_000
  # Its two commands: the default job and the tests, as .ci/run runs them.
  assert 'python -m rsnets_jax.main --config=configs/synthetic_demo.py' in readme
  ci = (ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
  assert ci in readme
  for link in __import__('re').findall(r'\]\(((?:docs|experiments)/[^)#]+)', readme):
    assert (ROOT / link).exists(), link
