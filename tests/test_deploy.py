"""Deployment: folded BatchNorm computes what BatchNorm computes, the exported JAX artifact and ONNX
model give net.apply's logits at every resolution (trained and added), the profile covers every
resolution, the budget picks the right resolution, and predict classifies what it can read."""
import importlib.util
import io
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import rsnets_jax
from rsnets_jax import export as export_command, predict as predict_command
from rsnets_jax.data import folder, preprocess, transforms
from rsnets_jax.deploy import export, fold, formats, manifest as manifests, predict, profile
from rsnets_jax.train import recalibrate, reports

CLASSES = 10
# Relative logit error (max |difference| / max |logit|) the issue sets for each file.
JAX_TOLERANCE, ONNX_TOLERANCE = 1e-5, 1e-4
# int8 against float32 logits: bounds on the relative error (max |difference| / max |logit|) and on
# the error's norm over the norm of the float32 logits' spread around their mean over the images.
# Random networks amplify the quantization error (measured on the test's images of noise: ResNet-18
# 0.13-0.21 and 0.18-0.24, MobileNetV2 0.34-0.56 and 0.54-0.71); what int8 keeps of a trained
# network is measured on real photos in experiments/BENCHMARKS.md.
INT8_TOLERANCE = {'resnet18': (0.3, 0.35), 'mobilenet_v2': (0.75, 0.9)}
# arch: (width, training resolutions, the resolution added after training, input mean/std).
# A random MobileNetV2 amplifies float32 rounding: reordering its arithmetic, as folding does,
# moves the logits by 4e-6 to 6e-6 at 48/40/32 px (measured), and by 1e-5 to 3e-5 at 32/24/16,
# where its last blocks see 1x1 maps whose BatchNorm multiplies the rounding by up to 460.
NETWORKS = {
    'resnet18': (0.125, (32, 24), 16, None),
    'mobilenet_v2': (0.25, (48, 40), 32, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
}
NAMES = [f'kind {i}' for i in range(CLASSES)]


def _randomize_affine(params, rng):
  """Every resolution's BatchNorm scale and bias drawn apart, as training leaves them. Positive
  biases keep most ReLU6 channels of a random MobileNetV2 alive (with biases around zero, more
  channels are all but constant, and the rounding is amplified as at 1x1 maps, see NETWORKS)."""
  def draw(path, value):
    name = path[-1].key
    if name.startswith('scale_'):
      return rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    if name.startswith('bias_'):
      return rng.uniform(0.0, 0.5, value.shape).astype(np.float32)
    return value
  return jax.tree_util.tree_map_with_path(draw, params)


def _relative_error(got, want):
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


@pytest.fixture(scope='module', params=sorted(NETWORKS))
def network(request, tmp_path_factory):
  """(net, params, stats, (mean, std), workdir): a small RS-Net with private BatchNorm that
  differs per resolution, statistics estimated from images, and a resolution added
  (recalibrated) after 'training'; saved with a results.json as a training run leaves it."""
  arch = request.param
  width, trained, added, norm = NETWORKS[arch]
  mean, std = norm or (None, None)
  net = rsnets_jax.create_model(arch, trained, num_classes=CLASSES, width=width)
  params, _ = net.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  params = _randomize_affine(params, rng)
  size = trained[0]
  images = [rng.integers(0, 256, (8, size, size, 3), np.uint8) for _ in range(2)]
  stats = {r: recalibrate.recalibrated_stats(net, params, r, images, 16, mean, std)
           for r in trained}
  net, params, stats = rsnets_jax.add_resolution(net, params, stats, added, images, 16, mean, std)
  workdir = tmp_path_factory.mktemp(arch) / 'run'
  data_config = {'dataset': 'synthetic', 'input_mean': mean, 'input_std': std}
  rsnets_jax.save_model(workdir, net, params, stats, {'config': {'data': data_config}})
  # The table a run's evaluation writes: these accuracies are the fixture's, copied by export.
  accuracies = {'count': 100}
  for res, top1, top5 in zip(net.all_resolutions, (80.0, 75.0, 60.0), (99.0, 98.0, 95.0)):
    accuracies.update({f'top1/{res}': top1, f'top5/{res}': top5})
  table = reports.results_table(net, accuracies, net.all_resolutions)
  with open(workdir / 'results.json', 'w') as f:
    json.dump(table, f)
  return net, params, stats, (mean, std), workdir


@pytest.fixture(scope='module')
def exported(network, tmp_path_factory):
  net, *_, workdir = network
  names = tmp_path_factory.mktemp('names') / 'names.txt'
  names.write_text('\n'.join(NAMES) + '\n')
  dst = tmp_path_factory.mktemp(net.arch) / 'export'
  manifest = export.export_model(workdir, dst, names_file=str(names), log=lambda _: None)
  return dst, manifest


def _reference(network, res, images):
  net, params, stats, (mean, std), _ = network
  want = np.asarray(jax.jit(net.apply)(params, stats[res], preprocess.to_float(images, mean, std)))
  # BatchNorm-dependent, non-degenerate logits: a BatchNorm mix-up would show.
  assert np.std(want) > 1e-2, np.std(want)
  return want


# -- folding ---------------------------------------------------------------------------------------

def test_folding_is_exact_but_for_one_float32_rounding():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 5))
  kernel = rng.normal(size=(1, 1, 5, 7))
  scale, bias = rng.uniform(0.5, 2, 7), rng.normal(size=7)
  mean, var = rng.normal(size=7), rng.uniform(0.1, 3, 7)
  z = x @ kernel[0, 0]
  want = (z - mean) / np.sqrt(var + 1e-5) * scale + bias
  folded_kernel, folded_bias = fold.fold_batchnorm(kernel, scale, bias, mean, var)
  got = x @ folded_kernel[0, 0].astype(np.float64) + folded_bias
  # The only error left is the one rounding of the folded weights to float32.
  assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 4 * np.finfo(np.float32).eps


