"""pooling.py: the max over strided views computes nn.max_pool and the gradient XLA gives it."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsnets_jax.models import conv, pooling

# (height, width, padding): even, odd, non-square and tiny maps under both paddings.
SHAPES = [(8, 8, 'symmetric'), (7, 7, 'symmetric'), (6, 5, 'symmetric'), (1, 1, 'symmetric'),
          (2, 3, 'symmetric'), (8, 8, 'same'), (7, 6, 'same'), (1, 1, 'same'), (2, 2, 'same')]


def native(x, padding):
  pads = tuple(conv.pads(size, 3, 2, padding) for size in x.shape[1:3])
  return nn.max_pool(x, (3, 3), (2, 2), padding=pads)


def inputs(h, w, ties: bool):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, h, w, 8)).astype(np.float32)
  if ties:  # after a ReLU most windows hold several equal maxima
    x = np.maximum(np.round(x), 0)
  return jnp.asarray(x)


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('h, w, padding', SHAPES)
def test_views_match_native_value_and_gradient(h, w, padding, ties):
  x = inputs(h, w, ties)
  views = lambda x: pooling.max_pool(x, 3, 2, padding, impl='views')
  out, vjp = jax.vjp(views, x)
  out_native, vjp_native = jax.vjp(lambda x: native(x, padding), x)
  np.testing.assert_array_equal(out, out_native)
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), jnp.float32)
  # Ties send the gradient to the first maximum, as select-and-scatter does: a different choice
  # would move whole cotangent values, far beyond the rounding of overlapping windows' sums.
  np.testing.assert_allclose(vjp(cotangent)[0], vjp_native(cotangent)[0], rtol=0, atol=1e-6)


def test_views_gradient_under_jit_and_bfloat16():
  x = inputs(9, 9, ties=True).astype(jnp.bfloat16)
  grad = jax.jit(jax.grad(lambda x: pooling.max_pool(x, 3, 2, impl='views').astype(
      jnp.float32).sum()))(x)
  grad_native = jax.grad(lambda x: native(x, 'symmetric').astype(jnp.float32).sum())(x)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(grad, grad_native)


@pytest.mark.parametrize('backend, views', [('cpu', True), ('gpu', False), ('tpu', False)])
def test_auto_follows_the_backend(monkeypatch, backend, views):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  grad = jax.make_jaxpr(jax.grad(lambda x: pooling.max_pool(x, 3, 2).sum()))(
      jnp.zeros((1, 8, 8, 4)))
  primitives = {eqn.primitive.name for eqn in grad.jaxpr.eqns}
  assert ('select_and_scatter_add' not in primitives) == views
  # The forward pass is XLA's reduction everywhere, so exports (and their ONNX MaxPool) are too.
  forward = jax.make_jaxpr(lambda x: pooling.max_pool(x, 3, 2))(jnp.zeros((1, 8, 8, 4)))
  assert 'reduce_window_max' in str(forward)


def test_rejects_unknown_impl_and_padding():
  with pytest.raises(ValueError, match='impl must be one of'):
    pooling.max_pool(jnp.zeros((1, 4, 4, 1)), 3, 2, impl='fast')
  with pytest.raises(ValueError, match='padding must be one of'):
    pooling.max_pool(jnp.zeros((1, 4, 4, 1)), 3, 2, padding='valid')
