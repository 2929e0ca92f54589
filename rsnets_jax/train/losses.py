"""The RS-Nets objective as pure functions of logits (resolutions ordered largest first).

    L = sum_s CE(z_s, y) + CE(z_0, y) + KD,   z_0 = sum_s softmax(alpha)_s * stop_gradient(z_s)

so alpha learns only from the ensemble's own cross-entropy, and

    KD('ens')         = sum_s KL(p_0 || p_s)
    KD('ens_topdown') = 2 / (S + 1) * [sum_s KL(p_0 || p_s) + sum_{t<s} KL(p_t || p_s)]

with temperature 1, teachers detached, KL summed over classes and averaged over the batch, exactly
as the reference code computes it. A size trained between the resolutions (`between_resolutions`,
not the paper's) adds `between_loss`: its CE, and KL(p_0 || p_between) when the mode distils.
"""
import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from rsnets_jax.errors import require


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


def ensemble_kd(logits: Sequence[jax.Array], ens_logits):
  """The ensemble teaches every resolution: sum_s KL(p_0 || p_s)."""
  return sum(kl_divergence(ens_logits, z) for z in logits)


def ensemble_topdown_kd(logits: Sequence[jax.Array], ens_logits):
  """The ensemble and every larger resolution teach each resolution, scaled by 2 / (S + 1)."""
  total = ensemble_kd(logits, ens_logits)
  total += sum(kl_divergence(logits[t], logits[s]) for s in range(len(logits)) for t in range(s))
  return total * 2.0 / (len(logits) + 1)


@dataclasses.dataclass(frozen=True)
class Distillation:
  """A distillation mode (`config.distillation`): its KD term (None: no distillation) and the
  parts of the loss it reports beside the per-resolution cross-entropies, which the step's
  metrics, the progress line and TensorBoard list."""
  name: str
  kd: Optional[Callable[[Sequence[jax.Array], jax.Array], jax.Array]]

  @property
  def parts(self) -> Tuple[str, ...]:
    return ('ens_ce',) if self.kd is None else ('ens_ce', 'kd')


DISTILLATIONS = {d.name: d for d in (
    Distillation('none', None),
    Distillation('ens', ensemble_kd),
    Distillation('ens_topdown', ensemble_topdown_kd),  # the published RS-Nets
)}


def check_config(distillation: str):
  require(distillation in DISTILLATIONS, 'distillation', distillation,
          f'one of {tuple(DISTILLATIONS)}')


def distillation_mode(name: str) -> Distillation:
  check_config(name)
  return DISTILLATIONS[name]


def rs_loss(logits: Sequence[jax.Array], labels, alpha,
            distillation: str) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Total RS-Nets loss, and its parts: `ce` per resolution, the mode's `parts` (`ens_ce`, and
  `kd` when it distils) and the ensemble's logits `ens_logits`."""
  mode = distillation_mode(distillation)
  ce = [cross_entropy(z, labels) for z in logits]
  ens = ensemble_logits(logits, alpha)
  parts = {'ens_ce': cross_entropy(ens, labels)}
  total = sum(ce) + parts['ens_ce']
  if mode.kd is not None:
    parts['kd'] = mode.kd(logits, ens)
    total = total + parts['kd']
  return total, {'ce': jnp.stack(ce), **parts, 'ens_logits': ens}


def between_loss(logits, labels, ens_logits, distillation: str):
  """The loss of a size trained between the resolutions: a student outside the ensemble, taught
  by it (when the mode distils) and by the labels."""
  mode = distillation_mode(distillation)
  loss = cross_entropy(logits, labels)
  if mode.kd is not None:
    loss = loss + kl_divergence(ens_logits, logits)
  return loss
