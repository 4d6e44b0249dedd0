"""BYOL's normalised regression loss and the variants its ablations and SimSiam's swap in.

The paper's loss is :func:`regression_loss` (``2 - 2 cos``) symmetrised by :func:`byol_loss`.
:class:`LossSpec` names the departures a configuration can ask for: SimSiam's cross-entropy
similarity and asymmetric loss (Chen & He 2020, Sections 4.5 and 4.6), no stop-gradient on the
target when the target is the online network itself (SimSiam's Figure 2, BYOL's Table 19), and
the BYOL paper's unified objective with InfoNCE negatives (``byol_jax/contrastive.py``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SIMILARITIES = ("cosine", "cross_entropy")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """How a prediction is compared with its target; the defaults are BYOL's loss."""

  similarity: str = "cosine"  # or "cross_entropy" (SimSiam, Section 4.5)
  symmetric: bool = True  # False: only view 1's prediction against view 2's target
  # False lets gradients reach the target too; only meaningful when the target is the online
  # network itself (a constant τ of 0), whose parameters the gradient then updates twice.
  stop_gradient: bool = True
  # β and α of the BYOL paper's unified objective (Section 5, Eq. 6): β = 0 is BYOL's loss.
  infonce_weight: float = 0.0
  infonce_temperature: float = 0.1
  # Past target projections kept as further negatives (``byol_jax/negatives_queue.py``; 0: none).
  infonce_queue: int = 0


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
  """``x / ||x||`` along ``axis``; the norm is floored at sqrt(epsilon) so zeros stay finite."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, epsilon))


def regression_loss(prediction: jax.Array, target: jax.Array, stop_gradient: bool = True):
  """Per-example ``2 - 2 cos(prediction, target)``; gradients stop at ``target`` unless told."""
  if stop_gradient:
    target = jax.lax.stop_gradient(target)
  cos = jnp.sum(l2_normalize(prediction) * l2_normalize(target), axis=-1)
  return 2.0 - 2.0 * cos


def cross_entropy_loss(prediction: jax.Array, target: jax.Array, stop_gradient: bool = True):
  """Per-example ``-softmax(target) . log softmax(prediction)`` over the channels: SimSiam's
  cross-entropy similarity (Section 4.5); gradients stop at ``target`` unless told."""
  if stop_gradient:
    target = jax.lax.stop_gradient(target)
  return -jnp.sum(jax.nn.softmax(target) * jax.nn.log_softmax(prediction), axis=-1)


def pair_loss(prediction: jax.Array, target: jax.Array, spec: LossSpec) -> jax.Array:
  """Per-example loss of a prediction against its target under ``spec``'s similarity."""
  if spec.similarity not in SIMILARITIES:
    raise ValueError(f"Unknown similarity {spec.similarity!r}; expected one of {SIMILARITIES}.")
  fn = regression_loss if spec.similarity == "cosine" else cross_entropy_loss
  return fn(prediction, target, spec.stop_gradient)


def byol_loss(
  online_pred_1: jax.Array,
  online_pred_2: jax.Array,
  target_proj_1: jax.Array,
  target_proj_2: jax.Array,
  spec: LossSpec = LossSpec(),
) -> jax.Array:
  """The symmetrised loss: view 1's prediction regresses view 2's target projection and back.

  Each term is averaged over the batch and the two are added, so the (cosine) loss lies in
  [0, 8]; with ``spec.symmetric=False`` only the first term.
  """
  loss = jnp.mean(pair_loss(online_pred_1, target_proj_2, spec))
  if spec.symmetric:
    loss += jnp.mean(pair_loss(online_pred_2, target_proj_1, spec))
  return loss
