"""The BYOL paper's unified objective: BYOL's loss plus InfoNCE negatives over the global batch.

Section 5 (Eq. 6) of Grill et al. 2020 writes BYOL and SimCLR as one objective to maximise,

    InfoNCE(α, β) = 2/B Σ_i S(v_i, v'_i)
                    - β 2α/B Σ_i ln( Σ_{j≠i} exp(S(v_i, v_j)/α) + Σ_j exp(S(v_i, v'_j)/α) ),

with S(u1, u2) the cosine of φ(u1) (the online prediction, or projection without a predictor)
and ψ(u2) (the target projection, or the online one without a target network). Since
``2 - 2 S`` is BYOL's per-pair loss, minimising ``losses.byol_loss`` plus :func:`infonce_term`
minimises ``2 - InfoNCE(α, β)`` per direction: β = 0 is BYOL exactly, and β = 1 with no predictor
and the online network as an un-stopped target (``loss.stop_gradient=False``) is SimCLR's NT-Xent
scaled by 2α (the paper's Appendix F.5). The sums over j run over the whole global batch: ψ is
gathered from every device of every host (``all_gather``, whose gradient flows back to the
device that computed each ψ). The loss is symmetrised as BYOL's is (v and v' swapped, added).
With a queue of past ψ (``byol_jax/negatives_queue.py``, ``loss.infonce_queue``) its keys are
negatives of every anchor too, added to the denominator's sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from byol_jax import losses, negatives_queue


def _unit(x: jax.Array) -> jax.Array:
  # In at least float32 (the heads may compute in bfloat16): exp(S / α) spans a wide range.
  return losses.l2_normalize(x.astype(jnp.promote_types(x.dtype, jnp.float32)))


def _gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """``x`` of every device stacked in device order (this device's rows, outside ``pmap``)."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def global_unit_targets(target_proj: jax.Array, axis_name: str | None) -> jax.Array:
  """The unit ψ of one view over the whole global batch, in device order: the negatives of the
  batch, and the keys a step adds to the queue (``negatives_queue``)."""
  return _gather(_unit(target_proj), axis_name)


def log_denominators(
  anchors: jax.Array,
  same_view: jax.Array,
  other_view: jax.Array,
  positions: jax.Array,
  temperature: float,
  queue: jax.Array | None = None,
) -> jax.Array:
  """Per anchor i: ln( Σ_{j≠i} exp(S(v_i, v_j)/α) + Σ_j exp(S(v_i, v'_j)/α) ) over the global
  batch; ``anchors`` are this device's unit φ(v), at ``positions`` of the global batch, and
  ``same_view``, ``other_view`` the whole global batch's unit ψ(v), ψ(v'). With ``queue``, the
  sum also runs over its filled slots: + Σ_k exp(φ(v_i)·q_k/α)."""
  same = anchors @ same_view.T / temperature
  # The anchor's own ψ of the same view is not a negative.
  own = positions[:, None] == jnp.arange(same_view.shape[0])[None, :]
  same = jnp.where(own, -jnp.inf, same)
  other = anchors @ other_view.T / temperature
  logits = [same, other]
  if queue is not None:
    past = anchors @ queue.T / temperature
    logits.append(jnp.where(negatives_queue.filled(queue)[None, :], past, -jnp.inf))
  return jax.nn.logsumexp(jnp.concatenate(logits, axis=1), axis=1)


def infonce_term(
  online_pred_1: jax.Array,
  online_pred_2: jax.Array,
  target_proj_1: jax.Array,
  target_proj_2: jax.Array,
  spec: losses.LossSpec,
  axis_name: str | None,
  queue: jax.Array | None = None,
) -> jax.Array:
  """β 2α mean_i ln(denominator_i), summed over both directions when ``spec.symmetric``: what the
  unified objective adds to ``losses.byol_loss`` (a mean over this device's examples; the
  update's mean over devices makes it the global batch's). Each view's ψ is gathered once and
  serves both directions; ``queue`` (unit past ψ, zero rows empty) adds negatives to both."""
  if spec.stop_gradient:
    target_proj_1, target_proj_2 = jax.lax.stop_gradient((target_proj_1, target_proj_2))
  alpha = spec.infonce_temperature
  psi_1, psi_2 = (global_unit_targets(z, axis_name) for z in (target_proj_1, target_proj_2))
  n = online_pred_1.shape[0]
  start = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  positions = start + jnp.arange(n)
  term = jnp.mean(log_denominators(_unit(online_pred_1), psi_1, psi_2, positions, alpha, queue))
  if spec.symmetric:
    term += jnp.mean(log_denominators(_unit(online_pred_2), psi_2, psi_1, positions, alpha, queue))
  return spec.infonce_weight * 2.0 * alpha * term
