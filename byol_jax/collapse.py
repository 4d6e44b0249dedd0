"""Collapse signals of a pretraining run and the alarm that watches them.

Two signals, both over the global batch:

* ``projection_std`` (SimSiam, Chen & He 2021, section 4.1): the per-dimension standard deviation
  of the l2-normalised online projections, averaged over dimensions. Outputs spread over the
  sphere give about ``1 / sqrt(d)``; a collapse to one vector gives 0.
* ``effective_rank`` (RankMe, Garrido et al., ICML 2023): ``exp(H(p))`` with ``p`` the singular
  values of the online representations (the encoder's output) [N, D] divided by their sum and
  ``H`` the entropy: D for representations spread evenly over D directions, 1 for a collapse to
  one direction. Computed on the step's training views, on log steps only.

:class:`CollapseAlarm` warns once when either stays low for several log steps in a row, naming the
measured values and the usual causes; with ``stop=True`` it raises instead (the run's last
checkpoint is kept, see ``train.pretrain``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from byol_jax.errors import UserError

# RankMe's epsilon, added to the normalised singular values before the entropy.
_RANKME_EPS = 1e-7


def effective_rank(embeddings: jax.Array, axis_name: str | None = None) -> jax.Array:
  """RankMe of ``embeddings`` [N, D] (this device's rows; all devices' over ``axis_name``).

  The singular values are the square roots of the eigenvalues of the D x D Gram matrix
  ``Z^T Z``, a sum over examples: each device adds its rows' share (one ``psum`` of D x D
  numbers instead of gathering every row on every device).
  """
  z = embeddings.astype(jnp.float32)
  gram = z.T @ z
  if axis_name is not None:
    gram = jax.lax.psum(gram, axis_name)
  singular = jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(gram), 0.0))
  p = singular / jnp.maximum(jnp.sum(singular), 1e-30) + _RANKME_EPS
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


@dataclasses.dataclass
class CollapseAlarm:
  """Watches ``projection_std`` and ``effective_rank`` at each log step.

  The alarm fires when, for ``patience`` log steps in a row, the normalised spread
  ``projection_std * sqrt(projection_dim)`` (about 1 for well-spread outputs, 0 for a collapse)
  is below ``min_spread``, or the effective rank is below ``min_rank`` or ``min_rank_fraction``
  of its largest possible value ``max_rank`` (``min(global batch, representation dim)``),
  whichever is larger. Fires once per run. The thresholds are measured (BENCHMARKS.md,
  "Collapse alarm"): healthy runs keep a spread of 0.7-0.85; without a predictor and with
  a target that follows the online network, it falls below 0.25 within 30 steps.
  """

  projection_dim: int
  max_rank: int
  stop: bool = False
  patience: int = 3
  min_spread: float = 0.3
  min_rank: float = 2.0
  min_rank_fraction: float = 0.01
  _low_steps: int = 0
  fired: bool = False

  def observe(self, step: int, scalars: dict[str, float]) -> str | None:
    """The warning to print at ``step`` (once), None otherwise; raises UserError with ``stop``."""
    if self.fired or "effective_rank" not in scalars:
      return None
    spread = scalars["projection_std"] * math.sqrt(self.projection_dim)
    rank = scalars["effective_rank"]
    rank_floor = max(self.min_rank, self.min_rank_fraction * self.max_rank)
    low = spread < self.min_spread or rank < rank_floor
    self._low_steps = self._low_steps + 1 if low else 0
    if self._low_steps < self.patience:
      return None
    self.fired = True
    message = (
      f"the representation has collapsed by step {step}: projection_std "
      f"{scalars['projection_std']:.2g} ({spread:.2g} of the spread of well-spread outputs, "
      f"1/sqrt({self.projection_dim})) and effective rank {rank:.3g} of at most "
      f"{self.max_rank}, for {self.patience} log steps in a row. Usual causes: a learning rate "
      "too high (Adam above about 1e-3), no predictor or a predictor that learns too slowly "
      "(optim.predictor_lr_multiplier), a target that follows too fast or too slowly "
      "(optim.tau_base), augmentations too weak"
    )
    if self.stop:
      raise UserError(f"Stopped: {message}; the last checkpoint is kept (config.stop_on_collapse).")
    return f"warning: {message}."
