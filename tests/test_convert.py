"""The PyTorch -> JAX converter: the published layout maps in full, converted networks give the
reference's logits at every resolution, and bad or unsafe files are refused with one line."""
import importlib
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import rsnets_jax
from rsnets_jax import checkpoints, convert as convert_command
from rsnets_jax.checkpoints import pytorch

PAPER = (224, 192, 160, 128, 96)
# Odd sizes deep in the network (48 -> 24 -> 12 -> 6 -> 3 -> 2) pin the padding arithmetic.
RESOLUTIONS = (64, 48, 32)
NUM_CLASSES = 10
BATCH = 3
MAX_RELATIVE_ERROR = 1e-4  # float32, max |jax - torch| / max |torch|
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def torch():
  return pytest.importorskip('torch')  # an optional dependency: pip install .[torch]


@pytest.fixture(scope='module')
def ref(torch):
  """The PyTorch networks with the reference's layout (tests/torch_reference.py)."""
  import torch_reference  # pylint: disable=import-outside-toplevel
  return torch_reference


def numpy_state_dict(module):
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


class RunsCodeWhenUnpickled:
  """What a malicious checkpoint holds: unpickling it calls os.system."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


# -- the published layout -------------------------------------------------------------------------

@pytest.mark.parametrize('arch,keys,num_params,probes', [
    # Counts with 5 resolutions and 1000 classes, alpha included (reference.md).
    ('resnet18', 523, 11_727_917, {'module.conv1.module.weight': (64, 3, 7, 7),
                                   'module.layer1.0.bn1.bn_3.running_var': (64,),
                                   'module.layer2.0.downsample.1.bn_2.bias': (128,),
                                   'module.fc.module.weight': (1000, 512)}),
    ('resnet34', 939, 21_797_672 + 4 * 2 * 8512 + 5, {'module.layer3.5.conv2.module.weight':
                                                       (256, 256, 3, 3)}),
    ('resnet50', 1381, 25_769_517, {'module.layer4.0.downsample.0.module.weight': (2048, 1024, 1, 1),
                                    'module.layer1.0.conv3.module.weight': (256, 64, 1, 1),
                                    'module.fc.module.weight': (1000, 2048)}),
    ('mobilenet_v2', 1355, 3_641_325, {'module.features.0.0.module.weight': (32, 3, 3, 3),
                                       'module.features.0.1.bn_4.num_batches_tracked': (),
                                       'module.features.1.conv.3.module.weight': (16, 32, 1, 1),
                                       'module.features.17.conv.3.module.weight': (960, 1, 3, 3),
                                       'module.conv.0.module.weight': (1280, 320, 1, 1),
                                       'module.classifier.module.weight': (1000, 1280)}),
])
def test_published_layout_maps_in_full(torch, ref, arch, keys, num_params, probes):
  model = ref.create(arch, num_classes=1000, num_resolutions=len(PAPER))
  state_dict = numpy_state_dict(torch.nn.DataParallel(model))
  assert len(state_dict) == keys
  assert sum(p.numel() for p in model.parameters()) == num_params
  assert state_dict['module.alpha'].shape == (len(PAPER),)
  for key, shape in probes.items():
    assert state_dict[key].shape == shape, key

  net = rsnets_jax.create_model(arch, PAPER, 1000)
  params, stats = pytorch.torch_to_jax(state_dict, net)
  want_params, want_stats = net.init_shapes()
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), tree)
  assert shapes(params) == shapes(want_params)
  assert shapes(stats) == shapes(want_stats)
  assert sum(x.size for x in jax.tree.leaves(params)) == num_params
  assert pytorch.infer_num_classes(state_dict) == 1000


# -- converted networks compute what the reference computes ---------------------------------------

@pytest.mark.parametrize('arch', ['resnet18', 'resnet50', 'mobilenet_v2'])
def test_converted_logits_match_pytorch(torch, ref, tmp_path, arch):
  torch.manual_seed(0)
  model = ref.randomize(ref.create(arch, NUM_CLASSES, len(RESOLUTIONS)), RESOLUTIONS)
  src, dst = tmp_path / 'model_best.pth.tar', tmp_path / 'converted'
  ref.save_reference_checkpoint(model, src, f'parallel_{arch}')

  # The class count comes from the classifier's weight.
  assert convert_command.main(['--arch', arch, '--src', str(src), '--dst', str(dst),
                       '--resolutions', *map(str, RESOLUTIONS)]) == 0
  net, params, stats = checkpoints.load(dst)
  assert (net.arch, net.resolutions, net.num_classes) == (arch, RESOLUTIONS, NUM_CLASSES)
  meta = checkpoints.read_meta(dst)
  assert meta['converted_from'] == str(src)
  assert meta['source_checkpoint'] == {'arch': f'parallel_{arch}', 'epoch': 120, 'best_acc0': 73.1,
                                       'best_acc': 162.0}
  np.testing.assert_array_equal(params['alpha'], model.alpha.detach().numpy())

  apply = jax.jit(net.apply)
  rng = np.random.default_rng(0)
  errors = {}
  for i, res in enumerate(RESOLUTIONS):
    x = rng.uniform(0, 1, (BATCH, res, res, 3)).astype(np.float32)
    want = model.run(torch.from_numpy(x.transpose(0, 3, 1, 2)), i).numpy()
    got = np.asarray(apply(params, stats[res], x))
    assert got.shape == want.shape == (BATCH, NUM_CLASSES)
    # Random statistics per resolution: logits that do not depend on the resolution would mean a
    # BatchNorm mix-up that the comparison below could miss.
    assert np.abs(want).max() > 1e-2 and np.std(want) > 1e-3
    errors[res] = float(np.abs(got - want).max() / np.abs(want).max())
  print(f'{arch}: max relative logit error per resolution {errors}')
  assert max(errors.values()) <= MAX_RELATIVE_ERROR, errors


def test_bare_state_dict(torch, ref, tmp_path):
  """A state dict saved on its own, with or without DataParallel's prefix (the Orbax round trip
  is the same as above, so this stops at the trees)."""
  model = ref.randomize(ref.create('resnet18', NUM_CLASSES, len(RESOLUTIONS)), RESOLUTIONS)
  block = model.layer2[0]
  for prefix, state_dict in (('', model.state_dict()),
                             ('module.', torch.nn.DataParallel(model).state_dict())):
    assert all(k.startswith(prefix) for k in state_dict)
    src = tmp_path / f'weights{prefix}pth'
    torch.save(state_dict, src)
    loaded, info = pytorch.read_torch_checkpoint(src)
    assert info == {} and pytorch.infer_num_classes(loaded) == NUM_CLASSES
    net = rsnets_jax.create_model('resnet18', RESOLUTIONS, NUM_CLASSES)
    params, stats = pytorch.torch_to_jax(loaded, net)
    np.testing.assert_array_equal(params['conv1']['kernel'],
                                  model.conv1.module.weight.detach().numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params['fc']['kernel'], model.fc.module.weight.detach().numpy().T)
    np.testing.assert_array_equal(params['fc']['bias'], model.fc.module.bias.detach().numpy())
    for i, res in enumerate(RESOLUTIONS):
      bn = getattr(block.downsample[1], f'bn_{i}')  # the i-th BatchNorm is the i-th resolution's
      ours = params['layer2_0']['downsample_bn']
      np.testing.assert_array_equal(ours[f'scale_{res}'], bn.weight.detach())
      np.testing.assert_array_equal(ours[f'bias_{res}'], bn.bias.detach())
      np.testing.assert_array_equal(stats[res]['layer2_0']['downsample_bn']['mean'], bn.running_mean)
      np.testing.assert_array_equal(stats[res]['layer2_0']['downsample_bn']['var'], bn.running_var)
      assert int(stats[res]['resolution']) == res


def test_mobilenet_depthwise_and_block_indices(ref):
  model = ref.randomize(ref.create('mobilenet_v2', NUM_CLASSES, 1), (32,))
  net = rsnets_jax.create_model('mobilenet_v2', (32,), NUM_CLASSES)
  params, stats = pytorch.torch_to_jax(numpy_state_dict(model), net)
  dw = model.features[1].conv[0].module.weight.detach().numpy()  # expansion 1: depthwise first
  assert dw.shape == (32, 1, 3, 3)
  np.testing.assert_array_equal(params['block1']['depthwise_conv']['kernel'],
                                dw.transpose(2, 3, 1, 0))
  project_bn = model.features[5].conv[7].bn_0  # expansion 6: the projection BN is conv.7
  np.testing.assert_array_equal(stats[32]['block5']['project_bn']['var'], project_bn.running_var)
  np.testing.assert_array_equal(params['head_bn']['scale_32'], model.conv[1].bn_0.weight.detach())


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize('container', ['torch.save', 'pickle'])
def test_refuses_a_checkpoint_that_runs_code(torch, tmp_path, container):
  marker, src = tmp_path / 'pwned', tmp_path / 'model_best.pth.tar'
  payload = RunsCodeWhenUnpickled(marker)
  if container == 'torch.save':
    torch.save({'epoch': 1, 'arch': 'parallel_resnet18', 'state_dict': {'x': torch.zeros(1)},
                'extra': payload}, src)
  else:
    src.write_bytes(pickle.dumps(payload, protocol=2))  # torch's safe unpickler reads protocol 2
  with pytest.raises(pytorch.ConversionError,
                     match='refusing to load .*: it needs unsafe unpickling .*posix.system') as e:
    pytorch.convert('resnet18', src, tmp_path / 'out')
  assert '\n' not in str(e.value)
  assert not marker.exists()
  assert not (tmp_path / 'out').exists()


def test_cli_error_is_one_line_and_nothing_runs(torch, tmp_path):
  """The one test through a real process: exit status, stderr, and no payload executed."""
  marker, src = tmp_path / 'pwned', tmp_path / 'model_best.pth.tar'
  torch.save({'state_dict': {'alpha': torch.ones(5)}, 'x': RunsCodeWhenUnpickled(marker)}, src)
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  result = subprocess.run(
      [sys.executable, '-m', 'rsnets_jax.convert', '--arch', 'resnet18', '--src', str(src),
       '--dst', str(tmp_path / 'out')], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if 'rsnets_jax.convert: error:' in line]
  assert len(errors) == 1 and 'refusing to load' in errors[0], result.stderr
  assert 'Traceback' not in result.stderr
  assert not marker.exists() and not (tmp_path / 'out').exists()


@pytest.mark.usefixtures('torch')
@pytest.mark.parametrize('content,said', [
    (np.random.default_rng(0).bytes(3000), 'is not a PyTorch checkpoint: it is neither the zip '
                                           'archive nor the pickle that torch.save writes'),
    (b'hello, this is a text file\n', 'is not a PyTorch checkpoint: it is neither the zip '
                                      'archive nor the pickle that torch.save writes'),
    (pickle.dumps({'a': 1}, protocol=2), 'is not a PyTorch checkpoint: a pickle, but not one '
                                         'that torch.save wrote'),
    (pickle.dumps({'a': 1}, protocol=5), 'is not a PyTorch checkpoint, or it is damaged: its '
                                         'pickle data does not read (Unsupported operand 149)'),
], ids=['random bytes', 'text', 'plain pickle', 'pickle protocol 5'])
def test_a_file_that_is_not_a_checkpoint_is_not_called_dangerous(tmp_path, content, said):
  src = tmp_path / 'model.pth'
  src.write_bytes(content)
  with pytest.raises(pytorch.ConversionError) as e:
    pytorch.convert('resnet18', src, tmp_path / 'out')
  assert str(e.value).startswith(f'{src} {said}'), e.value
  assert 'refusing' not in str(e.value) and '\n' not in str(e.value)


def test_a_truncated_checkpoint_says_so(torch, tmp_path):
  whole, src = tmp_path / 'whole.pth', tmp_path / 'model.pth'
  torch.save({'state_dict': {'alpha': torch.ones(5)}}, whole)
  src.write_bytes(whole.read_bytes()[:200])
  with pytest.raises(pytorch.ConversionError) as e:
    pytorch.convert('resnet18', src, tmp_path / 'out')
  assert str(e.value) == (f'cannot read {src} as a PyTorch checkpoint: PytorchStreamReader failed '
                          f'reading zip archive: failed finding central directory')


@pytest.mark.usefixtures('torch')
def test_missing_file_is_one_line(capsys, tmp_path):
  status = convert_command.main(['--arch', 'resnet18', '--src', str(tmp_path / 'nope.pth'),
                         '--dst', str(tmp_path / 'out')])
  assert status == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'no such file' in err and 'nope.pth' in err


def test_mismatched_keys_are_named(ref):
  state_dict = numpy_state_dict(ref.create('resnet18', NUM_CLASSES, len(RESOLUTIONS)))
  del state_dict['layer1.0.bn1.bn_2.running_var']
  state_dict['layer1.0.bn1.bn_3.weight'] = np.ones(64, np.float32)
  state_dict['fc.module.weight'] = np.zeros((NUM_CLASSES, 256), np.float32)
  net = rsnets_jax.create_model('resnet18', RESOLUTIONS, NUM_CLASSES)
  with pytest.raises(pytorch.ConversionError) as e:
    pytorch.torch_to_jax(state_dict, net)
  message = str(e.value)
  assert '\n' not in message
  assert '1 missing key: layer1.0.bn1.bn_2.running_var' in message
  assert '1 unexpected key: layer1.0.bn1.bn_3.weight' in message
  assert 'fc.module.weight [10, 256] (expected [10, 512])' in message

  # A whole other network: the first few of each kind, and how many more.
  other = numpy_state_dict(ref.create('mobilenet_v2', NUM_CLASSES, len(RESOLUTIONS)))
  with pytest.raises(pytorch.ConversionError, match=r'missing keys: .*\(\d+ more\).*unexpected keys'):
    pytorch.torch_to_jax(other, net)


def test_resolution_count_must_match(ref, tmp_path):
  src = tmp_path / 'model.pth'
  ref.save_reference_checkpoint(ref.create('resnet18', NUM_CLASSES, 2), src, 'parallel_resnet18')
  with pytest.raises(pytorch.ConversionError, match='trained at 2 resolutions.*--resolutions'):
    pytorch.convert('resnet18', src, tmp_path / 'out', RESOLUTIONS)


def test_does_not_overwrite_a_directory_unasked(ref, tmp_path):
  src, dst = tmp_path / 'model.pth', tmp_path / 'work'
  ref.save_reference_checkpoint(ref.create('resnet18', NUM_CLASSES, 1), src, 'parallel_resnet18')
  dst.mkdir()
  (dst / 'notes.txt').write_text('keep me')
  with pytest.raises(pytorch.ConversionError, match='not an empty directory.*--overwrite'):
    pytorch.convert('resnet18', src, dst, (32,))
  assert (dst / 'notes.txt').read_text() == 'keep me'


def test_importing_the_converter_does_not_need_torch(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails
  monkeypatch.delitem(sys.modules, 'rsnets_jax.checkpoints.pytorch')
  monkeypatch.delattr(rsnets_jax.checkpoints, 'pytorch', raising=False)
  fresh = importlib.import_module('rsnets_jax.checkpoints.pytorch')
  assert fresh is not pytorch
  with pytest.raises(fresh.ConversionError, match=r'pip install \.\[torch\]'):
    fresh.read_torch_checkpoint(tmp_path / 'model.pth')
