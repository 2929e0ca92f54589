"""Unseen resolutions: recalibrated BatchNorm statistics are the average of the batch statistics
(as PyTorch's momentum=None recalibration computes them), affine parameters are interpolated
between the training neighbours (or the nearest's), the trained network is left alone, and the
command runs end to end."""
import importlib.util
import json
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnets_jax
from rsnets_jax import checkpoints, data
from rsnets_jax.checkpoints import pytorch
from rsnets_jax.errors import ConfigError
from rsnets_jax.data import preprocess
from rsnets_jax.train import (add_resolutions as add_resolutions_job, optim, recalibrate, reports,
                              step as steps)
from rsnets_jax.models import RESOLUTION_KEY, RSNet, rsnet

from helpers import config_flags, override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINED = (32, 16)
ADDED = 24  # halfway: the tie goes to 32
BATCH = 16
NUM_IMAGES = 40  # whole batches until 40 images: the first 3 of the 4 below
# The run the command is given, on a small generated data set (configs/synthetic_demo.py plus these).
OVERRIDES = {'resolutions': TRAINED, 'width': 0.125, 'synthetic_image_size': 32,
             'synthetic_train_size': 256, 'synthetic_val_size': 64, 'batch_size': BATCH,
             'eval_batch_size': 64}


def small_config():
  spec = importlib.util.spec_from_file_location(
      'synthetic_demo', os.path.join(ROOT, 'configs', 'synthetic_demo.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return override(module.get_config(), **OVERRIDES)


def bn_dicts(params):
  """Every BatchNorm's parameter dict, by path."""
  found = {}

  def walk(tree, path):
    if any(k.startswith('scale_') for k in tree):
      found[path] = tree
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, path + (k,))

  walk(params, ())
  return found


def untagged(stats):
  return {k: v for k, v in stats.items() if k != RESOLUTION_KEY}


@pytest.fixture(scope='module')
def trained():
  """A tiny RS-ResNet-18 whose BatchNorms differ per resolution, as after training."""
  config = small_config()
  net = RSNet(**config.model)
  params, stats = net.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(np.asarray, params)
  for bn in bn_dicts(params).values():
    for res in TRAINED:
      bn[f'scale_{res}'] = (0.5 + rng.uniform(size=bn[f'scale_{res}'].shape)).astype(np.float32)
      bn[f'bias_{res}'] = (0.2 * rng.normal(size=bn[f'bias_{res}'].shape)).astype(np.float32)

  def perturbed(tree):  # running statistics of its own (means near 0, variances near 1)
    return jax.tree.map(lambda x: (rng.uniform(0.5, 2, x.shape) * np.asarray(x)
                                   + rng.normal(0, 0.1, x.shape)).astype(np.float32), tree)

  stats = {res: {RESOLUTION_KEY: tree[RESOLUTION_KEY], **perturbed(untagged(tree))}
           for res, tree in stats.items()}
  return net, params, stats


@pytest.fixture(scope='module')
def crops():
  """The first four training batches of the generated set: uint8 crops at 32, as training gets."""
  it = data.train_iterator(small_config())
  return [next(it)['image'] for _ in range(4)]


@pytest.fixture(scope='module')
def added(trained, crops):
  return rsnets_jax.add_resolution(*trained, ADDED, crops, num_images=NUM_IMAGES)


def test_statistics_are_the_average_of_batch_statistics(added, crops):
  net, params, stats = added
  kernel = params['conv1']['kernel']

  def first_bn_moments(batch):
    x = preprocess.to_float(preprocess.resize(jnp.asarray(batch, jnp.float32), ADDED))
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((3, 3), (3, 3)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
    y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
    return y.mean(0), y.var(0, ddof=1)  # PyTorch's running variance is the unbiased one

  moments = [first_bn_moments(b) for b in crops]
  used = -(-NUM_IMAGES // BATCH)
  want_mean = np.mean([m for m, _ in moments[:used]], axis=0)
  want_var = np.mean([v for _, v in moments[:used]], axis=0)
  np.testing.assert_allclose(stats[ADDED]['bn1']['mean'], want_mean, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(stats[ADDED]['bn1']['var'], want_var, rtol=2e-5)
  # Not the biased variance, nor a batch beyond NUM_IMAGES, nor a momentum-0.1 running average.
  biased = np.mean([v * (1 - 1 / (BATCH * 12 * 12)) for _, v in moments[:used]], axis=0)
  assert not np.allclose(stats[ADDED]['bn1']['var'], biased, rtol=2e-5, atol=0)
  assert not np.allclose(stats[ADDED]['bn1']['mean'], np.mean([m for m, _ in moments], axis=0),
                         rtol=1e-3)
  ema = 0.0
  for m, _ in moments[:used]:
    ema = 0.9 * ema + 0.1 * m
  assert not np.allclose(stats[ADDED]['bn1']['mean'], ema, rtol=1e-2)


def test_affine_parameters_are_interpolated_between_the_neighbours(trained, added, crops):
  sources = recalibrate.affine_sources
  assert sources(TRAINED, 24) == {16: 0.5, 32: 0.5}
  assert sources(TRAINED, 28) == {16: 0.25, 32: 0.75}
  # Outside the trained range, and asked for: the nearest alone (a tie goes to the larger).
  assert sources(TRAINED, 40) == {32: 1.0} and sources(TRAINED, 8) == {16: 1.0}
  assert sources(TRAINED, 24, 'nearest') == {32: 1.0}
  nearest = recalibrate.nearest_resolution
  assert [nearest(TRAINED, r) for r in (40, 28, 24, 20, 8)] == [32, 32, 32, 16, 16]
  paper = (224, 192, 160, 128, 96)
  unseen = (208, 176, 144, 112, 100, 256)
  assert [nearest(paper, r) for r in unseen] == [224, 192, 160, 128, 96, 224]
  with pytest.raises(ConfigError, match='affine must be one of'):
    sources(TRAINED, 24, 'mean')

  _, params, _ = added
  bns = bn_dicts(params)
  assert len(bns) == 20  # stem, 8 blocks x 2, 3 downsample
  for path, bn in bns.items():
    assert set(bn) == {f'{n}_{r}' for n in ('scale', 'bias') for r in (32, 24, 16)}, path
    for name in ('scale', 'bias'):
      np.testing.assert_allclose(bn[f'{name}_24'], 0.5 * bn[f'{name}_32'] + 0.5 * bn[f'{name}_16'],
                                 rtol=1e-6)
  # --affine=nearest: the nearest size's pair, copied.
  _, near, _ = rsnets_jax.add_resolution(*trained, ADDED, crops, num_images=NUM_IMAGES,
                                         affine='nearest')
  for bn in bn_dicts(near).values():
    np.testing.assert_array_equal(bn['scale_24'], bn['scale_32'])
    np.testing.assert_array_equal(bn['bias_24'], bn['bias_32'])


def test_training_resolutions_are_untouched(trained, added):
  net, params, stats = trained
  net2, params2, stats2 = added
  assert (net2.resolutions, net2.extra_resolutions, net2.all_resolutions) == ((32, 16), (24,),
                                                                                (32, 24, 16))
  assert net.extra_resolutions == () and net2.config()['extra_resolutions'] == (24,)
  without_added = jax.tree.map(lambda x: x, params2)  # new dicts, same leaves
  for bn in bn_dicts(without_added).values():
    del bn['scale_24'], bn['bias_24']
  assert jax.tree.structure(without_added) == jax.tree.structure(params)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, without_added, params)))
  assert params2['alpha'].shape == (2,)
  assert sorted(stats2) == [16, 24, 32] and int(stats2[24][RESOLUTION_KEY]) == 24
  for res in TRAINED:
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, stats2[res], stats[res])))
  # The added resolution costs its BatchNorm affine parameters and nothing else.
  count = lambda tree: sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))
  channels = sum(bn['scale_32'].shape[0] for bn in bn_dicts(params).values())
  assert count(params2) == count(params) + 2 * channels
  assert count(net2.init_shapes()[0]) == count(params2)


