"""conv.py: the matmul lowering and 'auto' compute what XLA's convolution (and nn.Conv) computes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsnets_jax.models import conv

# (batch, height, width, Cin, Cout, kernel, stride, groups): tiny, odd and non-square maps, and
# kernels that overhang the map so far that some taps read padding only.
SHAPES = [
    (2, 1, 1, 16, 8, 3, 1, 1),
    (2, 2, 2, 16, 8, 3, 1, 1),
    (2, 2, 2, 16, 8, 3, 2, 1),
    (2, 5, 5, 8, 16, 3, 2, 1),
    (2, 7, 7, 8, 8, 3, 1, 1),
    (2, 6, 5, 8, 8, 3, 1, 1),
    (2, 4, 4, 8, 8, 1, 1, 1),
    (2, 7, 7, 8, 16, 1, 2, 1),
    (2, 9, 9, 3, 8, 7, 2, 1),
    (2, 1, 1, 3, 8, 7, 2, 1),
    (2, 7, 7, 8, 8, 3, 1, 8),
    (2, 5, 5, 8, 8, 3, 2, 8),
    (2, 2, 2, 8, 8, 3, 1, 8),
    (2, 1, 1, 8, 8, 3, 2, 8),
    (2, 6, 6, 8, 16, 3, 1, 2),
]


def inputs(shape, dtype=jnp.float32):
  n, h, w, cin, cout, k, stride, groups = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, cin), np.float32), dtype)
  kernel = jnp.asarray(rng.standard_normal((k, k, cin // groups, cout), np.float32))
  ho, wo = conv.output_size(h, k, stride), conv.output_size(w, k, stride)
  cotangent = jnp.asarray(rng.standard_normal((n, ho, wo, cout), np.float32), dtype)
  return x, kernel, cotangent


def outputs_and_grads(shape, dtype):
  """{impl: (output, d x, d kernel)} for one random cotangent, every impl in one compilation."""
  _, _, _, _, _, _, stride, groups = shape
  x, kernel, cotangent = inputs(shape, dtype)

  @jax.jit
  def run(x, kernel, cotangent):
    results = {}
    for impl in ('native', 'matmul', 'auto'):
      out, vjp = jax.vjp(lambda x, k, impl=impl: conv.conv2d(x, k, stride, groups, impl, dtype),
                         x, kernel)
      results[impl] = (out, *vjp(cotangent))
    return results

  return run(x, kernel, cotangent)


def assert_close(actual, expected, rtol):
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_matmul_and_auto_match_native_float32(shape):
  results = outputs_and_grads(shape, jnp.float32)
  for impl in ('matmul', 'auto'):
    for got, want in zip(results[impl], results['native']):
      assert got.dtype == jnp.float32
      assert_close(got, want, 1e-5)


@pytest.mark.parametrize('shape', SHAPES[1::3], ids=lambda s: 'x'.join(map(str, s)))
def test_matmul_matches_native_bfloat16(shape):
  results = outputs_and_grads(shape, jnp.bfloat16)
  out, dx, dkernel = results['matmul']
  assert out.dtype == dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.float32
  for got, want in zip(results['matmul'], results['native']):
    assert_close(got, want, 2e-2)


@pytest.mark.parametrize('shape', [SHAPES[1], SHAPES[7], SHAPES[8], SHAPES[11]],
                         ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_module_is_nn_conv(shape, dtype):
  _, _, _, cin, cout, k, stride, groups = shape
  x, _, _ = inputs(shape)
  module = conv.Conv(cout, k, stride, groups, dtype=dtype)
  params = module.init(jax.random.key(0), x)
  assert jax.tree.map(lambda p: (p.shape, p.dtype), params) == {
      'params': {'kernel': ((k, k, cin // groups, cout), jnp.float32)}}
  pad = (k - 1) // 2
  reference = nn.Conv(cout, (k, k), (stride, stride), padding=((pad, pad), (pad, pad)),
                      feature_group_count=groups, use_bias=False, dtype=dtype)
  want = reference.apply(params, x)
  got = module.apply(params, x)
  assert got.dtype == want.dtype == dtype
  assert_close(got, want, 1e-5 if dtype == jnp.float32 else 2e-2)
  np.testing.assert_array_equal(conv.Conv(cout, k, stride, groups, dtype=dtype,
                                          impl='native').apply(params, x), want)


def test_default_init_is_kaiming_normal_fan_out():
  kernel = conv.Conv(128, 3).init(jax.random.key(0), jnp.zeros((1, 4, 4, 64)))['params']['kernel']
  std = np.sqrt(2 / (3 * 3 * 128))
  assert abs(float(jnp.std(kernel)) - std) < 0.05 * std
  assert abs(float(jnp.mean(kernel))) < 0.05 * std


def test_rule():
  tiny, large = ((16, 2, 2, 512), (3, 3, 512, 512)), ((16, 56, 56, 64), (3, 3, 64, 64))
  for backend in ('gpu', 'tpu', 'cuda'):
    assert not conv.use_matmul(backend, *tiny, 1, 1)
  assert conv.use_matmul('cpu', *tiny, 1, 1)
  assert not conv.use_matmul('cpu', *large, 1, 1)
  assert conv.use_matmul('cpu', (16, 7, 7, 512), (3, 3, 512, 512), 1, 1)  # 49 * 8 < 512
  assert not conv.use_matmul('cpu', (16, 8, 8, 128), (3, 3, 128, 128), 1, 1)
  assert conv.use_matmul('cpu', (16, 28, 28, 128), (3, 3, 128, 256), 2, 1)
  assert not conv.use_matmul('cpu', (16, 224, 224, 3), (7, 7, 3, 64), 2, 1)  # the RGB stem
  assert conv.use_matmul('cpu', (16, 56, 56, 64), (1, 1, 64, 128), 2, 1)
  assert conv.use_matmul('cpu', (16, 56, 56, 144), (3, 3, 1, 144), 1, 144)
  assert not conv.use_matmul('cpu', (16, 8, 8, 64), (3, 3, 32, 64), 1, 2)


@pytest.mark.parametrize('backend,primitive', [('cpu', 'dot_general'),
                                               ('gpu', 'conv_general_dilated')])
def test_auto_follows_the_backend(monkeypatch, backend, primitive):
  monkeypatch.setattr(conv.jax, 'default_backend', lambda: backend)
  jaxpr = jax.make_jaxpr(lambda x, k: conv.conv2d(x, k))(jnp.zeros((2, 2, 2, 64)),
                                                         jnp.zeros((3, 3, 64, 64)))
  assert {str(eqn.primitive) for eqn in jaxpr.eqns} & {'dot_general', 'conv_general_dilated'} == {
      primitive}


def test_rejects_bad_arguments():
  x, kernel, _ = inputs(SHAPES[0])
  with pytest.raises(ValueError, match='impl'):
    conv.conv2d(x, kernel, impl='im2col')
  with pytest.raises(ValueError, match='does not fit'):
    conv.conv2d(x, kernel, groups=2)


@pytest.mark.parametrize('size,k,stride', [(8, 3, 2), (7, 3, 2), (8, 7, 2), (9, 7, 2), (8, 1, 2),
                                           (6, 3, 1), (2, 3, 2), (1, 3, 2)])
def test_same_padding_is_tensorflows(size, k, stride):
  """padding='same' (the quantized reference's): TF pads one more after than before where the
  total is odd; both impls equal lax's own 'SAME' convolution, gradients included."""
  rng = np.random.default_rng(size * k)
  x = jnp.asarray(rng.standard_normal((2, size, size, 8), np.float32))
  kernel = jnp.asarray(rng.standard_normal((k, k, 8, 16), np.float32))
  expected = jax.lax.conv_general_dilated(x, kernel, (stride, stride), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert conv.output_size(size, k, stride, 'same') == expected.shape[1] == -(-size // stride)
  for impl in ('native', 'matmul'):
    f = lambda x, w, impl=impl: conv.conv2d(x, w, stride, impl=impl, padding='same')
    assert_close(f(x, kernel), expected, 1e-5)
    grads = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))(x, kernel)
    ref = jax.grad(lambda x, w: jnp.sum(jax.lax.conv_general_dilated(
        x, w, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2),
        argnums=(0, 1))(x, kernel)
    for g, r in zip(grads, ref):
      assert_close(g, r, 1e-4)
