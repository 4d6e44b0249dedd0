"""The BYOL algorithm: training state, initialisation and the pure update step.

:func:`make_update_fn` returns ``update(state, batch, rng) -> (state, metrics)``, a pure function
meant to run under ``jax.pmap`` with a named device axis: gradients, metrics and BatchNorm
statistics are averaged over that axis, which spans every device of every host. Randomness comes
from ``rng`` folded with the step, so the same seed gives the same run.

Where the paper's equations are: the normalised-prediction loss and its symmetrisation
(``losses.byol_loss``), computed in :func:`batch_gradients` with the target under stop-gradient;
the target update ξ <- τ ξ + (1 - τ) θ (:func:`target_ema`) with τ annealed by
``schedules.target_ema_decay``; the optimiser step (LARS, ``optimizers``) on the warm-up + cosine
learning rate (``schedules.warmup_cosine``), all composed in :func:`make_update_fn`.

The ablations of the BYOL and SimSiam papers change one of these pieces each (``ByolHParams``):
the loss (``losses.LossSpec``; the unified InfoNCE objective in ``contrastive``, past targets as
further negatives in ``negatives_queue``), a constant τ,
and with a constant τ of 0 no target network at all: the online network's own projections under
stop-gradient are the targets (SimSiam), and no second copy of the parameters is kept.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from byol_jax import (
  collapse,
  contrastive,
  losses,
  models,
  negatives_queue,
  optimizers,
  parallel,
  schedules,
)
from byol_jax.data import device_augment, device_crop

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# Keeps the crop-and-flip keys of the device pipeline apart from the colour keys of each view.
_CROP_TAG = 0xC209


class TrainState(NamedTuple):
  """Everything a pretraining run carries from one step to the next."""

  step: jax.Array  # int32 scalar: number of updates done
  online_params: hk.Params
  online_state: hk.State
  target_params: hk.Params
  target_state: hk.State
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32 scalar: updates dropped for a non-finite loss or update
  # {"keys": [K, d]}: the past target projections of ``negatives_queue`` (K =
  # ``loss.infonce_queue``); {} without a queue.
  queue: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ByolHParams:
  """The algorithm's hyperparameters, resolved to steps and absolute values."""

  peak_lr: float
  total_steps: int
  warmup_steps: int
  tau_base: float = 0.996
  weight_decay: float = 1.5e-6
  momentum: float = 0.9
  trust_coefficient: float = 1e-3
  optimizer: str = "lars"  # "lars" | "sgd" | "adamw"
  predictor_lr_multiplier: float = 1.0
  # False: the predictor keeps its peak learning rate (times the multiplier) at every step.
  predictor_lr_decay: bool = True
  freeze_predictor: bool = False  # the predictor stays at its random initialisation
  tau_schedule: str = "cosine"  # or "constant": τ = tau_base throughout
  loss: losses.LossSpec = dataclasses.field(default_factory=losses.LossSpec)
  # Drop an update whose loss or gradient is not finite, or whose result (parameters, BatchNorm
  # statistics, target, optimiser state) is not, instead of applying it.
  skip_nonfinite: bool = False

  @property
  def separate_target(self) -> bool:
    """Whether a target network of its own is kept (``schedules.keeps_target``)."""
    return schedules.keeps_target(self.tau_schedule, self.tau_base)


def make_optimizer(hp: ByolHParams) -> optax.GradientTransformation:
  """``hp.optimizer`` (LARS in the paper's order by default) with the warm-up + cosine learning
  rate; the predictor's updates are scaled by ``hp.predictor_lr_multiplier``."""
  return optimizers.make(
    hp.optimizer,
    learning_rate=lambda count: schedules.warmup_cosine(
      count, hp.peak_lr, hp.warmup_steps, hp.total_steps
    ),
    weight_decay=hp.weight_decay,
    momentum=hp.momentum,
    trust_coefficient=hp.trust_coefficient,
    predictor_lr_multiplier=hp.predictor_lr_multiplier,
    predictor_learning_rate=None if hp.predictor_lr_decay else hp.peak_lr,
    freeze_predictor=hp.freeze_predictor,
  )