def test_every_batchnorm_folds_into_the_convolution_before_it(network):
  net, params, stats, *_ = network
  pairs = fold.conv_bn_pairs(net)
  assert len(pairs) == {'resnet18': 20, 'mobilenet_v2': 52}[net.arch]
  assert ('layer2_0', 'downsample_bn') in pairs or net.arch != 'resnet18'
  for bn_path, conv_path in pairs.items():
    assert bn_path[:-1] == conv_path[:-1]  # the same block
  added = net.extra_resolutions[0]
  folded = fold.fold(net, params, stats[added], added)
  leaves = jax.tree_util.tree_leaves_with_path(folded)
  assert not [p for p, _ in leaves if p[-1].key.startswith(('scale_', 'bias_'))]
  assert sum(p[-1].key == 'bias' for p, _ in leaves) == len(pairs) + 1  # and the classifier's


def test_tensorflow_same_padding_folds_and_exports():
  """The quantized reference's ResNet at full precision: TF 'SAME' (asymmetric) padding in its
  convolutions and max pooling reaches the folded network and the ONNX graph."""
  ort = pytest.importorskip('onnxruntime')
  net = rsnets_jax.create_model('lq_resnet18', (24,), num_classes=CLASSES, width=0.125)
  params, stats = net.init(jax.random.key(0))
  params = _randomize_affine(params, np.random.default_rng(3))
  images = np.random.default_rng(4).integers(0, 256, (2, 24, 24, 3), np.uint8)
  want = np.asarray(jax.jit(net.apply)(params, stats[24], preprocess.to_float(images)))
  folded = fold.fold(net, params, stats[24], 24)
  session = ort.InferenceSession(formats.export_onnx(net, folded, 24),
                                 providers=['CPUExecutionProvider'])
  assert _relative_error(session.run(None, {'images': images})[0], want) < ONNX_TOLERANCE


