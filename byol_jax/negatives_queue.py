"""A queue of past target projections: extra negatives for the InfoNCE term (MoCo's memory).

He et al. 2020 (MoCo, Section 3.2) keep the keys of the last K examples in a first-in first-out
queue and contrast each query with all of them as well as with the current batch, so that the
number of negatives no longer depends on the batch size. Here the keys are the unit target
projections ψ of both views (``loss.infonce_queue`` = K rows, newest first) and the queries the
online predictions φ of the unified objective (``byol_jax/contrastive.py``); a departure from
BYOL's Eq. 6, whose negatives are the current global batch's only.

Every device holds the same queue: each step pushes the whole global batch's ψ (gathered from
every device of every host), so the copies stay equal as the parameters do. Rows of zeros are
slots not filled yet: they are not negatives. The queue carries no gradient: its keys are the
step's targets, under stop-gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def empty(size: int, dim: int) -> jax.Array:
  """A queue of ``size`` empty slots for ``dim``-dimensional keys."""
  return jnp.zeros((size, dim), jnp.float32)


def push(queue: jax.Array, keys: jax.Array) -> jax.Array:
  """``queue`` with ``keys`` (unit rows) in front and its oldest rows dropped; when there are more
  keys than slots, the first ``size`` keys fill it."""
  keys = keys.astype(queue.dtype)  # (the step's targets are already under stop-gradient)
  return jnp.concatenate([keys, queue], axis=0)[: queue.shape[0]]


def filled(queue: jax.Array) -> jax.Array:
  """A boolean per slot: whether it holds a key (a unit row) rather than zeros."""
  return jnp.any(queue != 0, axis=1)