def init_state(
  network: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  rng: jax.Array,
  dummy_images: jax.Array,
  separate_target: bool = True,
  queue_size: int = 0,
) -> TrainState:
  """Initial state; the target starts as a copy of the online encoder and projector (none
  without ``separate_target``: empty target parameters and state). ``queue_size`` > 0 adds an
  empty queue of negatives (``negatives_queue``) as wide as the projections."""
  online_params, online_state = network.init(rng, dummy_images, is_training=True)
  queue = {}
  if queue_size:
    out = jax.eval_shape(
      lambda: network.apply(online_params, online_state, dummy_images, is_training=True)[0]
    )
    queue = {"keys": negatives_queue.empty(queue_size, out["projection"].shape[-1])}
  _, target_params = models.split_predictor(online_params)
  _, target_state = models.split_predictor(online_state)
  if not separate_target:
    target_params, target_state = {}, {}
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    online_params=online_params,
    online_state=online_state,
    target_params=jax.tree.map(jnp.copy, target_params),
    target_state=jax.tree.map(jnp.copy, target_state),
    opt_state=optimizer.init(online_params),
    skipped_steps=jnp.zeros((), jnp.int32),
    queue=queue,
  )


def _all_finite(tree) -> jax.Array:
  """A boolean scalar: whether every floating-point value in ``tree`` is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _global_std(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Mean over dimensions of the per-dimension std of ``x`` over the whole (global) batch."""
  mean = jnp.mean(x, axis=0)
  mean_sq = jnp.mean(jnp.square(x), axis=0)
  if axis_name is not None:
    mean, mean_sq = jax.lax.pmean((mean, mean_sq), axis_name)
  return jnp.mean(jnp.sqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0)))


def _probe_metrics(
  logits: jax.Array, labels: jax.Array, axis_name: str | None
) -> dict[str, jax.Array]:
  """Masked cross-entropy and top-1 of the online probe over the global batch (label -1: none)."""
  valid = labels >= 0
  safe = jnp.where(valid, labels, 0)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), safe[:, None], axis=1)[:, 0]
  correct = (jnp.argmax(logits, axis=1) == safe) & valid
  sums = jnp.stack([jnp.sum(jnp.where(valid, ce, 0.0)), jnp.sum(correct), jnp.sum(valid)])
  # Sum over devices first, so that the loss is a mean over the labelled examples of the global
  # batch; the caller's pmean of gradients then divides by the device count, undone here.
  n_dev = 1
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
    n_dev = jax.lax.psum(1, axis_name)
  count = jnp.maximum(sums[2], 1.0)
  local_ce = jnp.sum(jnp.where(valid, ce, 0.0)) / count * n_dev
  return dict(
    probe_loss=local_ce + jax.lax.stop_gradient(sums[0] / count - local_ce),
    probe_train_top1=jax.lax.stop_gradient(sums[1] / count),
  )


def _per_image_colour_ops(
  images: jax.Array, keys: jax.Array, params: device_augment.AugmentParams
) -> jax.Array:
  return jax.vmap(lambda img, k: device_augment.colour_augment(img[None], k, params)[0])(
    images, keys
  )


def _example_keys(
  key: jax.Array, n: int, share: int, start: int | jax.Array, axis_name: str | None
) -> jax.Array:
  """[n, 2] keys (one per view) of the examples of a (micro-)batch, from their positions in the
  global batch, so that the views do not depend on how the batch is spread over devices or split
  into micro-batches. They are threefry keys whatever the default PRNG: threefry's bits are the
  same under any vmap batching, "rbg"'s are not."""
  offset = start if axis_name is None else jax.lax.axis_index(axis_name) * share + start
  base = jax.random.wrap_key_data(
    jnp.ravel(jax.random.key_data(key))[:2].astype(jnp.uint32), impl="threefry2x32"
  )
  return jax.vmap(lambda i: jax.random.split(jax.random.fold_in(base, i)))(offset + jnp.arange(n))


def prepare_views(
  views: tuple[jax.Array, jax.Array],
  key: jax.Array,
  device_colour_ops: tuple[device_augment.AugmentParams, device_augment.AugmentParams] | None,
  axis_name: str | None,
  share: int | None = None,
  start: int | jax.Array = 0,
  crop_size: int = 0,
) -> tuple[jax.Array, jax.Array]:
  """The two normalised views of a (micro-)batch, with the colour ops applied here if they are
  given. ``share`` is this device's part of the global batch (default: these views) and
  ``start`` the position of these views' first example in it. With ``crop_size`` (the device
  pipeline) ``views`` are whole images, which get the random resized crop to ``crop_size`` and
  the flip here first."""
  if device_colour_ops is None:
    if crop_size:
      raise ValueError("Cropping on the device needs the views' parameters (device_colour_ops).")
    return tuple(device_augment.normalize(device_augment.to_float(v)) for v in views)
  n = views[0].shape[0]
  keys = _example_keys(key, n, n if share is None else share, start, axis_name)
  out = []
  for view, view_keys, params in zip(views, (keys[:, 0], keys[:, 1]), device_colour_ops):
    if crop_size:
      crop_keys = jax.vmap(lambda k: jax.random.fold_in(k, _CROP_TAG))(view_keys)
      view = device_crop.crop_and_flip_batch(view, crop_keys, params, crop_size)
    view = _per_image_colour_ops(device_augment.to_float(view), view_keys, params)
    out.append(device_augment.normalize(view))
  return out[0], out[1]


