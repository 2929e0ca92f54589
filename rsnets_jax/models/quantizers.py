"""LQ-Nets learned quantizers (Zhang et al., ECCV 2018), as the RS-Nets reference trains them.

An `nbit` quantizer maps x to the nearest level codes @ v: basis v per output channel (weights)
or per layer (activations), codes every nbit pattern of {-1, +1} (weights) or {0, 1}
(activations). Each use moves v, by a zero-debiased moving average, towards the least-squares fit
for the current codes. State {'basis', 'biased', 'step'}; 32 bits: no quantization. The
reference's facts, with the file:line citations used here: docs/quantization.md, section 1.
"""
from typing import Dict, Tuple

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.errors import ConfigError
from rsnets_jax.models.batchnorm import last

MOVING_AVERAGE = 0.9  # TF's assign_moving_average decay, with its default zero_debias=True
RIDGE = 1e-4  # added to the weights' normal equations only
NORMAL_Q75 = 0.6745  # 0.75 quantile of the standard normal: the initial levels' scale
FULL_PRECISION = 32

State = Dict[str, jnp.ndarray]
STATE_KEYS = ('basis', 'biased', 'step')


def quantized(nbit: int) -> bool:
  """Whether `nbit` quantizes (1 to 4 bits) or means full precision (32)."""
  if nbit not in (1, 2, 3, 4, FULL_PRECISION):
    raise ConfigError(f'bit widths are 1 to 4, or {FULL_PRECISION} for full precision; got {nbit}')
  return nbit != FULL_PRECISION


def level_codes(nbit: int, signed: bool) -> np.ndarray:
  """(2^nbit, nbit) float32: row i holds the bits of i, least significant first, as +-1 or 0/1."""
  bits = (np.arange(2**nbit)[:, None] >> np.arange(nbit)[None, :]) & 1
  return (2 * bits - 1 if signed else bits).astype(np.float32)


def init_weight_basis(nbit: int, kernel_shape) -> np.ndarray:
  """(nbit, Cout): 2-bit levels 0.6745 * sqrt(2 / n) * {-1.5, -0.5, 0.5, 1.5}, n = k * k * Cout
  (the He fan-out scale the reference initialises kernels with)."""
  k, cout = kernel_shape[0], kernel_shape[-1]
  base = NORMAL_Q75 * np.sqrt(2.0 / (k * k * cout)) / 2**(nbit - 1)
  return np.tile((2.0**np.arange(nbit) * base)[:, None], (1, cout)).astype(np.float32)


def init_activation_basis(nbit: int) -> np.ndarray:
  """(nbit, 1): levels {0, 0.45, 0.90, 1.35} for 2 bits."""
  base = NORMAL_Q75 * 2.0 / (2**nbit - 1)
  return (2.0**np.arange(nbit) * base)[:, None].astype(np.float32)


def init_state(basis) -> State:
  basis = jnp.asarray(basis, jnp.float32)
  return {'basis': basis, 'biased': jnp.zeros_like(basis), 'step': jnp.zeros((), jnp.int32)}


def sorted_levels(basis, codes) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Each channel's levels ascending, (L, C), and their codes, (L, C, nbit); equal levels in TF's
  top_k-then-reverse order (higher code index first)."""
  nbit = codes.shape[1]
  # A sum in bit order, so that every caller gets the same float32 levels (and thresholds).
  levels = sum(codes[:, j, None] * basis[j][None, :] for j in range(nbit))
  num = codes.shape[0]
  # A stable ascending sort of the reversed list puts the higher index first among equals.
  order = num - 1 - jnp.argsort(levels[::-1], axis=0, stable=True)
  return jnp.take_along_axis(levels, order, axis=0), jnp.asarray(codes)[order]


def _assign(x, levels, codes, zero_bin: bool):
  """Level (N, C) and code (N, C, nbit) of x (N, C), a tie with a midpoint going to the lower
  level: the reference's chain of selects (LQ:73-82, 204-213), exact in float32."""
  thresholds = 0.5 * levels[:-1] + 0.5 * levels[1:]
  if zero_bin:
    # Activations: bin 0 outputs 0 with code 0, whatever level 0 is.
    level = jnp.zeros_like(x)
    code = jnp.zeros(x.shape + (codes.shape[-1],), x.dtype)
  else:
    # Weights: bin 0 outputs level 0, but the code recorded for it is all -1, whatever level 0's is.
    level = jnp.broadcast_to(levels[0], x.shape)
    code = -jnp.ones(x.shape + (codes.shape[-1],), x.dtype)
  for i in range(levels.shape[0] - 1):
    above = x > thresholds[i]
    level = jnp.where(above, levels[i + 1], level)
    code = jnp.where(above[..., None], codes[i + 1], code)
  return level, code


def _solve(gram, rhs):
  """gram (C, nbit, nbit)^-1 @ rhs (C, nbit): reference's reciprocal, 2x2 adjugate, or solve."""
  nbit = rhs.shape[-1]
  if nbit == 1:
    return rhs / gram[:, 0]
  if nbit == 2:
    det = gram[:, 0, 0] * gram[:, 1, 1] - gram[:, 0, 1] * gram[:, 1, 0]
    inv = jnp.stack([jnp.stack([gram[:, 1, 1], -gram[:, 0, 1]], -1),
                     jnp.stack([-gram[:, 1, 0], gram[:, 0, 0]], -1)], 1) / det[:, None, None]
    return jnp.sum(inv * rhs[:, None, :], axis=-1)
  return jnp.linalg.solve(gram, rhs[..., None])[..., 0]


