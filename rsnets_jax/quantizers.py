"""LQ-Nets learned quantizers (Zhang et al., ECCV 2018), as the RS-Nets reference trains them.

A quantizer with `nbit` bits has a basis v (one per output channel for weights, one per layer for
activations) and maps x to the nearest of the 2^nbit levels codes @ v, where the codes are every
nbit-bit pattern with bits in {-1, +1} (weights) or {0, 1} (activations). After each use the basis
is refitted by one least-squares step (the codes of the current assignment fixed) and moved towards
that solution by a zero-debiased moving average. Everything here is a pure function; the state of
one quantizer is a dict {'basis', 'biased', 'step'}; 32 bits means no quantization.

The facts and their line references into the reference code: ../shared/docs/quantization.md,
section 1. Where the reference does something surprising it is kept, and named where it happens.
"""
from typing import Dict, Tuple

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from rsnets_jax.errors import ConfigError

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
  """(nbit, Cout): levels 0.6745 * sqrt(2 / n) * {-1.5, -0.5, 0.5, 1.5} for 2 bits, n the fan-out
  k * k * Cout of the HWIO kernel (the He-normal scale the reference initialises kernels with)."""
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
  """The levels of each channel in ascending order, (L, C), and the code of each, (L, C, nbit).

  Equal levels are ordered as TF's top_k-then-reverse orders them: the higher code index first."""
  nbit = codes.shape[1]
  # A sum in bit order, so that every caller gets the same float32 levels (and thresholds).
  levels = sum(codes[:, j, None] * basis[j][None, :] for j in range(nbit))
  num = codes.shape[0]
  # A stable ascending sort of the reversed list puts the higher index first among equals.
  order = num - 1 - jnp.argsort(levels[::-1], axis=0, stable=True)
  return jnp.take_along_axis(levels, order, axis=0), jnp.asarray(codes)[order]


def _assign(x, levels, codes, zero_bin: bool):
  """Each element's level and code, (N, C) and (N, C, nbit), for x (N, C): the level above every
  threshold (midpoint of adjacent levels) that x is strictly greater than, so that a tie goes to
  the lower level. The chain of selects is the reference's own (LQ:73-82, 204-213), exact in
  float32."""
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
  """Per channel, gram (C, nbit, nbit)^-1 @ rhs (C, nbit), by the reference's formulas where it
  has them (reciprocal, 2x2 adjugate) and a linear solve above."""
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
  """(quantized kernel, refit target) for an HWIO kernel and its (nbit, Cout) basis.

  The gradient passes straight through to the kernel (LQ:267); the target is the ridge
  least-squares basis of the unclipped kernel (LQ:219-260)."""
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
  """(quantized x, refit target) for activations x and the layer's (nbit, 1) basis.

  The gradient is 1 where x <= the top level, ties included (TF's minimum, LQ:118-119), else 0.
  The target (no ridge, LQ:85-106) is not finite when a bit is never set; `update_state` then
  keeps the state as it is."""
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
  """One zero-debiased moving-average step towards `target` (TF's assign_moving_average):
  biased <- biased - 0.1 (biased - target); step <- step + 1; basis <- biased / (1 - 0.9^step).
  The first update therefore replaces the initial basis. A non-finite target changes nothing."""
  decay = jnp.float32(1.0 - MOVING_AVERAGE)
  biased = state['biased'] - (state['biased'] - target) * decay
  step = state['step'] + 1
  basis = biased / (1.0 - jnp.power(jnp.float32(1.0) - decay, step.astype(jnp.float32)))
  ok = jnp.all(jnp.isfinite(target))
  return {'basis': jnp.where(ok, basis, state['basis']),
          'biased': jnp.where(ok, biased, state['biased']),
          'step': jnp.where(ok, step, state['step'])}


def fold_targets(states, targets_by_resolution, activations_from_largest_only: bool = False):
  """Every quantizer's state after one moving-average update per resolution, in the order given
  (the train step passes the largest resolution first), as the reference's S update ops per step.

  `states` is a network's tree of quantizer states ({..., 'basis', 'biased', 'step'} at each
  quantizer's path); each element of `targets_by_resolution` is the tree of refit targets one
  resolution's forward pass sowed, a target at `<quantizer path>/<kind>` with kind 'weight' or
  'activation'. `activations_from_largest_only` updates activation bases from the first
  resolution only (the reference's --fixed_qa).
  """
  flat = traverse_util.flatten_dict(states)
  for i, targets in enumerate(targets_by_resolution):
    for path, target in traverse_util.flatten_dict(targets).items():
      where, kind = path[:-1], path[-1]
      if kind == 'activation' and activations_from_largest_only and i:
        continue
      new = update_state({k: flat[where + (k,)] for k in STATE_KEYS}, target)
      flat.update({where + (k,): v for k, v in new.items()})
  return traverse_util.unflatten_dict(flat)