def _labels(batch: Batch, size: int) -> jax.Array:
  """The batch's labels for the online probe; -1 (none) for unlabelled data."""
  labels = batch.get("label")
  return -jnp.ones([size], jnp.int32) if labels is None else labels


def _forward(network, params, net_state, views, with_predictor):
  """Outputs of each view; each view is its own pass, so BatchNorm statistics are per view, as
  in the original."""
  outs = []
  for v in views:
    out, net_state = network.apply(
      params, net_state, v, is_training=True, with_predictor=with_predictor
    )
    outs.append(out)
  return outs, net_state


def _online_loss(
  network, axis_name, spec, queue, online_params, online_state, views, target_projections, labels
):
  """The symmetrised BYOL loss of the online predictions against the target projections (None:
  the online projections themselves, as SimSiam's, stopped if ``spec.stop_gradient``), with the
  InfoNCE negatives of the batch and of ``queue`` (None: none) when ``spec.infonce_weight``."""
  (out_1, out_2), online_state = _forward(network, online_params, online_state, views, True)
  if target_projections is None:
    target_projections = (out_1["projection"], out_2["projection"])
  predictions = (out_1["prediction"], out_2["prediction"])
  loss = losses.byol_loss(*predictions, *target_projections, spec)
  if spec.infonce_weight:
    loss += contrastive.infonce_term(*predictions, *target_projections, spec, axis_name, queue)
  probe = {}
  total = loss
  if "logits" in out_1:
    # The online probe (as in the original code): cross-entropy on view 1's stop-gradient
    # embedding, only for labelled examples; it trains the probe and nothing else.
    probe = _probe_metrics(out_1["logits"], labels, axis_name)
    total = loss + probe["probe_loss"]
  keys = jax.lax.stop_gradient(tuple(target_projections))
  return total, (online_state, (out_1["projection"], out_1["embedding"], keys), loss, probe)


def batch_gradients(
  network, axis_name, spec, state: TrainState, bn_states, raw_views, labels, prepare
):
  """Gradients and metrics of one (micro-)batch, and the (online, target) BatchNorm states after.

  ``prepare`` turns the input's two views into the network's (:func:`prepare_views`), here, so
  that an accumulated step holds one micro-batch of them at a time, not the whole batch.
  ``spec`` is the loss (``losses.LossSpec``). Without target parameters (a constant τ of 0) the
  targets are the online projections of the same forward pass.
  Returns ``(grads, (loss, probe metrics, (online projections and embeddings of view 1, the
  targets of both views)), bn_states)``.
  """
  views = prepare(raw_views)
  online_state, target_state = bn_states
  target_projections = None
  if state.target_params:
    # The target is evaluated outside the differentiated function: no gradient can reach it
    # and its activations are not kept for the backward pass.
    target_outs, target_state = _forward(network, state.target_params, target_state, views, False)
    target_projections = [jax.lax.stop_gradient(o["projection"]) for o in target_outs]
  loss_fn = functools.partial(_online_loss, network, axis_name, spec, state.queue.get("keys"))
  (_, (online_state, outputs, loss, probe)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.online_params, online_state, views, target_projections, labels
  )
  return grads, (loss, probe, outputs), (online_state, target_state)