def test_apply_runs_at_the_added_resolution(trained, added, crops):
  net, params, stats = trained
  net2, params2, stats2 = added
  x = preprocess.to_float(preprocess.resize(jnp.asarray(crops[0], jnp.float32), ADDED))
  logits = jax.jit(net2.apply)(params2, stats2[ADDED], x)
  assert logits.shape == (BATCH, net.num_classes) and np.all(np.isfinite(logits))
  with pytest.raises(ValueError, match='add_resolution'):
    net.apply(params, stats[32], x)
  with pytest.raises(ValueError, match=r'\(32, 24, 16\), not 20'):
    net2.apply(params2, stats2[ADDED], x[:, :20, :20])
  with pytest.raises(ValueError, match='stats are for resolution 32'):
    net2.apply(params2, stats2[32], x)


def test_checkpoint_round_trip(added, tmp_path, monkeypatch):
  net2, params2, stats2 = added
  monkeypatch.chdir(tmp_path)  # a relative path, which Orbax alone refuses
  rsnets_jax.save_model('model', net2, params2, stats2)
  net, params, stats = rsnets_jax.load('model')
  assert net == net2 and net.extra_resolutions == (24,)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, (params, stats), (params2, stats2))))
  # Checkpoints written before resolutions could be added still load.
  meta = {'network': {k: v for k, v in net2.config().items() if k != 'extra_resolutions'}}
  assert checkpoints.network_from_meta(meta).all_resolutions == TRAINED


