"""Architectures and the functional API: sizes match the reference, apply is pure and strict."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsnets_jax

PAPER = (224, 192, 160, 128, 96)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('arch,params,macs', [
    # Reference sizes (1000 classes, 5 resolutions, alpha included) and MACs (reference.md).
    ('resnet18', 11_727_917, (1814, 1333, 926, 593, 334)),
    ('resnet50', 25_769_517, (4089, 3005, 2087, 1337, 753)),
    ('mobilenet_v2', 3_641_325, (300.8, 221.3, 154.1, 99.1, 56.3)),
])
def test_sizes_match_reference(arch, params, macs):
  net = rsnets_jax.create_model(arch, resolutions=PAPER, num_classes=1000)
  p, stats = net.init_shapes()
  assert count(p) == params
  assert p['alpha'].shape == (5,)
  assert sorted(stats) == sorted(PAPER)
  digits = 1 if arch == 'mobilenet_v2' else 0
  assert [round(net.macs(r) / 1e6, digits) for r in PAPER] == list(macs)


def test_resnet34_layout():
  net = rsnets_jax.create_model('resnet34', resolutions=PAPER)
  p, _ = net.init_shapes()
  assert sorted(k for k in p if k.startswith('layer')) == sorted(
      f'layer{i + 1}_{b}' for i, n in enumerate((3, 4, 6, 3)) for b in range(n))
  # torchvision resnet34 has 21,797,672 parameters; private BN adds 4 x 2 x 8,512 channels, alpha 5.
  assert count(p) == 21_797_672 + 4 * 2 * 8512 + 5


@pytest.fixture(scope='module')
def tiny():
  net = rsnets_jax.create_model('resnet18', resolutions=(32, 24, 16), num_classes=10, width=0.125)
  params, stats = net.init(jax.random.key(0))
  return net, params, stats


def test_init_is_reproducible_and_matches_reference_init(tiny):
  net, params, stats = tiny
  params2, _ = net.init(jax.random.key(0))
  chex_equal = jax.tree.map(np.array_equal, params, params2)
  assert all(jax.tree.leaves(chex_equal))
  # Kaiming normal, fan_out: std sqrt(2 / (k * k * out)); BN scale 1, bias 0; alpha ones.
  k = np.asarray(params['layer3_0']['conv1']['kernel'])
  assert abs(k.std() - np.sqrt(2 / (9 * k.shape[-1]))) < 0.1 * np.sqrt(2 / (9 * k.shape[-1]))
  bn = params['layer1_0']['bn2']
  assert set(bn) == {f'{n}_{r}' for n in ('scale', 'bias') for r in (32, 24, 16)}
  assert np.all(np.asarray(bn['scale_24']) == 1) and np.all(np.asarray(bn['bias_16']) == 0)
  np.testing.assert_array_equal(params['alpha'], np.ones(3))
  for r in (32, 24, 16):
    assert int(stats[r]['resolution']) == r
    assert jax.tree.structure(stats[r]) == jax.tree.structure(stats[32])


def test_apply_picks_resolution_from_input(tiny):
  net, params, stats = tiny
  x = jax.random.uniform(jax.random.key(1), (4, 24, 24, 3))
  logits = net.apply(params, stats[24], x)
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  logits_t, new = net.apply(params, stats[24], x, train=True)
  assert jax.tree.structure(new) == jax.tree.structure(stats[24])
  assert int(new['resolution']) == 24
  assert not np.allclose(new['layer1_0']['bn1']['mean'], stats[24]['layer1_0']['bn1']['mean'])
  # Eval mode with fresh statistics (mean 0, var 1) differs from batch statistics.
  assert not np.allclose(logits, logits_t)


def test_apply_is_pure_and_transformable(tiny):
  net, params, stats = tiny
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  eager = net.apply(params, stats[16], x)
  jitted = jax.jit(net.apply)(params, stats[16], x)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)
  per_image = jax.vmap(lambda xi: net.apply(params, stats[16], xi[None])[0])(x)
  np.testing.assert_allclose(per_image, eager, rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda p: net.apply(p, stats[16], x).sum())(params)
  assert jax.tree.structure(g) == jax.tree.structure(params)


def test_untrained_resolution_and_wrong_stats_are_errors(tiny):
  net, params, stats = tiny
  with pytest.raises(ValueError, match='resolutions'):
    net.apply(params, stats[32], jnp.zeros((1, 20, 20, 3)))
  with pytest.raises(ValueError, match=r'stats are for resolution 32 but the input is 16x16'):
    net.apply(params, stats[32], jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match='NHWC'):
    net.apply(params, stats[16], jnp.zeros((1, 3, 16, 16)))
  # Under jit the tag is traced: a mismatch yields NaN, never plausible logits.
  out = jax.jit(net.apply)(params, stats[32], jnp.zeros((2, 16, 16, 3)))
  assert np.all(np.isnan(out))


def test_integer_images_are_an_error_not_wrong_logits(tiny):
  """uint8 pixels (what the input pipeline yields) would enter as values up to 255 where the
  network learned [0, 1]: plausible-looking logits, all wrong."""
  net, params, stats = tiny
  pixels = np.full((2, 16, 16, 3), 200, np.uint8)
  for call in (net.apply, jax.jit(net.apply)):
    with pytest.raises(ValueError) as error:
      call(params, stats[16], jnp.asarray(pixels))
    assert str(error.value) == ('expected float images in [0, 1], got uint8: pass x / 255 as '
                                'float32')
  with pytest.raises(ValueError, match='got int32'):
    net.apply(params, stats[16], jnp.asarray(pixels, jnp.int32), train=True)
  net.apply(params, stats[16], jnp.asarray(pixels, jnp.float32) / 255)  # the documented input


def test_invalid_definitions():
  with pytest.raises(ValueError, match='largest first'):
    rsnets_jax.create_model('resnet18', resolutions=(96, 128))
  with pytest.raises(ValueError, match='unknown arch'):
    rsnets_jax.create_model('vgg16')
  for kwargs, said in (({'resolutions': (32, 0)}, 'resolutions must be positive'),
                       ({'num_classes': 0}, 'num_classes must be at least 1'),
                       ({'width': 0.0}, 'width must be positive'),
                       ({'bn_group_size': 0}, 'bn_group_size must be None')):
    with pytest.raises(rsnets_jax.UserError, match=said):
      rsnets_jax.create_model('resnet18', **{'resolutions': (32, 16), **kwargs})


def test_bfloat16_compute_keeps_float32_params():
  net = rsnets_jax.create_model('resnet18', resolutions=(32, 16), num_classes=10, width=0.125,
                                dtype='bfloat16')
  params, stats = net.init(jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  logits, new = net.apply(params, stats[32], x, train=True)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(new))
  # Same weights in float32 compute: bf16 (8-bit mantissa) agrees to about 1e-2 relative.
  ref = rsnets_jax.create_model('resnet18', resolutions=(32, 16), num_classes=10, width=0.125)
  logits_bf16 = net.apply(params, stats[32], x)
  logits_f32 = ref.apply(params, stats[32], x)
  err = np.abs(logits_bf16 - logits_f32).max() / np.abs(logits_f32).max()
  assert 0 < err < 0.05
