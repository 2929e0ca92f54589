"""The LQ-Nets quantizers against a NumPy transcription of the reference's TensorFlow code.

`reference_weight` and `reference_activation` follow quantization/learned_quant.py of the RS-Nets
reference (QuantizedWeight, QuantizedActiv) statement by statement in NumPy float32: level table,
top_k-then-reverse sort (ties: lower index first, then reversed), midpoint thresholds, the chain of
selects, the normal equations and their inverses. `reference_moving_average` is TF1's
assign_moving_average with zero_debias=True.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsnets_jax.models import quantizers


def _codes(nbit, signed):
  table = []
  for i in range(2**nbit):
    row, number = [], i
    for _ in range(nbit):
      bit = number % 2
      row.append(float(-1 if (signed and bit == 0) else bit))
      number //= 2
    table.append(row)
  return np.array(table, np.float32)


def _sorted(codes, basis):
  """tf.matmul(codes, basis), then top_k over levels per column and reverse."""
  num, nbit = codes.shape
  levels = np.zeros((num, basis.shape[1]), np.float32)
  for j in range(nbit):  # the sum in bit order, as the project's (see sorted_levels)
    levels = levels + codes[:, j:j + 1] * basis[j:j + 1]
  sort_id = np.zeros(levels.shape, np.int64)
  for c in range(levels.shape[1]):
    descending = sorted(range(num), key=lambda i: (-levels[i, c], i))  # tf.nn.top_k
    sort_id[:, c] = descending[::-1]
  levels = np.take_along_axis(levels, sort_id, axis=0)
  thrs = np.float32(0.5) * levels[:-1] + np.float32(0.5) * levels[1:]
  return levels, sort_id, thrs


def reference_weight(x, basis, delta=np.float32(1e-4)):
  nbit, num_filters = basis.shape
  num_levels = 2**nbit
  level_codes = _codes(nbit, signed=True)
  levels, sort_id, thrs = _sorted(level_codes, basis)
  reshape_x = x.reshape(-1, num_filters)
  level_codes_channelwise = level_codes[sort_id]  # [num_levels, num_filters, nbit]
  y = np.zeros_like(x) + levels[0]
  bits_y = np.full((reshape_x.shape[0] * num_filters, nbit), -1.0, np.float32)
  zero_bits_y = np.zeros((reshape_x.shape[0], num_filters, nbit), np.float32)
  for i in range(num_levels - 1):
    g = x > thrs[i]
    y = np.where(g, levels[i + 1], y)
    bits_y = np.where(g.reshape(-1)[:, None],
                      (zero_bits_y + level_codes_channelwise[i + 1]).reshape(-1, nbit), bits_y)
  bits_y = bits_y.reshape(-1, num_filters, nbit)
  bt = bits_y.transpose(2, 0, 1)
  btxb = np.zeros((nbit, nbit, num_filters), np.float32)
  for i in range(nbit):
    for j in range(nbit):
      btxb[i, j] = np.sum(bt[i] * bt[j], axis=0) + (delta if i == j else 0)
  if nbit > 2:
    inv = np.linalg.inv(btxb.transpose(2, 0, 1)).transpose(1, 2, 0)
  elif nbit == 2:
    det = btxb[0, 0] * btxb[1, 1] - btxb[0, 1] * btxb[1, 0]
    inv = np.stack([btxb[1, 1] / det, -btxb[0, 1] / det, -btxb[1, 0] / det,
                    btxb[0, 0] / det]).reshape(2, 2, num_filters)
  else:
    inv = 1.0 / btxb
  btxx = np.stack([np.sum(bt[i] * reshape_x, axis=0) for i in range(nbit)]) + delta * basis
  new_basis = np.stack([np.sum(inv[i] * btxx, axis=0) for i in range(nbit)])
  return y.astype(np.float32), new_basis.astype(np.float32)


def reference_activation(x, basis):
  nbit = basis.shape[0]
  num_levels = 2**nbit
  level_codes = _codes(nbit, signed=False)
  levels, sort_id, thrs = _sorted(level_codes, basis)
  y = np.zeros_like(x)
  reshape_x = x.reshape(-1)
  bits_y = np.zeros((reshape_x.shape[0], nbit), np.float32)
  for i in range(num_levels - 1):
    g = x > thrs[i][0]
    y = np.where(g, levels[i + 1][0], y)
    bits_y = np.where(g.reshape(-1)[:, None], level_codes[sort_id[i + 1][0]], bits_y)
  bt = bits_y.T
  btxb = np.array([[np.sum(bt[i] * bt[j]) for j in range(nbit)] for i in range(nbit)], np.float32)
  with np.errstate(all='ignore'):
    try:
      inv = np.linalg.inv(btxb)
    except np.linalg.LinAlgError:
      inv = np.full_like(btxb, np.nan)
  btxx = np.array([[np.sum(bt[i] * reshape_x)] for i in range(nbit)], np.float32)
  return y, (inv @ btxx).astype(np.float32), levels[-1][0]


def reference_moving_average(basis, biased, local_step, value, decay=0.9):
  one_minus = np.float32(1.0 - decay)
  biased = biased - (biased - value) * one_minus
  local_step = local_step + np.float32(1)
  return biased / (np.float32(1) - np.power(np.float32(1) - one_minus, local_step)), biased, local_step


def _kernel(rng, shape, scale):
  w = rng.normal(0, scale, shape).astype(np.float32)
  w.reshape(-1)[:5] = 0.0  # exact zeros: a threshold of a symmetric basis
  return w


def _bases(rng, nbit, cout, kernel_shape):
  init = quantizers.init_weight_basis(nbit, kernel_shape)
  fitted = (init * rng.uniform(0.5, 2.0, init.shape)).astype(np.float32)
  tied = np.full((nbit, cout), 0.05, np.float32)  # equal levels: the tie rule of the sort
  tied[0, 1::2] = 0.0  # a zero basis entry: every level appears twice
  return {'init': init, 'fitted': fitted, 'tied': tied}


@pytest.mark.parametrize('nbit', [1, 2, 3, 4])
def test_weight_quantizer_equals_reference(nbit):
  rng = np.random.default_rng(nbit)
  shape = (3, 3, 16, 8)
  w = _kernel(rng, shape, np.sqrt(2.0 / (9 * 8)))
  for name, basis in _bases(rng, nbit, shape[-1], shape).items():
    levels, _ = quantizers.sorted_levels(basis, quantizers.level_codes(nbit, signed=True))
    # Elements exactly at thresholds: ties must go to the lower level.
    w_tie = w.copy()
    w_tie.reshape(-1, 8)[7] = 0.5 * np.asarray(levels)[0] + 0.5 * np.asarray(levels)[1]
    for kernel in (w, w_tie):
      expect_y, expect_basis = reference_weight(kernel, basis)
      y, target = jax.jit(quantizers.quantize_weight)(kernel, basis)
      np.testing.assert_array_equal(np.asarray(y), expect_y, err_msg=name)
      np.testing.assert_allclose(np.asarray(target), expect_basis, rtol=1e-5, atol=1e-7,
                                 err_msg=name)
      values_per_channel = [len(np.unique(np.asarray(y)[..., c])) for c in range(shape[-1])]
      assert max(values_per_channel) <= 2**nbit


@pytest.mark.parametrize('nbit', [1, 2, 3, 4])
def test_activation_quantizer_equals_reference(nbit):
  rng = np.random.default_rng(10 + nbit)
  x = np.maximum(rng.normal(0.3, 1.0, (4, 6, 6, 8)), 0).astype(np.float32)  # ReLU outputs
  init = quantizers.init_activation_basis(nbit)
  for basis in (init, (init * rng.uniform(0.6, 1.5, init.shape)).astype(np.float32)):
    levels, _ = quantizers.sorted_levels(basis, quantizers.level_codes(nbit, signed=False))
    levels = np.asarray(levels)[:, 0]
    x_tie = x.copy()
    x_tie.reshape(-1)[:len(levels) - 1] = 0.5 * levels[:-1] + 0.5 * levels[1:]
    x_tie.reshape(-1)[-1] = levels[-1]
    for inputs in (x, x_tie):
      expect_y, expect_basis, _ = reference_activation(inputs, basis)
      y, target = jax.jit(quantizers.quantize_activation)(inputs, basis)
      np.testing.assert_array_equal(np.asarray(y), expect_y)
      np.testing.assert_allclose(np.asarray(target), expect_basis, rtol=1e-5)
      assert len(np.unique(np.asarray(y))) <= 2**nbit


def test_initial_levels():
  shape = (3, 3, 64, 128)
  levels, _ = quantizers.sorted_levels(quantizers.init_weight_basis(2, shape), quantizers.level_codes(2, signed=True))
  scale = 0.6745 * np.sqrt(2.0 / (3 * 3 * 128))
  np.testing.assert_allclose(np.asarray(levels)[:, 0], scale * np.array([-1.5, -0.5, 0.5, 1.5]),
                             rtol=1e-6)
  levels, _ = quantizers.sorted_levels(quantizers.init_activation_basis(2), quantizers.level_codes(2, signed=False))
  np.testing.assert_allclose(np.asarray(levels)[:, 0], [0, 0.4497, 0.8993, 1.349], atol=1e-4)


def test_moving_average_is_zero_debiased():
  init = quantizers.init_weight_basis(2, (3, 3, 4, 4))
  target = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], np.float32)
  state = quantizers.init_state(init)
  one = quantizers.update_state(state, target)
  np.testing.assert_allclose(np.asarray(one['basis']), target, rtol=1e-6)  # replaces the init
  basis, biased, step = init, np.zeros_like(init), np.float32(0)
  rng = np.random.default_rng(0)
  for s in range(1, 6):
    # S updates of one target: biased = (1 - 0.9^S) target and basis = target.
    state = quantizers.update_state(state, target) if s > 1 else one
    np.testing.assert_allclose(np.asarray(state['biased']), (1 - 0.9**s) * target, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state['basis']), target, rtol=1e-5)
    assert int(state['step']) == s
  state = quantizers.init_state(init)
  for _ in range(4):  # changing targets, against TF's formula
    value = rng.normal(size=init.shape).astype(np.float32)
    basis, biased, step = reference_moving_average(basis, biased, step, value)
    state = quantizers.update_state(state, value)
    np.testing.assert_allclose(np.asarray(state['basis']), basis, rtol=1e-5)


def test_straight_through_gradients():
  rng = np.random.default_rng(1)
  w = rng.normal(0, 0.1, (3, 3, 4, 6)).astype(np.float32)
  basis = quantizers.init_weight_basis(2, w.shape)
  upstream = rng.normal(size=w.shape).astype(np.float32)
  grad = jax.grad(lambda k: jnp.sum(quantizers.quantize_weight(k, basis)[0] * upstream))(w)
  np.testing.assert_array_equal(np.asarray(grad), upstream)  # identity, no clipping

  basis = quantizers.init_activation_basis(2)
  top = float(np.asarray(quantizers.sorted_levels(basis, quantizers.level_codes(2, signed=False))[0])[-1, 0])
  x = np.array([0.0, 0.3, top - 1e-3, top, top + 1e-3, 5.0], np.float32)
  grad = jax.grad(lambda a: jnp.sum(quantizers.quantize_activation(a, basis)[0] * 2.0))(x)
  np.testing.assert_array_equal(np.asarray(grad), [2, 2, 2, 2, 0, 0])  # x == top passes


def test_degenerate_activation_leaves_state_unchanged():
  state = quantizers.init_state(quantizers.init_activation_basis(2))
  y, target = quantizers.quantize_activation(jnp.zeros((2, 4, 4, 3)), state['basis'])
  assert not np.all(np.isfinite(np.asarray(target)))  # the reference's solve is singular here
  np.testing.assert_array_equal(np.asarray(y), 0)
  new = quantizers.update_state(state, target)
  for key in state:
    np.testing.assert_array_equal(np.asarray(new[key]), np.asarray(state[key]))


def test_bit_widths_are_checked():
  assert quantizers.quantized(2) and not quantizers.quantized(32)
  for bad in (0, 5, 16):
    with pytest.raises(ValueError, match='bit widths are 1 to 4'):
      quantizers.quantized(bad)