def test_reuse_batchnorm_runs_another_size_with_one_resolutions_batchnorm(trained, crops):
  """The paper's I-224 column: a network fed a size it was not trained at, with the BatchNorm of
  a training resolution as it is (affine and statistics), gives exactly the module's output with
  that BatchNorm on the other size."""
  net, params, stats = trained
  net2, params2, stats2 = rsnets_jax.reuse_batchnorm(net, params, stats, 20, source=16)
  assert net2.extra_resolutions == (20,)
  x = preprocess.to_float(preprocess.resize(jnp.asarray(crops[0], jnp.float32), 20))
  want = net.module.apply({'params': params, 'batch_stats': untagged(stats[16])}, x,
                          resolution=16)
  np.testing.assert_allclose(net2.apply(params2, stats2[20], x), want, rtol=1e-6, atol=1e-6)
  for bn in bn_dicts(params2).values():
    np.testing.assert_array_equal(bn['scale_20'], bn['scale_16'])
  assert int(stats2[20][RESOLUTION_KEY]) == 20
  # The default source is the nearest training resolution.
  net3, _, stats3 = rsnets_jax.reuse_batchnorm(net, params, stats, 30)
  np.testing.assert_array_equal(stats3[30]['bn1']['var'], stats[32]['bn1']['var'])


def test_results_table_marks_added_resolutions(added):
  net2, _, _ = added
  accuracies = {'count': 64, 'top1/ensemble': 60.0, 'top5/ensemble': 90.0}
  for res, top1 in ((32, 55.0), (24, 50.0), (16, 40.0)):
    accuracies.update({f'top1/{res}': top1, f'top5/{res}': top1 + 30})
  table = reports.results_table(net2, accuracies, net2.all_resolutions)
  assert [(r['resolution'], r['trained'], r['top1']) for r in table['rows']] == [
      (32, True, 55.0), (24, False, 50.0), (16, True, 40.0)]
  assert table['ensemble']['macs'] == net2.macs(32) + net2.macs(16)
  assert '| 24 (not trained) |' in reports.markdown(table)