@pytest.mark.parametrize('arch, bits, why', [
    ('lq_preact_resnet18', 32, 'BatchNorm layer1_1/bn_preact does not directly follow a conv'),
    ('lq_resnet18', 2, 'only full-precision networks can be folded'),
])
def test_networks_that_cannot_be_folded_are_refused(arch, bits, why):
  net = rsnets_jax.create_model(arch, (24,), num_classes=CLASSES, width=0.125, weight_bits=bits)
  with pytest.raises(rsnets_jax.UserError, match=why):
    fold.conv_bn_pairs(net)


def test_class_names_where_the_checkpoint_says_where_they_are(tmp_path):
  names, source = export.class_names({'converted_from': 'model_best.pth.tar'}, 1000)
  assert len(names) == 1000 and names[0] == 'n01440764' and 'tensorflow-datasets' in source
  for name in ('tench', 'church'):  # the classes of rsnets_jax.data.FolderSource
    (tmp_path / 'train' / name).mkdir(parents=True)
    (tmp_path / 'train' / name / 'a.jpg').write_bytes(b'')
  folder = {'config': {'data': {'dataset': 'folder', 'data_dir': str(tmp_path)}}}
  assert export.class_names(folder, 2)[0] == ['church', 'tench']
  assert export.class_names(folder, 3) == (None, f'the class folders in {tmp_path} lists 2 '
                                                 f'classes, the network has 3')
  gone = {'config': {'data': {'dataset': 'folder', 'data_dir': str(tmp_path / 'moved')}}}
  assert export.class_names(gone, 2)[0] is None
  assert export.class_names({'config': {'data': {'dataset': 'synthetic'}}}, 16)[0] is None


# -- the exported files ---------------------------------------------------------------------------

def test_manifest(network, exported):
  net, params, _, (mean, std), _ = network
  dst, manifest = exported
  assert manifest == manifests.read_manifest(dst)
  rows = {r['resolution']: r for r in manifest['resolutions']}
  assert list(rows) == list(net.all_resolutions) and len(rows) == 3
  assert [rows[r]['trained'] for r in rows] == [True, True, False]
  assert [(rows[r]['top1'], rows[r]['top5']) for r in rows] == [(80.0, 99.0), (75.0, 98.0),
                                                               (60.0, 95.0)]
  macs = [rows[r]['macs'] for r in rows]
  assert macs == [net.macs(r) for r in rows] and macs == sorted(macs, reverse=True)
  # Folding removes every BatchNorm's four vectors and adds one bias per convolution.
  bn = sum(np.size(v) for p, v in jax.tree_util.tree_leaves_with_path(params)
           if p[-1].key == f'scale_{net.resolutions[0]}')
  shared = sum(np.size(v) for p, v in jax.tree_util.tree_leaves_with_path(params)
               if not p[-1].key.startswith(('scale_', 'bias_')) and p[0].key != 'alpha')
  assert all(rows[r]['params'] == shared + bn for r in rows)
  assert manifest['class_names'] == NAMES
  assert manifest['preprocessing']['mean'] == (None if mean is None else list(mean))
  for r in rows.values():
    for entry in r['files'].values():
      assert manifests.sha256(dst / entry['file']) == entry['sha256']