def accumulated_gradients(
  gradients_fn, k: int, state: TrainState, bn_states, raw_views, labels, prepare
):
  """``gradients_fn`` (:func:`batch_gradients`) averaged over k micro-batches, scanned in
  sequence; the BatchNorm states pass from each micro-batch to the next. Each micro-batch's
  views are prepared in its own iteration, from its examples' positions in the batch."""
  m = labels.shape[0] // k

  def split(x: jax.Array) -> jax.Array:
    return x.reshape(k, m, *x.shape[1:])

  def body(carry, micro):
    grad_sum, bn_states = carry
    v1, v2, micro_labels, start = micro
    micro_prepare = functools.partial(prepare, start=start)
    grads, outputs, bn_states = gradients_fn(
      state, bn_states, (v1, v2), micro_labels, micro_prepare
    )
    return (jax.tree.map(jnp.add, grad_sum, grads), bn_states), outputs

  zeros = jax.tree.map(jnp.zeros_like, state.online_params)
  micro_batches = (split(raw_views[0]), split(raw_views[1]), split(labels), jnp.arange(k) * m)
  (grad_sum, bn_states), (loss, probe, outputs) = jax.lax.scan(
    body, (zeros, bn_states), micro_batches
  )
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  probe = jax.tree.map(jnp.mean, probe)
  # The outputs of all micro-batches, so the collapse signals are those of the whole batch.
  outputs = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), outputs)
  return grads, (jnp.mean(loss), probe, outputs), bn_states


def target_ema(target_params: hk.Params, online_params: hk.Params, tau: jax.Array) -> hk.Params:
  """The target update ξ <- τ ξ + (1 - τ) θ, over the online parameters without the predictor."""
  _, online_no_pred = models.split_predictor(online_params)
  return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target_params, online_no_pred)


def _pushed_keys(queue: jax.Array, keys: tuple[jax.Array, jax.Array], axis_name: str | None):
  """``queue`` after this step's targets: the global batch's unit ψ of view 1, then of view 2."""
  rows = [contrastive.global_unit_targets(k, axis_name) for k in keys]
  return negatives_queue.push(queue, jnp.concatenate(rows))


def _unless_nonfinite(state: TrainState, new_state: TrainState, loss, grad_norm) -> TrainState:
  """``new_state``, or ``state`` one step on with the update dropped if anything is not finite."""
  # The whole new state, not only the update: BatchNorm's moving variance can overflow while
  # the loss is still finite, and a state kept so would make every later update non-finite.
  finite = _all_finite((loss, grad_norm, new_state))
  # A dropped update leaves everything as it was but the step, so data, keys and the
  # learning-rate schedule move on.
  dropped = state._replace(
    step=state.step + 1,
    opt_state=optimizers.with_schedule_step(state.opt_state, state.step + 1),
    skipped_steps=state.skipped_steps + 1,
  )
  # A branch rather than a select of every array: XLA:CPU took 4x as long to compile the tiny
  # network's step when each select read the finiteness reductions of the whole state.
  return jax.lax.cond(finite, lambda: new_state, lambda: dropped)


