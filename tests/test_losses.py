"""The RS-Nets loss against a NumPy transcription of the reference formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsnets_jax.train import losses


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
  return -np.mean(np_log_softmax(z)[np.arange(len(y)), y])


def np_kl(t, s):  # KL(p_t || p_s), summed over classes, batch mean
  lt, ls = np_log_softmax(t), np_log_softmax(s)
  return np.mean(np.sum(np.exp(lt) * (lt - ls), -1))


def np_rs_loss(zs, y, alpha, mode):
  w = np.exp(alpha) / np.exp(alpha).sum()
  ens = sum(wi * z for wi, z in zip(w, zs))
  total = sum(np_ce(z, y) for z in zs) + np_ce(ens, y)
  if mode == 'none':
    return total
  kd = sum(np_kl(ens, z) for z in zs)
  if mode == 'ens_topdown':
    kd += sum(np_kl(zs[t], zs[s]) for s in range(len(zs)) for t in range(s))
    kd *= 2 / (len(zs) + 1)
  return total + kd


@pytest.fixture
def problem():
  rng = np.random.default_rng(0)
  zs = [rng.normal(0, 3, (8, 7)).astype(np.float32) for _ in range(5)]
  y = rng.integers(0, 7, 8).astype(np.int32)
  alpha = rng.normal(0, 1, 5).astype(np.float32)
  return zs, y, alpha


@pytest.mark.parametrize('mode', ['none', 'ens', 'ens_topdown'])
def test_loss_matches_numpy(problem, mode):
  zs, y, alpha = problem
  total, parts = losses.rs_loss([jnp.asarray(z) for z in zs], jnp.asarray(y), jnp.asarray(alpha), mode)
  np.testing.assert_allclose(total, np_rs_loss(zs, y, alpha, mode), rtol=1e-5)
  np.testing.assert_allclose(parts['ce'], [np_ce(z, y) for z in zs], rtol=1e-5)


def kd_loss(logits, ens, distillation):
  """The KD term of a distillation mode (0 when it does not distil)."""
  mode = losses.distillation_mode(distillation)
  return mode.kd(logits, ens) if mode.kd is not None else jnp.float32(0.0)


def test_kd_parts(problem):
  zs, y, alpha = problem
  zs = [jnp.asarray(z) for z in zs]
  ens = losses.ensemble_logits(zs, jnp.asarray(alpha))
  vanilla = float(kd_loss(zs, ens, 'ens'))
  full = float(kd_loss(zs, ens, 'ens_topdown'))
  topdown = sum(np_kl(np.asarray(zs[t]), np.asarray(zs[s])) for s in range(5) for t in range(s))
  np.testing.assert_allclose(full, (vanilla + topdown) * 2 / 6, rtol=1e-5)
  assert float(kd_loss(zs, ens, 'none')) == 0.0
  with pytest.raises(ValueError, match='distillation'):
    kd_loss(zs, ens, 'topdown')


@pytest.mark.parametrize('mode', ['none', 'ens', 'ens_topdown'])
def test_alpha_learns_only_from_ensemble_ce(problem, mode):
  zs, y, alpha = problem
  zs, y, alpha = [jnp.asarray(z) for z in zs], jnp.asarray(y), jnp.asarray(alpha)
  g_total = jax.grad(lambda a: losses.rs_loss(zs, y, a, mode)[0])(alpha)
  g_ens = jax.grad(lambda a: losses.cross_entropy(losses.ensemble_logits(zs, a), y))(alpha)
  np.testing.assert_allclose(g_total, g_ens, rtol=1e-6, atol=1e-7)
  assert np.abs(g_ens).max() > 1e-4
  # The ensemble term sends no gradient into the students' logits.
  g_logits = jax.grad(lambda z: losses.cross_entropy(losses.ensemble_logits(z, alpha), y))(zs)
  assert all(float(jnp.abs(g).max()) == 0 for g in g_logits)


def test_teachers_are_detached(problem):
  zs, y, alpha = problem
  zs = [jnp.asarray(z) for z in zs]
  # KL(p_t || p_s): the gradient reaches only the student (the smaller resolution s).
  g = jax.grad(lambda z: kd_loss(z, losses.ensemble_logits(z, jnp.asarray(alpha)),
                                        'ens_topdown'))(zs)
  g_student = jax.grad(lambda s: losses.kl_divergence(zs[0], s))(zs[1])
  g_teacher = jax.grad(lambda t: losses.kl_divergence(t, zs[1]))(zs[0])
  assert float(jnp.abs(g_teacher).max()) == 0 and float(jnp.abs(g_student).max()) > 0
  assert all(float(jnp.abs(gi).max()) > 0 for gi in g)