def test_jax_artifact_and_onnx_give_net_apply_logits_at_every_resolution(network, exported,
                                                                        tmp_path):
  ort = pytest.importorskip('onnxruntime')
  dst, manifest = exported
  # Batch 3: the files were traced with other batch sizes, so this checks the symbolic one.
  images = {str(r['resolution']): np.random.default_rng(r['resolution']).integers(
      0, 256, (3, r['resolution'], r['resolution'], 3), np.uint8) for r in manifest['resolutions']}
  np.savez(tmp_path / 'images.npz', **images)
  # The artifacts run in a process where rsnets_jax cannot be imported: they need only JAX.
  script = f"""
import sys; sys.modules['rsnets_jax'] = None
import jax, numpy as np
images = np.load({str(tmp_path / 'images.npz')!r})
logits = {{}}
for res in images.files:
  with open({str(dst)!r} + f'/{{res}}px.jaxexport', 'rb') as f:
    logits[res] = np.asarray(jax.export.deserialize(bytearray(f.read())).call(images[res]))
np.savez({str(tmp_path / 'logits.npz')!r}, **logits)
"""
  subprocess.run([sys.executable, '-c', script], check=True, capture_output=True)
  jax_logits = np.load(tmp_path / 'logits.npz')
  errors = {}
  for r in manifest['resolutions']:
    res, x = r['resolution'], images[str(r['resolution'])]
    want = _reference(network, res, x)
    session = ort.InferenceSession(str(dst / r['files']['onnx']['file']),
                                   providers=['CPUExecutionProvider'])
    errors[res] = (_relative_error(jax_logits[str(res)], want),
                   _relative_error(session.run(None, {'images': x})[0], want))
  print(f'{manifest["arch"]}: relative error (jax, onnx) per resolution {errors}')
  assert all(e[0] < JAX_TOLERANCE and e[1] < ONNX_TOLERANCE for e in errors.values()), errors


# -- profile and the budget ------------------------------------------------------------------------

def test_profile_measures_every_resolution_and_writes_the_table(network, exported):
  net = network[0]
  dst, _ = exported
  # Throughput at batch 1 too: one compilation per resolution keeps the test short.
  manifest = profile.profile_model(dst, batch=1, iters=3, batch_iters=1, warmup=1,
                                   min_seconds=0, log=lambda _: None)
  assert manifest == manifests.read_manifest(dst)
  runtimes = manifest['profile']['runtimes']
  has_ort = importlib.util.find_spec('onnxruntime') is not None
  assert runtimes == ['jax'] + ['onnxruntime'] * has_ort
  for r in manifest['resolutions']:
    for runtime in runtimes:
      m = r['latency'][runtime]
      assert 0 < m['p50_ms'] <= m['p90_ms'] and m['throughput_img_s'] > 0 and m['calls'] == 3
  table = (dst / profile.TABLE).read_text()
  body = [line for line in table.splitlines() if line.startswith('| ') and line[2].isdigit()]
  big, middle, added = net.all_resolutions
  assert [line.split(' | ')[0] for line in body] == [f'| {big}', f'| {middle}',
                                                    f'| {added} (not trained)']
  assert all(line.count('|') == 4 + 2 * len(runtimes) for line in body)
  assert manifest['profile']['machine']['cpu'] in table
  cache = manifest['profile']['machine']['last_level_cache']
  assert cache is None or cache[:-1].isdigit()  # as Linux writes it: '32768K'
  assert (dst / profile.FIGURE).stat().st_size > 0
  # A budget that everything fits: the most accurate.
  assert manifests.choose_resolution(manifest, latency_ms=1e9) == big


def _manifest(rows):
  return {'resolutions': [
      {'resolution': res, 'macs': macs, 'top1': top1,
       'latency': {'jax': {'p50_ms': jax_ms - 0.1, 'p90_ms': jax_ms},
                   'onnxruntime': {'p50_ms': ort_ms - 0.1, 'p90_ms': ort_ms}}}
      for res, macs, top1, jax_ms, ort_ms in rows]}


HAND_MADE = _manifest([  # resolution, MACs, top-1, p90 on jax, p90 on onnxruntime
    (224, 1800e6, 73.0, 9.0, 6.0),
    (192, 1320e6, 73.0, 7.0, 5.0),   # as accurate as 224 and cheaper: the tie goes to 192
    (160, 920e6, 71.0, 5.0, 3.5),
    (128, 590e6, 67.0, 3.0, 2.5),
    (96, 330e6, 62.0, 2.0, 1.5),
])


