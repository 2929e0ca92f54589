"""One file for every resolution (deploy/switchable.py): the switchable ONNX model and JAX archive
give net.apply's logits at every resolution, trained and added, store the shared weights once,
refuse an input of another size, and run under profile, the budget chooser and predict."""
import re
import subprocess
import sys

import numpy as np
import pytest

from rsnets_jax import export as export_command, predict as predict_command
from rsnets_jax.deploy import export, formats, manifest as manifests, profile, switchable
from rsnets_jax.errors import ConfigError
from test_deploy import (JAX_TOLERANCE, ONNX_TOLERANCE, _jpeg, _reference, _relative_error,
                         network)  # pylint: disable=unused-import  # the fixture

pytest.importorskip('onnx')


@pytest.fixture(scope='module')
def switchable_export(network, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """The network exported per resolution (onnx) and as the two switchable files."""
  net, *_, workdir = network
  dst = tmp_path_factory.mktemp(net.arch) / 'export'
  code = export_command.main([f'--workdir={workdir}', f'--dst={dst}', '--formats=onnx',
                              '--switchable'])
  assert code == 0
  return dst, manifests.read_manifest(dst)


def _images(res, count=3):
  return np.random.default_rng(res).integers(0, 256, (count, res, res, 3), np.uint8)


def test_one_file_per_format_lists_every_resolution(network, switchable_export):  # pylint: disable=redefined-outer-name
  net = network[0]
  dst, manifest = switchable_export
  assert [r['resolution'] for r in manifest['resolutions']] == list(net.all_resolutions)
  for name in formats.SWITCHABLE_FORMATS:
    entries = [r['files'][name] for r in manifest['resolutions']]
    assert all(e == entries[0] for e in entries)  # one file, named by every row
    assert entries[0]['file'] == formats.FORMATS[name].file_name(0)
    assert (dst / entries[0]['file']).stat().st_size == entries[0]['bytes']
  assert sorted(p.name for p in dst.iterdir()) == sorted(
      ['manifest.json', 'switchable.onnx', 'switchable.jaxexport.zip'] +
      [f'{r}px.onnx' for r in net.all_resolutions])


def test_switchable_files_give_net_apply_logits_at_every_resolution(network, switchable_export,  # pylint: disable=redefined-outer-name
                                                                    tmp_path):
  ort = pytest.importorskip('onnxruntime')
  dst, manifest = switchable_export
  resolutions = [r['resolution'] for r in manifest['resolutions']]
  np.savez(tmp_path / 'images.npz', **{str(r): _images(r) for r in resolutions})
  # The archive runs where rsnets_jax cannot be imported, as docs/deployment.md shows.
  script = f"""
import sys; sys.modules['rsnets_jax'] = None
import io, json, zipfile
import jax, numpy as np
archive = zipfile.ZipFile({str(dst / 'switchable.jaxexport.zip')!r})
index = json.loads(archive.read('switchable.json'))
weights = dict(np.load(io.BytesIO(archive.read(index['weights']))))
images, logits = np.load({str(tmp_path / 'images.npz')!r}), {{}}
for res in images.files:
  program = jax.export.deserialize(bytearray(archive.read(index['programs'][res])))
  batchnorm = dict(np.load(io.BytesIO(archive.read(index['batchnorm'][res]))))
  logits[res] = np.asarray(program.call(weights, batchnorm, images[res]))
np.savez({str(tmp_path / 'logits.npz')!r}, **logits)
"""
  subprocess.run([sys.executable, '-c', script], check=True, capture_output=True)
  by_hand = np.load(tmp_path / 'logits.npz')
  session = ort.InferenceSession(str(dst / 'switchable.onnx'), providers=['CPUExecutionProvider'])
  errors = {}
  for res in resolutions:
    x = _images(res)
    want = _reference(network, res, x)
    loaded = {runtime: manifests.load_runtime(dst, manifest, res, runtime)(x)
              for runtime in ('jax_switchable', 'onnxruntime_switchable')}
    errors[res] = (_relative_error(by_hand[str(res)], want),
                   _relative_error(loaded['jax_switchable'], want),
                   _relative_error(session.run(None, {'images': x})[0], want),
                   _relative_error(loaded['onnxruntime_switchable'], want))
  print(f'{manifest["arch"]}: relative error (jax by hand, jax, onnx, onnx loaded) {errors}')
  assert all(max(e[:2]) < JAX_TOLERANCE and max(e[2:]) < ONNX_TOLERANCE
             for e in errors.values()), errors


def test_the_shared_weights_are_stored_once(network, switchable_export):  # pylint: disable=redefined-outer-name
  import onnx  # pylint: disable=import-outside-toplevel
  net, params, stats, *_ = network
  dst, manifest = switchable_export
  model = onnx.load(str(dst / 'switchable.onnx'))
  contents = [bytes(t.raw_data) for t in model.graph.initializer]
  assert len(contents) == len(set(contents))  # no initializer twice
  shared = sum(v.nbytes for v in switchable.shared_weights(net, params).values())
  per_resolution = sum(sum(v.nbytes for v in switchable.batchnorm_affine(
      net, params, stats[r], r).values()) for r in net.all_resolutions)
  stored = sum(len(c) for c in contents)
  # The weights once and each resolution's scale and shift, no more (a few small constants).
  assert shared + per_resolution <= stored < shared + per_resolution + 4096, (
      stored, shared, per_resolution)
  one = (dst / manifest['resolutions'][0]['files']['onnx']['file']).stat().st_size
  assert (dst / 'switchable.onnx').stat().st_size < one + per_resolution + 16384


def test_an_input_of_another_size_is_refused(network, switchable_export):  # pylint: disable=redefined-outer-name
  ort = pytest.importorskip('onnxruntime')
  net = network[0]
  dst, _ = switchable_export
  other = min(net.all_resolutions) - 4
  session = ort.InferenceSession(str(dst / 'switchable.onnx'), providers=['CPUExecutionProvider'])
  with pytest.raises(Exception, match='(?i)reshape|shape'):
    session.run(None, {'images': _images(other)})
  run = switchable.load_jax(dst / 'switchable.jaxexport.zip')
  assert run.resolutions == net.all_resolutions
  with pytest.raises(ConfigError, match=re.escape(f'res in {list(net.all_resolutions)}, got')):
    run(_images(other))
  with pytest.raises(ConfigError, match='not a switchable JAX archive'):
    switchable.load_jax(dst / 'manifest.json')


def test_profile_the_budget_and_predict_run_the_switchable_files(network, switchable_export,  # pylint: disable=redefined-outer-name
                                                                 tmp_path, capsys):
  pytest.importorskip('onnxruntime')
  net = network[0]
  dst, _ = switchable_export
  runtimes = ['jax_switchable', 'onnxruntime_switchable']
  manifest = profile.profile_model(dst, runtimes, batch=1, iters=2, batch_iters=1, warmup=1,
                                   min_seconds=0, log=lambda _: None)
  for r in manifest['resolutions']:
    assert all(r['latency'][runtime]['p50_ms'] > 0 for runtime in runtimes)
  slowest = max(manifests.measured_latency(r, 'onnxruntime_switchable')
                for r in manifest['resolutions'])
  assert manifests.choose_resolution(manifest, latency_ms=slowest,
                                     runtime='onnxruntime_switchable') == net.all_resolutions[0]
  photo = tmp_path / 'photo.jpg'
  _jpeg(photo, (50, 40), 0)
  for runtime in runtimes:
    res = net.all_resolutions[-1]
    assert predict_command.main(['--model', str(dst), f'--resolution={res}',
                                 f'--runtime={runtime}', str(photo)]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f'{photo}: {res} px, ')


def test_a_switchable_export_of_some_resolutions(network, tmp_path):  # pylint: disable=redefined-outer-name
  net, *_, workdir = network
  some = net.all_resolutions[1:]
  manifest = export.export_model(workdir, tmp_path / 'export', some,
                                 formats=formats.SWITCHABLE_FORMATS, log=lambda _: None)
  assert [r['resolution'] for r in manifest['resolutions']] == list(some)
  assert switchable.load_jax(tmp_path / 'export' / 'switchable.jaxexport.zip').resolutions == some
