"""The learning-rate and target-EMA schedules of the paper, as functions of the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Scalar = float | jax.Array


def warmup_cosine(step: Scalar, peak: float, warmup_steps: int, total_steps: int) -> jax.Array:
  """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0 at the end."""
  step = jnp.asarray(step, jnp.float32)
  warmup = peak * step / max(warmup_steps, 1)
  decay_steps = max(total_steps - warmup_steps, 1)
  progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
  cosine = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warmup_steps, warmup, cosine)


TAU_SCHEDULES = ("cosine", "constant")


def target_ema_decay(
  step: Scalar, tau_base: float, total_steps: int, schedule: str = "cosine"
) -> jax.Array:
  """τ_k = 1 - (1 - τ_base)(cos(πk/K) + 1)/2: from τ_base at k=0 up to 1 at k=K; with
  ``schedule="constant"`` τ_base at every step (the BYOL paper's Table 5a for τ = 0 and 1)."""
  if schedule == "constant":
    return jnp.full((), tau_base, jnp.float32)
  if schedule != "cosine":
    raise ValueError(f"Unknown tau schedule {schedule!r}; expected one of {TAU_SCHEDULES}.")
  progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
  return 1.0 - (1.0 - tau_base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def keeps_target(schedule: str, tau_base: float) -> bool:
  """Whether a target network of its own is needed: not when τ is 0 at every step, where the
  target is the online network itself."""
  return not (schedule == "constant" and tau_base == 0)


def scaled_learning_rate(base_lr: float, batch_size: int) -> float:
  """The paper's linear scaling rule: lr = base_lr * batch_size / 256."""
  return base_lr * batch_size / 256.0