def test_invalid_additions(trained, crops):
  net, params, stats = trained
  with pytest.raises(ValueError, match='already a training resolution'):
    rsnets_jax.add_resolution(net, params, stats, 32, crops)
  with pytest.raises(ValueError, match='positive'):
    rsnets_jax.add_resolution(net, params, stats, 0, crops)
  with pytest.raises(ValueError, match='no images'):
    rsnets_jax.add_resolution(net, params, stats, 20, [])
  with pytest.raises(ValueError, match='extra_resolutions'):
    rsnets_jax.create_model('resnet18', TRAINED, extra_resolutions=(32,))
  with pytest.raises(ValueError, match='extra_resolutions'):
    rsnets_jax.create_model('resnet18', TRAINED, extra_resolutions=(24, 24))
  with pytest.raises(ValueError, match='holds the checkpoint'):
    add_resolutions_job.check_destination('/runs/a', '/runs/a/')
  for dst in ('/runs/a/checkpoints', '/runs/a/checkpoints/2/x'):
    with pytest.raises(ValueError, match='in the training checkpoints'):
      add_resolutions_job.check_destination(dst, '/runs/a')


@pytest.fixture
def torch():
  torch = pytest.importorskip('torch')  # an optional dependency: pip install .[torch]
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # on a few busy cores torch's thread pool spins: 4 s instead of 0.05 s
  yield torch
  torch.set_num_threads(threads)


def test_matches_pytorch_recalibration(torch):
  """PyTorch's recipe (momentum=None, reset, train-mode forwards) on the reference network, with
  its new BatchNorm bn_2 given bn_0's affine parameters, gives our statistics in every layer."""
  import torch_reference  # pylint: disable=import-outside-toplevel


  # bn_0 and bn_1 are the trained 32 and 16; bn_2 becomes the added 24.
  model = torch_reference.randomize(torch_reference.create('resnet18', 4, 3), TRAINED + (ADDED,))

  def to_jax(state_dict, bn_as_16):
    """Our (32, 16) network from the PyTorch one, with its BatchNorm `bn_as_16` in 16's place."""
    sd = {k: v.detach().numpy() for k, v in state_dict.items()}
    sd = {k.replace(f'.{bn_as_16}.', '.bn_1.'): v for k, v in sd.items()
          if '.bn_1.' not in k and '.bn_2.' not in k or f'.{bn_as_16}.' in k}
    sd['alpha'] = sd['alpha'][:2]
    return pytorch.torch_to_jax(sd, rsnets_jax.create_model('resnet18', TRAINED, 4))

  net = rsnets_jax.create_model('resnet18', TRAINED, 4)
  params, stats = to_jax(model.state_dict(), 'bn_1')
  rng = np.random.default_rng(1)
  batches = [rng.integers(0, 256, (6, ADDED, ADDED, 3), np.uint8) for _ in range(3)]
  # Zero padding: PyTorch's network is fed the added size as it is.
  _, _, ours = rsnets_jax.add_resolution(net, params, stats, ADDED, batches, num_images=18,
                                         padding='zeros', affine='nearest')

  bns = [m for m in model.modules() if isinstance(m, torch_reference.PrivateBatchNorm)]
  with torch.no_grad():
    for bn in bns:
      bn.bn_2.weight.copy_(bn.bn_0.weight)
      bn.bn_2.bias.copy_(bn.bn_0.bias)
      bn.bn_2.reset_running_stats()
      bn.bn_2.momentum = None  # cumulative average
    model.train()
    for b in batches:
      model(torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255, 2)
  _, theirs = to_jax(model.state_dict(), 'bn_2')
  ours, theirs = untagged(ours[ADDED]), untagged(theirs[16])
  errors = jax.tree.map(lambda a, b: float(np.abs(a - b).max() / np.abs(b).max()), ours, theirs)
  print(f'largest relative difference to PyTorch: {max(jax.tree.leaves(errors)):.2g}')
  close = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-5), ours, theirs)
  assert len(jax.tree.leaves(close)) == 40 and all(jax.tree.leaves(close)), close


def run_command(*flags):
  cmd = [sys.executable, '-m', 'rsnets_jax.add_resolutions', '--config=configs/synthetic_demo.py',
         *config_flags(**OVERRIDES), *flags]
  proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, timeout=600,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return proc.returncode, proc.stdout


