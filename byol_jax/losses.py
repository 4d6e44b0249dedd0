"""BYOL's normalised regression loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
  """``x / ||x||`` along ``axis``; the norm is floored at sqrt(epsilon) so zeros stay finite."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, epsilon))


def regression_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example ``2 - 2 cos(prediction, target)``; gradients stop at ``target``."""
  target = jax.lax.stop_gradient(target)
  cos = jnp.sum(l2_normalize(prediction) * l2_normalize(target), axis=-1)
  return 2.0 - 2.0 * cos


def byol_loss(
  online_pred_1: jax.Array,
  online_pred_2: jax.Array,
  target_proj_1: jax.Array,
  target_proj_2: jax.Array,
) -> jax.Array:
  """The symmetrised loss: view 1's prediction regresses view 2's target projection and back.

  Each term is averaged over the batch and the two are added, so the loss lies in [0, 8].
  """
  return jnp.mean(regression_loss(online_pred_1, target_proj_2)) + jnp.mean(
    regression_loss(online_pred_2, target_proj_1)
  )
