"""The RS-Nets objective as pure functions of logits (resolutions ordered largest first).

    L = sum_s CE(z_s, y) + CE(z_0, y) + KD,   z_0 = sum_s softmax(alpha)_s * stop_gradient(z_s)

so alpha learns only from the ensemble's own cross-entropy, and

    KD('ens')         = sum_s KL(p_0 || p_s)
    KD('ens_topdown') = 2 / (S + 1) * [sum_s KL(p_0 || p_s) + sum_{t<s} KL(p_t || p_s)]

with temperature 1, teachers detached, KL summed over classes and averaged over the batch, exactly
as the reference code computes it.
"""
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

from rsnets_jax.errors import ConfigError

DISTILLATION = ('none', 'ens', 'ens_topdown')


def cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def ensemble_logits(logits: Sequence[jax.Array], alpha):
  weights = jax.nn.softmax(alpha.astype(jnp.float32))
  return sum(w * jax.lax.stop_gradient(z.astype(jnp.float32)) for w, z in zip(weights, logits))


def kl_divergence(teacher_logits, student_logits):
  """KL(p_teacher || p_student), the teacher detached; summed over classes, batch mean."""
  t = jax.lax.stop_gradient(jax.nn.log_softmax(teacher_logits.astype(jnp.float32)))
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32))
  return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


def kd_loss(logits: Sequence[jax.Array], ens_logits, distillation: str):
  if distillation not in DISTILLATION:
    raise ConfigError(f'distillation must be one of {DISTILLATION}, got {distillation!r}')
  if distillation == 'none':
    return jnp.float32(0.0)
  total = sum(kl_divergence(ens_logits, z) for z in logits)
  if distillation == 'ens':
    return total
  total += sum(kl_divergence(logits[t], logits[s]) for s in range(len(logits)) for t in range(s))
  return total * 2.0 / (len(logits) + 1)


def rs_loss(logits: Sequence[jax.Array], labels, alpha,
            distillation: str) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Total RS-Nets loss and its parts (`ce` per resolution, `ens_ce`, `kd`)."""
  ce = [cross_entropy(z, labels) for z in logits]
  ens = ensemble_logits(logits, alpha)
  ens_ce = cross_entropy(ens, labels)
  kd = kd_loss(logits, ens, distillation)
  total = sum(ce) + ens_ce + kd
  return total, {'ce': jnp.stack(ce), 'ens_ce': ens_ce, 'kd': kd, 'ens_logits': ens}