def test_command_end_to_end(trained, crops, tmp_path, monkeypatch):
  # A work directory as training leaves it, written by the loop's own checkpointer.
  net, params, stats = trained
  config = small_config()
  state = steps.create_train_state(net, optim.create_optimizer(config.optim, 16, 16),
                                   jax.random.key(0)).replace(step=jnp.int32(2), params=params,
                                                              stats=stats)
  monkeypatch.chdir(tmp_path)
  ckpts = checkpoints.TrainCheckpoints('run', async_save=False)  # relative, as users write it
  ckpts.save(state, {}, checkpoints.model_meta(net, {'config': config.to_dict()}), force=True)
  ckpts.close()
  workdir = tmp_path / 'run'
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*'))

  code, out = run_command(f'--workdir={os.path.relpath(workdir, ROOT)}', f'--resolutions={ADDED}',
                          f'--num_images={NUM_IMAGES}')
  assert code == 0, out[-3000:]
  assert 'added resolution 24: BatchNorm affine parameters 0.5 x 16 + 0.5 x 32' in out
  dst = workdir / 'with_resolutions'
  results = json.loads((dst / 'results.json').read_text())
  assert [(r['resolution'], r['trained']) for r in results['rows']] == [(32, True), (24, False),
                                                                       (16, True)]
  assert results['count'] == 64 and 'ensemble' in results
  assert all(0 <= r['top1'] <= 100 for r in results['rows'])
  assert results['added_resolutions'] == {
      '24': {'affine_from': {'16': 0.5, '32': 0.5}, 'padding': 'edge', 'statistics_from': 'eval'}}
  assert results['recalibration_images'] == NUM_IMAGES  # a seeded subset of training images
  assert '| 24 (not trained) |' in (dst / 'results.md').read_text()
  assert (dst / 'accuracy_vs_macs.png').stat().st_size > 10_000

  # The saved network is what the API computes on the evaluation views of the same images.
  views, used = data.recalibration_batches(config, TRAINED + (ADDED,), NUM_IMAGES)
  want = rsnets_jax.add_resolution(net, params, stats, ADDED, views, num_images=used)
  _same_network(rsnets_jax.load(dst), want)
  # The training checkpoints are only read.
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*')
                if not p.is_relative_to(dst)) == before
  _, params_after, stats_after = rsnets_jax.load(workdir)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, (params_after, stats_after),
                                          (params, stats))))

  code, out = run_command(f'--workdir={workdir}', '--resolutions=16')
  assert code == 1 and 'Traceback' not in out
  assert out.strip().splitlines()[-1].startswith('error: the network already runs at [16]'), out

  # The earlier procedure, for the record: zero padding, statistics from training crops.
  code, out = run_command(f'--workdir={workdir}', f'--resolutions={ADDED}', '--padding=zeros',
                          '--views=train', f'--num_images={NUM_IMAGES}',
                          f'--dst={tmp_path / "old"}')
  assert code == 0, out[-3000:]
  assert 'added resolution 24: BatchNorm affine parameters 0.5 x 16 + 0.5 x 32' in out
  assert json.loads((tmp_path / 'old' / 'results.json').read_text())['recalibration_images'] == 48
  want = rsnets_jax.add_resolution(net, params, stats, ADDED, crops, NUM_IMAGES, padding='zeros')
  _same_network(rsnets_jax.load(tmp_path / 'old'), want)


def _same_network(got, want):
  assert got[0] == want[0]
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, got[1], want[1])))
  close = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-5, atol=1e-6), got[2], want[2])
  assert all(jax.tree.leaves(close)), close