@pytest.mark.parametrize('budget, runtime, want', [
    ({}, 'jax', 192),                                 # no budget: the most accurate, tie to cheaper
    ({'latency_ms': 100}, 'jax', 192),
    ({'latency_ms': 6.9}, 'jax', 160),
    ({'latency_ms': 5.0}, 'jax', 160),                # the budget itself fits
    ({'latency_ms': 4.99}, 'jax', 128),
    ({'latency_ms': 5.0}, 'onnxruntime', 192),        # each runtime by its own measurements
    ({'macs': 600e6}, 'jax', 128),
    ({'latency_ms': 100, 'macs': 1e9}, 'jax', 160),   # both limits hold
    ({'latency_ms': 2.5, 'macs': 1e9}, 'jax', 96),
])
def test_choose_resolution(budget, runtime, want):
  assert manifests.choose_resolution(HAND_MADE, runtime=runtime, **budget) == want


def test_choose_resolution_without_accuracies_takes_the_largest_that_fits():
  manifest = json.loads(json.dumps(HAND_MADE))
  manifest['resolutions'][1]['top1'] = None
  assert manifests.choose_resolution(manifest, latency_ms=7.5) == 192
  assert manifests.choose_resolution(manifest, latency_ms=6.0) == 160  # the rest have top-1


def test_choose_resolution_errors():
  with pytest.raises(rsnets_jax.UserError, match=r'no resolution fits the budget of 1\.5 ms.*96 px '
                                                 r'2\.00 ms'):
    manifests.choose_resolution(HAND_MADE, latency_ms=1.5)
  with pytest.raises(rsnets_jax.UserError, match=r'no resolution fits the budget of 100M MACs'):
    manifests.choose_resolution(HAND_MADE, macs=100e6)
  unprofiled = {'resolutions': [{k: v for k, v in r.items() if k != 'latency'}
                                for r in HAND_MADE['resolutions']]}
  assert manifests.choose_resolution(unprofiled, macs=1e9) == 160
  with pytest.raises(rsnets_jax.UserError, match='rsnets_jax.profile'):
    manifests.choose_resolution(unprofiled, latency_ms=5)


# -- predict ---------------------------------------------------------------------------------------

