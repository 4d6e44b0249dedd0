"""The BYOL loss against a numpy re-derivation of its value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses


def _np_loss(p, t):
  cos = np.sum(p * t, -1) / (np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1))
  return 2 - 2 * cos


def _np_grad(p, t):
  """d/dp of mean_i (2 - 2 cos(p_i, t_i)), derived by hand."""
  pn = np.linalg.norm(p, axis=-1, keepdims=True)
  tn = np.linalg.norm(t, axis=-1, keepdims=True)
  dot = np.sum(p * t, -1, keepdims=True)
  return -2 * (t / (pn * tn) - dot * p / (pn**3 * tn)) / p.shape[0]


def test_regression_loss_value_and_gradient():
  rng = np.random.default_rng(0)
  p, t = rng.normal(size=(2, 16, 8))
  np.testing.assert_allclose(losses.regression_loss(p, t), _np_loss(p, t), rtol=1e-5, atol=1e-6)
  grad_p, grad_t = jax.grad(lambda a, b: jnp.mean(losses.regression_loss(a, b)), argnums=(0, 1))(
    jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32)
  )
  np.testing.assert_allclose(grad_p, _np_grad(p, t), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(grad_t, 0.0)  # stop-gradient on the target


def test_byol_loss_is_symmetrised_and_bounded():
  rng = np.random.default_rng(1)
  p1, p2, t1, t2 = rng.normal(size=(4, 32, 8)).astype(np.float32)
  expected = _np_loss(p1, t2).mean() + _np_loss(p2, t1).mean()
  np.testing.assert_allclose(losses.byol_loss(p1, p2, t1, t2), expected, rtol=1e-5)
  assert float(losses.byol_loss(t2, t1, t1, t2)) < 1e-5  # perfect predictions
  assert abs(float(losses.byol_loss(-t2, -t1, t1, t2)) - 8.0) < 1e-5  # opposite ones


def test_l2_normalize_handles_zero_vectors():
  out = losses.l2_normalize(jnp.zeros((2, 4)))
  assert np.all(np.isfinite(out))