def make_update_fn(
  network: hk.TransformedWithState,
  optimizer: optax.GradientTransformation,
  hp: ByolHParams,
  *,
  axis_name: str | None = parallel.AXIS,
  device_colour_ops: tuple[device_augment.AugmentParams, device_augment.AugmentParams]
  | None = None,
  grad_accum_steps: int = 1,
  device_crop_size: int = 0,
  rank_every: int = 0,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Builds the BYOL update step.

  With ``grad_accum_steps = k > 1`` each device splits its share of the batch into k equal
  micro-batches (consecutive examples) and runs the target forward pass and the online forward
  and backward passes on one micro-batch at a time (a ``lax.scan``, so activations are held for
  one micro-batch only). The gradients, the loss and the probe metrics are averaged over the
  micro-batches, then the optimiser and the target EMA are updated once. BatchNorm normalises
  each micro-batch with that micro-batch's statistics (over all devices: micro-batch i of every
  device together), and its moving averages, online and target, are updated once per micro-batch
  in sequence, i.e. k times per step. Without BatchNorm (``normalization="group_ws"``: no state
  at all), k micro-batches give the update of one k-times larger batch.

  Args:
    network: from :func:`byol_jax.models.make_byol_network` (optionally wrapped by
      :func:`byol_jax.cpu_ops.lowered` and :func:`byol_jax.precision.mixed_precision`, as
      ``train.build_network`` does), built with the same ``axis_name``.
    optimizer: from :func:`make_optimizer`.
    hp: hyperparameters: the loss, the τ schedule and the learning-rate schedule reported in
      the metrics; the state must hold target parameters exactly when ``hp.separate_target``.
    axis_name: the ``pmap`` axis spanning all devices; None to run without ``pmap``.
    device_colour_ops: (T, T') parameters to apply colour jitter, grayscale, blur and
      solarisation inside the step; None when the input pipeline already did.
    grad_accum_steps: micro-batches per update; must divide the per-device batch.
    device_crop_size: with the device pipeline, the side of the views that the random resized
      crop makes inside the step (then ``device_colour_ops`` gives both views' parameters).
    rank_every: > 0 adds the metric ``effective_rank`` (``collapse.effective_rank`` of view 1's
      online representations over the global batch), computed only where the step count after
      the update is a multiple of it or the last (the log steps); 0 elsewhere.

  Returns:
    ``update(state, batch, rng) -> (state, metrics)``. ``batch`` holds this device's share of
    the global batch: ``view1`` and ``view2`` images in [0, 1] (float or uint8), or, with
    ``device_crop_size``, the whole uint8 ``image`` array; and optionally ``label`` (-1: none).
  """
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps={grad_accum_steps} must be a positive integer.")
  gradients = functools.partial(batch_gradients, network, axis_name, hp.loss)
  if grad_accum_steps > 1:
    gradients = functools.partial(accumulated_gradients, gradients, grad_accum_steps)

  def update(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    if bool(state.target_params) != hp.separate_target:
      raise ValueError(
        f"The state {'has' if state.target_params else 'lacks'} target parameters but the "
        f"hyperparameters (tau_schedule={hp.tau_schedule!r}, tau_base={hp.tau_base}) "
        f"{'do not keep' if state.target_params else 'keep'} a target network."
      )
    if bool(state.queue) != bool(hp.loss.infonce_queue):
      raise ValueError(
        f"The state {'has' if state.queue else 'lacks'} a queue of negatives but "
        f"loss.infonce_queue={hp.loss.infonce_queue}."
      )
    # The device pipeline sends each image once; both views are cut from it here.
    raw_views = (
      (batch["image"], batch["image"]) if device_crop_size else (batch["view1"], batch["view2"])
    )
    share = raw_views[0].shape[0]
    prepare = functools.partial(
      prepare_views,
      key=jax.random.fold_in(rng, state.step),
      device_colour_ops=device_colour_ops,
      axis_name=axis_name,
      share=share,
      crop_size=device_crop_size,
    )
    grads, (loss, probe, (projection, embedding, keys)), (online_state, target_state) = gradients(
      state,
      (state.online_state, state.target_state),
      raw_views,
      _labels(batch, share),
      prepare,
    )
    if axis_name is not None and jax.lax.axis_size(axis_name) > 1:
      # (Over one device the mean is the identity, but XLA:CPU would still copy every gradient.)
      loss, grads = jax.lax.pmean((loss, grads), axis_name)

    # The learning rate is the schedule's at state.step, the one reported in the metrics, even
    # where the optimiser's own count lags behind (after dropped updates, in older checkpoints).
    opt_state = optimizers.with_schedule_step(state.opt_state, state.step)
    updates, opt_state = optimizer.update(grads, opt_state, state.online_params)
    online_params = optax.apply_updates(state.online_params, updates)
    tau = schedules.target_ema_decay(state.step, hp.tau_base, hp.total_steps, hp.tau_schedule)
    target_params = state.target_params
    if target_params:  # none where the target is the online network itself
      target_params = target_ema(target_params, online_params, tau)
    new_state = TrainState(
      step=state.step + 1,
      online_params=online_params,
      online_state=online_state,
      target_params=target_params,
      target_state=target_state,
      opt_state=opt_state,
      skipped_steps=state.skipped_steps,
      queue={"keys": _pushed_keys(state.queue["keys"], keys, axis_name)} if state.queue else {},
    )
    metrics = dict(
      loss=loss,
      lr=schedules.warmup_cosine(state.step, hp.peak_lr, hp.warmup_steps, hp.total_steps),
      tau=tau,
      grad_norm=optax.global_norm(grads),
      # SimSiam's collapse signal: ~1/sqrt(dim) for well-spread outputs, 0 for a collapse.
      projection_std=_global_std(losses.l2_normalize(projection), axis_name),
      **probe,
    )
    if rank_every:
      done = state.step + 1
      metrics["effective_rank"] = jax.lax.cond(
        (done % rank_every == 0) | (done == hp.total_steps),
        lambda z: collapse.effective_rank(z, axis_name),
        lambda z: jnp.zeros([], jnp.float32),
        embedding,
      )
    if hp.skip_nonfinite:
      new_state = _unless_nonfinite(state, new_state, loss, metrics["grad_norm"])
    return new_state, metrics

  return update