def _jpeg(path, size, seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
  Image.fromarray(pixels).save(path, quality=90)


def test_predict_prints_every_readable_image_and_one_line_per_unreadable(network, exported,
                                                                       tmp_path, capsys):
  net, params, stats, (mean, std), _ = network
  dst, _ = exported
  good = [tmp_path / 'wide.jpg', tmp_path / 'tall.jpg']
  _jpeg(good[0], (40, 56), 0)
  _jpeg(good[1], (70, 30), 1)
  truncated = tmp_path / 'truncated.jpg'
  buffer = io.BytesIO()
  Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(buffer, format='JPEG')
  truncated.write_bytes(buffer.getvalue()[:200])
  text = tmp_path / 'notes.jpg'
  text.write_text('not an image')
  paths = [good[0], truncated, good[1], text, tmp_path / 'missing.jpg']

  res = net.extra_resolutions[0]  # the added one
  assert predict_command.main(['--model', str(dst), f'--resolution={res}', *map(str, paths)]) == 1
  out, err = capsys.readouterr()
  lines = out.splitlines()
  assert [line.split(':')[0] for line in lines] == [str(p) for p in good]
  for path, line in zip(good, lines):
    with Image.open(path) as image:
      view = transforms.eval_view(image, res)
    x = preprocess.to_float(view[None], mean, std)
    probs = predict.softmax(np.asarray(jax.jit(net.apply)(params, stats[res], x), np.float64)[0])
    order = np.argsort(-probs)[:5]
    assert f' {res} px, ' in line and ' ms ' in line
    want = ', '.join(f'{NAMES[i]} {100 * probs[i]:.1f}%' for i in order)
    assert line.endswith(want), (line, want)
  errors = err.splitlines()
  assert errors[0] == f'resolution {res} px (as asked)'
  assert [e.split(': ')[1] for e in errors[1:4]] == [str(truncated), str(text),
                                                     str(tmp_path / 'missing.jpg')]
  assert all(e.startswith('error: ') and 'cannot read the image' in e for e in errors[1:4])
  assert errors[4] == 'python -m rsnets_jax.predict: error: 3 of 5 images could not be read'


def test_predict_by_budget_and_its_errors(network, exported, tmp_path, capsys):
  big = network[0].resolutions[0]
  dst, _ = exported
  image = tmp_path / 'a.jpg'
  _jpeg(image, (32, 32), 2)
  manifest = manifests.read_manifest(dst)
  if 'profile' not in manifest:  # the profile test, which measures the latencies, was not run
    profile.profile_model(dst, batch=1, iters=3, batch_iters=1, warmup=1, min_seconds=0,
                          log=lambda _: None)
    manifest = manifests.read_manifest(dst)
  # The largest resolution fits its own measured latency, and it is the most accurate.
  budget = manifests.measured_latency(manifests.row(manifest, big), 'jax')
  assert predict_command.main(['--model', str(dst), f'--latency-ms={budget}', str(image)]) == 0
  out, err = capsys.readouterr()
  assert err.startswith(f'resolution {big} px (the most accurate within the budget, ')
  assert out.startswith(f'{image}: {big} px, ')

  assert predict_command.main(['--model', str(dst), '--latency-ms=1e-6', str(image)]) == 1
  assert predict_command.main(['--model', str(dst), '--resolution=20', str(image)]) == 1  # not exported
  assert predict_command.main(['--model', str(tmp_path), str(image)]) == 1
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 3 and all(e.startswith('python -m rsnets_jax.predict: error: ') for e in err)
  assert 'no resolution fits the budget of 1e-06 ms' in err[0]
  assert 'no resolution 20' in err[1]
  assert 'no manifest.json' in err[2]


# -- int8 ------------------------------------------------------------------------------------------

def _class_folders(root, size, rng, train=3, val=2):
  """A data set of JPEGs in root/{train,val}/<class>/, one class per label of the network."""
  for split, count in (('train', train), ('val', val)):
    for label in range(CLASSES):
      folder = root / split / f'kind{label}'
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (size + 3 * i, size, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.jpg', quality=95)
  return root


@pytest.fixture(scope='module')
def int8_exported(network, tmp_path_factory):
  """The network, trained (as far as export can tell) on a folder data set, exported as int8."""
  pytest.importorskip('onnxruntime')
  net, params, stats, (mean, std), _ = network
  root = tmp_path_factory.mktemp('int8')
  folders = _class_folders(root / 'data', net.resolutions[0], np.random.default_rng(5))
  workdir = root / 'run'
  data_config = {'dataset': 'folder', 'data_dir': str(folders), 'input_mean': mean,
                 'input_std': std, 'eval_view': 'nearest_from_largest', 'num_workers': 8}
  rsnets_jax.save_model(workdir, net, params, stats, {'config': {'data': data_config}})
  dst = root / 'export'
  manifest = export.export_model(workdir, dst, formats=('onnx', 'onnx_int8'),
                                 calibration_images=12, log=lambda _: None)
  return dst, manifest, folders


def test_int8_models_are_calibrated_and_measured_on_the_data_set(network, int8_exported):
  """Each resolution's int8 model: its weights int8, its accuracy and agreement in the manifest
  those of the validation images' eval views (recomputed here from the files), its logits near
  float32's."""
  import onnx  # pylint: disable=import-outside-toplevel
  net, params, stats, (mean, std), _ = network
  dst, manifest, folders = int8_exported
  about = manifest['int8']
  assert (about['calibration_images'], about['eval_images'], about['labelled']) == (12, 20, True)
  assert about['data'] == 'data'
  val = folder.FolderSource(str(folders), 'val')
  for r in manifest['resolutions']:
    res = r['resolution']
    assert set(r['files']) == {'onnx', 'onnx_int8'}
    model = onnx.load(str(dst / r['files']['onnx_int8']['file']))
    ops = {n.op_type for n in model.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear', 'Conv'} <= ops, ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= len(fold.conv_bn_pairs(net))  # every convolution's kernel
    # The figures, recomputed: the views predict makes, the int8 file and net.apply.
    views, labels = [], []
    for i in range(len(val)):
      with transforms.open_image(val[i]['image']) as image:
        views.append(transforms.eval_view(image, res))
      labels.append(val[i]['label'])
    views, labels = np.stack(views), np.asarray(labels)
    int8_logits = manifests.load_runtime(dst, manifest, res, 'onnxruntime_int8')(views)
    float_logits = np.asarray(jax.jit(net.apply)(params, stats[res],
                                                 preprocess.to_float(views, mean, std)))
    got = r['int8']
    assert got['images'] == len(views) == 20
    assert got['top1'] == pytest.approx(100 * np.mean(int8_logits.argmax(-1) == labels))
    assert got['float32_top1'] == pytest.approx(100 * np.mean(float_logits.argmax(-1) == labels))
    top5 = np.argsort(-int8_logits, axis=-1, kind='stable')[:, :5]  # ties: the lower class
    assert got['top5'] == pytest.approx(100 * np.mean(np.any(top5 == labels[:, None], axis=1)))
    assert got['top1_agreement'] == pytest.approx(
        100 * np.mean(int8_logits.argmax(-1) == float_logits.argmax(-1)))
    # The int8 logits follow what tells one image from another: their error is a small part of
    # the float32 logits' spread around their mean over images.
    error = _relative_error(int8_logits, float_logits)
    assert got['logits_relative_rms_error'] == pytest.approx(
        np.linalg.norm(int8_logits - float_logits) / np.linalg.norm(float_logits), rel=1e-4)
    spread = float(np.linalg.norm(int8_logits - float_logits) /
                   np.linalg.norm(float_logits - float_logits.mean(0)))
    print(f'{net.arch} {res}px: int8 against float32 logits, relative error {error:.3f}, '
          f'error / spread {spread:.3f}')
    bound = INT8_TOLERANCE[net.arch]
    assert error < bound[0] and spread < bound[1], (error, spread)


def test_int8_without_labels_of_the_network_measures_agreement_only(network, tmp_path):
  """A model that records no data (a converted one) is calibrated on --data-dir; with classes that
  are not the network's, the manifest holds only the agreement with float32."""
  pytest.importorskip('onnxruntime')
  net, params, stats, *_ = network
  workdir = tmp_path / 'converted'
  rsnets_jax.save_model(workdir, net, params, stats, {'converted_from': 'x.pth.tar'})
  folders = tmp_path / 'other'
  for split in ('train', 'val'):
    for name in ('a', 'b'):
      (folders / split / name).mkdir(parents=True)
      _jpeg(folders / split / name / '0.jpg', (40, 40), ord(name))
  res = net.resolutions[-1]
  manifest = export.export_model(workdir, tmp_path / 'export', resolutions=[res],
                                 formats=('onnx_int8',), data_dir=str(folders),
                                 log=lambda _: None)
  assert manifest['int8']['labelled'] is False and manifest['int8']['calibration_images'] == 2
  row, = manifest['resolutions']
  assert set(row['int8']) == {'images', 'top1_agreement', 'logits_relative_rms_error'}
  assert row['int8']['images'] == 2
  assert formats.by_runtime('onnxruntime_int8').top1(row) is None and list(row['files']) == ['onnx_int8']


def test_int8_profile_budget_and_predict(network, int8_exported, tmp_path, capsys):
  dst, _, _ = int8_exported
  manifest = profile.profile_model(dst, batch=1, iters=3, batch_iters=1, warmup=1,
                                   min_seconds=0, log=lambda _: None)
  assert manifest['profile']['runtimes'] == ['onnxruntime', 'onnxruntime_int8']
  table = (dst / profile.TABLE).read_text()
  assert '| int8 top-1 (%) |' in table
  rows = [line.split(' | ') for line in table.splitlines() if line.startswith('| ') and
          line[2].isdigit()]
  for cells, r in zip(rows, manifest['resolutions']):
    assert cells[3] == f"{r['int8']['top1']:.2f}"
  # The budget reads the int8 model's own accuracy and latency.
  best = max(manifest['resolutions'], key=lambda r: (r['int8']['top1'],
                                                     -r['latency']['onnxruntime_int8']['p90_ms'],
                                                     -r['macs']))
  assert manifests.choose_resolution(manifest, latency_ms=1e9,
                                  runtime='onnxruntime_int8') == best['resolution']
  image = tmp_path / 'a.jpg'
  _jpeg(image, (50, 40), 3)
  assert predict_command.main(['--model', str(dst), '--runtime=onnxruntime_int8', '--latency-ms=1e9',
                       str(image)]) == 0
  out, err = capsys.readouterr()
  assert err.startswith(f"resolution {best['resolution']} px (the most accurate within the "
                        f"budget, ") and 'on onnxruntime_int8' in err
  assert out.startswith(f"{image}: {best['resolution']} px, ")


def test_choose_resolution_on_int8_uses_its_own_accuracy():
  manifest = json.loads(json.dumps(HAND_MADE))
  for r, int8_top1 in zip(manifest['resolutions'], (70.0, 72.5, 70.5, 66.0, 61.0)):
    r['int8'] = {'top1': int8_top1}
    r['latency']['onnxruntime_int8'] = {'p50_ms': 1.0, 'p90_ms': r['latency']['jax']['p90_ms'] / 3}
  assert manifests.choose_resolution(manifest, runtime='onnxruntime_int8') == 192
  assert manifests.choose_resolution(manifest, latency_ms=2.0, runtime='onnxruntime_int8') == 160
  assert manifests.choose_resolution(manifest, latency_ms=2.0, runtime='jax') == 96


def test_int8_export_errors_are_one_line_and_touch_nothing(network, tmp_path, capsys):
  pytest.importorskip('onnxruntime')
  net, params, stats, *_ = network
  converted = tmp_path / 'converted'
  rsnets_jax.save_model(converted, net, params, stats, {'converted_from': 'x.pth.tar'})
  *_, synthetic_run = network
  calls = [['--workdir', str(converted)],
           ['--workdir', str(synthetic_run), '--data-dir', str(tmp_path)],
           ['--workdir', str(synthetic_run), '--calibration-images=0'],
           ['--workdir', str(converted), '--data-dir', str(tmp_path / 'none')]]
  for i, call in enumerate(calls):
    assert export_command.main([*call, '--dst', str(tmp_path / f'out{i}'), '--formats=onnx_int8']) == 1
    assert not (tmp_path / f'out{i}').exists()
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 4 and all(e.startswith('python -m rsnets_jax.export: error: ') for e in err)
  assert 'records no training data: pass --data-dir' in err[0]
  assert 'trained on generated images' in err[1]
  assert '--calibration-images must be at least 1' in err[2]
  assert str(tmp_path / 'none') in err[3]


# -- the export command ----------------------------------------------------------------------------

def test_export_command_errors_are_one_line(network, tmp_path, capsys):
  *_, workdir = network
  assert export_command.main(['--workdir', str(workdir), '--dst', str(tmp_path / 'x'),
                      '--resolutions=20']) == 1
  (tmp_path / 'busy').mkdir()
  (tmp_path / 'busy' / 'keep.txt').write_text('mine')
  assert export_command.main(['--workdir', str(workdir), '--dst', str(tmp_path / 'busy')]) == 1
  assert export_command.main(['--workdir', str(tmp_path / 'nothing'), '--dst', str(tmp_path / 'y')]) == 1
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 3 and all(e.startswith('python -m rsnets_jax.export: error: ') for e in err)
  assert 'no BatchNorm for [20]' in err[0]
  assert 'not empty and holds no export' in err[1]
  assert (tmp_path / 'busy' / 'keep.txt').read_text() == 'mine'
  assert 'no checkpoint' in err[2]