def test_recalibrated_bn_check_re_estimates_the_trained_resolutions(trained, tmp_path):
  """experiments/imagenette/recalibrated_bn.py: a network whose running statistics are the ones
  re-estimated from the same training crops gives the same top-1 in both columns."""
  spec = importlib.util.spec_from_file_location(
      'recalibrated_bn', os.path.join(ROOT, 'experiments', 'imagenette', 'recalibrated_bn.py'))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  net, params, _ = trained
  config = small_config()
  batches, used = data.recalibration_batches(config, net.resolutions, NUM_IMAGES, views='train')
  assert used == 48 and len(batches) == 3 and batches[0].shape == (BATCH, 32, 32, 3)
  mean, std = preprocess.input_normalisation(config.data)
  stats = {res: recalibrate.recalibrated_stats(net, params, res, batches, used, mean, std)
           for res in net.resolutions}
  checkpoints.save_model(tmp_path / 'net', net, params, stats, {'config': config.to_dict()})
  table = script.compare(config, tmp_path / 'net', NUM_IMAGES)
  rows = [line.split(' | ') for line in table.splitlines() if line[2:4].isdigit()]
  assert [int(r[0][2:]) for r in rows] == list(TRAINED)
  assert all(r[1] == r[2].rstrip(' |') for r in rows), table


def test_edge_padding_gives_an_added_size_the_even_inputs_training_gave(trained, crops):
  """Trained at 32 and 16, a strided convolution's input is even at both sizes for the stem
  (32, 16) and the first blocks of layer2 (8, 4) and layer3 (4, 2), not layer4 (2, 1). At 24 the
  layer3 one gets 3: with added_padding='edge' it sees 4, the last row and column repeated."""
  net, params, stats = trained
  assert rsnet._evened_convolutions(net) == (
      ('conv1',), ('layer2_0', 'conv1'), ('layer2_0', 'downsample_conv'),
      ('layer3_0', 'conv1'), ('layer3_0', 'downsample_conv'))
  x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
  np.testing.assert_array_equal(rsnet.even_by_edge(x),
                                np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode='edge'))
  assert rsnet.even_by_edge(x[:, :2, :4]).shape == (2, 2, 4, 4)

  edge_net, edge_params, edge_stats = rsnets_jax.add_resolution(net, params, stats, ADDED, crops,
                                                                NUM_IMAGES)
  zeros_net, _, zeros_stats = rsnets_jax.add_resolution(net, params, stats, ADDED, crops,
                                                        NUM_IMAGES, padding='zeros')
  assert (edge_net.added_padding, zeros_net.added_padding) == ('edge', 'zeros')
  seen = {}

  def record(next_fun, args, kwargs, context):  # outside the padding: it sees the input as given
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and tuple(context.module.path) == ('layer3_0', 'conv1'):
      seen['input'], seen['output'] = np.asarray(args[0]), np.asarray(out)
    return out

  image = preprocess.to_float(preprocess.resize(jnp.asarray(crops[0], jnp.float32), ADDED))
  kernel = np.asarray(params['layer3_0']['conv1']['kernel'], np.float32)
  logits = {}
  for name, (n, s) in {'edge': (edge_net, edge_stats), 'zeros': (zeros_net, zeros_stats)}.items():
    with flax.linen.intercept_methods(record):
      logits[name] = n.apply(edge_params, s[ADDED], image)
    x = seen['input']
    assert x.shape[1:3] == (3, 3)
    if name == 'edge':  # by hand: the last row and column repeated, then the usual convolution
      x = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode='edge')
    want = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        precision=jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(seen['output'], want, rtol=1e-4, atol=1e-4)
  assert not np.allclose(logits['edge'], logits['zeros'], atol=1e-3)
  # Trained sizes run as before; the padded convolutions' outputs keep their size, so do the MACs.
  for res in TRAINED:
    y = preprocess.to_float(preprocess.resize(jnp.asarray(crops[0], jnp.float32), res))
    np.testing.assert_array_equal(edge_net.apply(edge_params, edge_stats[res], y),
                                  net.apply(params, stats[res], y))
  assert edge_net.macs(ADDED) == zeros_net.macs(ADDED)
  # A network's added sizes share one padding.
  with pytest.raises(ValueError,
                     match=r"use padding 'edge' \(--padding=edge\); add 20 the same way"):
    rsnets_jax.add_resolution(edge_net, edge_params, edge_stats, 20, crops, NUM_IMAGES,
                              padding='zeros')