def _refit(x, code, basis, ridge: float):
  """The least-squares basis for the assignment `code` (N, C, nbit) of x (N, C): (nbit, C)."""
  x = x.astype(jnp.float32)
  gram = jnp.einsum('nci,ncj->cij', code, code, precision='highest')
  rhs = jnp.einsum('nci,nc->ci', code, x, precision='highest')
  if ridge:
    gram = gram + ridge * jnp.eye(code.shape[-1], dtype=jnp.float32)
    rhs = rhs + ridge * basis.T
  return _solve(gram, rhs).T


def quantize_weight(kernel, basis) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(quantized kernel, refit target) for an HWIO kernel and its (nbit, Cout) basis. Gradient
  straight through (LQ:267); target: ridge least squares of the unclipped kernel (LQ:219-260)."""
  nbit, cout = basis.shape
  x = kernel.reshape(-1, cout).astype(jnp.float32)
  levels, codes = sorted_levels(basis, level_codes(nbit, signed=True))
  level, code = _assign(x, levels, codes, zero_bin=False)
  target = jax.lax.stop_gradient(_refit(x, code, basis, RIDGE))
  q = level.reshape(kernel.shape)
  kernel = kernel.astype(jnp.float32)
  # x - x is exactly 0, so the value is exactly q: the straight-through form of LQ:267.
  return (kernel - jax.lax.stop_gradient(kernel)) + jax.lax.stop_gradient(q), target


def quantize_activation(x, basis) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(quantized x, refit target) for activations x and the layer's (nbit, 1) basis. Gradient 1
  where x <= the top level, ties included (TF's minimum, LQ:118-119), else 0. The target (no
  ridge, LQ:85-106) is not finite when a bit is never set; `update_state` then skips it."""
  nbit = basis.shape[0]
  flat = x.reshape(-1, 1).astype(jnp.float32)
  levels, codes = sorted_levels(basis, level_codes(nbit, signed=False))
  level, code = _assign(flat, levels, codes, zero_bin=True)
  target = _refit(flat, code, basis, ridge=0.0)
  top = jax.lax.stop_gradient(levels[-1, 0])
  x32 = x.astype(jnp.float32)
  clipped = jnp.where(x32 <= top, x32, top)
  q = jax.lax.stop_gradient(level.reshape(x.shape))
  return (clipped - jax.lax.stop_gradient(clipped)) + q, jax.lax.stop_gradient(target)


def update_state(state: State, target) -> State:
  """One zero-debiased moving-average step towards `target` (TF's assign_moving_average), so the
  first update replaces the initial basis; a non-finite target changes nothing."""
  decay = jnp.float32(1.0 - MOVING_AVERAGE)
  biased = state['biased'] - (state['biased'] - target) * decay
  step = state['step'] + 1
  basis = biased / (1.0 - jnp.power(jnp.float32(1.0) - decay, step.astype(jnp.float32)))
  ok = jnp.all(jnp.isfinite(target))
  return {'basis': jnp.where(ok, basis, state['basis']),
          'biased': jnp.where(ok, biased, state['biased']),
          'step': jnp.where(ok, step, state['step'])}


def fold_targets(states, targets_by_resolution, activations_from_largest_only: bool = False):
  """`states` (a network's quantizer states) after one `update_state` per resolution in the
  order given (largest first, as the reference's S update ops); each of `targets_by_resolution` is
  a forward pass's sown targets, at `<quantizer path>/<kind>`. `activations_from_largest_only`
  updates activation bases from the first resolution only (the reference's --fixed_qa)."""
  flat = traverse_util.flatten_dict(states)
  for i, targets in enumerate(targets_by_resolution):
    for path, target in traverse_util.flatten_dict(targets).items():
      where, kind = path[:-1], path[-1]
      if kind == 'activation' and activations_from_largest_only and i:
        continue
      new = update_state({k: flat[where + (k,)] for k in STATE_KEYS}, target)
      flat.update({where + (k,): v for k, v in new.items()})
  return traverse_util.unflatten_dict(flat)


# -- the layer ------------------------------------------------------------------------------------

# Collections: the quantizers' state (shared by every resolution), a forward pass's refit targets.
QUANTIZERS = 'quantizers'
QUANTIZER_TARGETS = 'quantizer_targets'


class Quantizer(nn.Module):
  """An LQ-Nets quantizer of `bits` bits for a kernel (`kind='weight'`) or activations
  (`kind='activation'`); state in QUANTIZERS, refit target sown into QUANTIZER_TARGETS[kind]."""
  bits: int
  kind: str

  @nn.compact
  def __call__(self, x):
    if self.kind == 'weight':
      init, quantize = init_weight_basis(self.bits, x.shape), quantize_weight
    else:
      init, quantize = init_activation_basis(self.bits), quantize_activation
    state = {name: self.variable(QUANTIZERS, name, lambda v=v: v).value
             for name, v in init_state(init).items()}
    y, target = quantize(x, state['basis'])
    if not self.is_initializing():
      self.sow(QUANTIZER_TARGETS, self.kind, target, reduce_fn=last, init_fn=lambda: None)
    return y.astype(x.dtype)
