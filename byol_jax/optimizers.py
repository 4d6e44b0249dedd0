"""LARS in the order of the original BYOL code, composed of optax transforms.

The paper's rule per parameter tensor (biases and normalisation parameters excluded from both the
weight decay and the trust ratio):

    g <- g + wd * w                      (weight decay added to the gradient)
    g <- g * eta * ||w|| / ||g||         (trust ratio; 1 where either norm is 0)
    m <- momentum * m + g                (heavy-ball momentum on the adapted gradient)
    w <- w - lr * m

:func:`make` also builds plain SGD with momentum and AdamW (same weight-decay mask) and can give
the predictor a larger learning rate, a constant one, or none at all (frozen).

``optax.lars`` applies the learning rate *before* the momentum trace (``m <- momentum * m + lr *
g``), which differs from this rule whenever the learning rate changes between steps (the whole
warm-up and cosine decay). :func:`lars` keeps the paper's order.
"""

from __future__ import annotations

from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from byol_jax.config_base import OPTIMIZERS


def lars_mask(params: hk.Params) -> hk.Params:
  """True for parameters that get weight decay and trust-ratio scaling.

  Biases (``b``) and normalisation parameters (any module whose name contains ``norm``) are
  excluded, as in the paper.
  """
  return hk.data_structures.map(
    lambda module, name, value: not (name == "b" or "norm" in module.rsplit("/", 1)[-1]), params
  )


def scale_by_trust_ratio(trust_coefficient: float) -> optax.GradientTransformation:
  """Scales each update ``g`` by ``trust_coefficient * ||w|| / ||g||`` (1 where either is 0).

  ``optax.scale_by_trust_ratio`` with its defaults computes the same, but through a norm that
  stays differentiable at zero: each norm is taken twice, the second time of a copy with the
  tensor replaced by ones where its norm is zero, a pass over every parameter and update more
  (~1% of a ResNet-18 step on a CPU) that an optimiser, never differentiated, does not need.
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_trust_ratio needs the parameters: pass params to update().")

    def scale(g: jax.Array, w: jax.Array) -> jax.Array:
      w_norm, g_norm = jnp.linalg.norm(w), jnp.linalg.norm(g)
      positive = (w_norm > 0) & (g_norm > 0)
      ratio = jnp.where(positive, trust_coefficient * w_norm / jnp.where(positive, g_norm, 1), 1)
      return g * ratio.astype(g.dtype)

    return jax.tree.map(scale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def lars(
  learning_rate: float | Callable[[jax.Array], jax.Array],
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  trust_coefficient: float = 1e-3,
  mask: Callable[[hk.Params], hk.Params] = lars_mask,
) -> optax.GradientTransformation:
  """LARS with weight decay, in the original BYOL order (see the module docstring)."""
  trust_ratio = optax.masked(scale_by_trust_ratio(trust_coefficient), mask)
  return _momentum_sgd(learning_rate, weight_decay, momentum, mask, trust_ratio)


def _momentum_sgd(
  learning_rate: float | Callable[[jax.Array], jax.Array],
  weight_decay: float,
  momentum: float,
  mask: Callable[[hk.Params], hk.Params],
  *adapt: optax.GradientTransformation,
) -> optax.GradientTransformation:
  """``g + wd * w`` (masked), then ``adapt``, heavy-ball momentum and ``-lr``."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=mask),
    *adapt,
    optax.trace(decay=momentum, nesterov=False),
    optax.scale_by_learning_rate(learning_rate),
  )


def with_schedule_step(opt_state: optax.OptState, step: jax.Array) -> optax.OptState:
  """``opt_state`` with the learning-rate schedule's count set to ``step``.

  optax schedules read a count kept in the optimiser state (``ScaleByScheduleState``), which
  advances only when an update is applied; the training step also advances when a non-finite
  update is dropped, so the step is what the learning rate must follow. Adam's own count (its
  bias correction, which counts moment updates) is left as it is.
  """

  def is_schedule(s: object) -> bool:
    return isinstance(s, optax.ScaleByScheduleState)

  def set_count(s: object) -> object:
    return s._replace(count=jnp.asarray(step, s.count.dtype)) if is_schedule(s) else s

  return jax.tree.map(set_count, opt_state, is_leaf=is_schedule)


def predictor_mask(params: hk.Params) -> hk.Params:
  """True for the predictor's parameters (modules under ``predictor``)."""
  return hk.data_structures.map(lambda module, name, value: module.startswith("predictor"), params)


def _named(
  name: str,
  learning_rate: float | Callable[[jax.Array], jax.Array],
  weight_decay: float,
  momentum: float,
  trust_coefficient: float,
  mask: Callable[[hk.Params], hk.Params],
) -> optax.GradientTransformation:
  if name == "lars":
    return lars(learning_rate, weight_decay, momentum, trust_coefficient, mask)
  if name == "sgd":
    return _momentum_sgd(learning_rate, weight_decay, momentum, mask)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=momentum, weight_decay=weight_decay, mask=mask)
  raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")


def _predictor_or_rest(params: hk.Params) -> hk.Params:
  return hk.data_structures.map(
    lambda module, name, value: "predictor" if module.startswith("predictor") else "rest", params
  )


def make(
  name: str,
  learning_rate: float | Callable[[jax.Array], jax.Array],
  weight_decay: float = 0.0,
  momentum: float = 0.9,
  trust_coefficient: float = 1e-3,
  predictor_lr_multiplier: float = 1.0,
  mask: Callable[[hk.Params], hk.Params] = lars_mask,
  predictor_learning_rate: float | None = None,
  freeze_predictor: bool = False,
) -> optax.GradientTransformation:
  """The optimiser called ``name``; the predictor's updates are ``predictor_lr_multiplier`` times
  larger.

  * ``"lars"``: :func:`lars`.
  * ``"sgd"``: ``g + wd * w`` (masked), heavy-ball momentum, ``-lr`` (LARS without trust ratio).
  * ``"adamw"``: Adam (``momentum`` is b1) with decoupled weight decay ``lr * wd * w`` (masked).

  ``predictor_learning_rate`` (a constant) gives the predictor an optimiser of its own, the same
  kind at that learning rate, whatever schedule the rest follows (SimSiam's predictor "lr not
  decayed", its Table 1c). ``freeze_predictor`` zeroes the predictor's updates: it stays at its
  random initialisation (SimSiam's Table 1b).
  """
  args = (weight_decay, momentum, trust_coefficient, mask)
  opt = _named(name, learning_rate, *args)
  if predictor_learning_rate is not None:
    predictor_opt = _named(name, predictor_learning_rate, *args)
    opt = optax.multi_transform({"predictor": predictor_opt, "rest": opt}, _predictor_or_rest)
  if predictor_lr_multiplier != 1.0:
    opt = optax.chain(opt, optax.masked(optax.scale(predictor_lr_multiplier), predictor_mask))
  if freeze_predictor:
    opt = optax.chain(opt, optax.masked(optax.set_to_zero(), predictor_mask))
  return opt
