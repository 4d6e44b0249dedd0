"""The pretraining loop: data, networks and update step wired together from a config.

This module is the experiment driver: it reads the config and hands explicit arguments to the
library (models, the update step, the input pipeline, checkpointing). The loop resumes from the
latest checkpoint in the workdir, logs metrics from process 0 only, and stops with a clear error,
keeping the last good checkpoint, if the loss stops being finite.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from byol_jax import (
  byol,
  checkpointing,
  collapse,
  config_base,
  config_diff,
  cpu_ops,
  losses,
  models,
  parallel,
  precision,
  preemption,
  schedules,
  writers,
)
from byol_jax import encoder as encoder_lib
from byol_jax.data import params as augment_params
from byol_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """The config resolved against the dataset and the devices."""

  total_steps: int
  warmup_steps: int
  steps_per_epoch: int
  num_examples: int


def head_spec(config: ml_collections.ConfigDict) -> models.HeadSpec:
  return models.HeadSpec(
    projector_hidden=config.model.projector_hidden,
    projector_output=config.model.projector_output,
    predictor_hidden=config.model.predictor_hidden,
    predictor=config.model.predictor,
    projector_layers=config.model.projector_layers,
    predictor_layers=config.model.predictor_layers,
    head_batchnorm=config.model.head_batchnorm,
  )


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The dtype of the step's convolutions and matrix products on this platform."""
  return precision.resolve_compute_dtype(config.model.compute_dtype, jax.default_backend())


def build_network(config: ml_collections.ConfigDict, axis_name: str | None):
  """The BYOL network of the config, computing in :func:`compute_dtype`."""
  network = models.make_byol_network(
    encoder_lib.spec_from_config(config.model),
    head_spec(config),
    bn_decay=config.model.bn_decay,
    bn_eps=config.model.bn_eps,
    axis_name=axis_name,
    num_classes=config.eval.online_probe_classes,
    remat=config.model.remat,
  )
  conv_impl = cpu_ops.resolve_conv_impl(config.model.conv_impl, jax.default_backend())
  # The CPU lowering inside the precision interceptor, which casts what the lowered layers read.
  return precision.mixed_precision(cpu_ops.lowered(network, conv_impl), compute_dtype(config))


def view_params(
  config: ml_collections.ConfigDict,
) -> tuple[augment_params.AugmentParams, augment_params.AugmentParams]:
  return (
    augment_params.AugmentParams.from_mapping(config.augment.view1),
    augment_params.AugmentParams.from_mapping(config.augment.view2),
  )


def plan_run(config: ml_collections.ConfigDict, num_examples: int) -> RunPlan:
  """Steps of the run, from epochs or explicit step counts."""
  steps_per_epoch = max(1, num_examples // config.batch_size)
  if config.num_steps > 0:
    total = int(config.num_steps)
  else:
    total = max(1, math.ceil(config.num_epochs * steps_per_epoch))
  if config.optim.warmup_steps >= 0:
    warmup = int(config.optim.warmup_steps)
  else:
    warmup = round(config.optim.warmup_epochs * steps_per_epoch)
  return RunPlan(
    total_steps=total,
    warmup_steps=min(warmup, total),
    steps_per_epoch=steps_per_epoch,
    num_examples=num_examples,
  )


def hparams(config: ml_collections.ConfigDict, plan: RunPlan) -> byol.ByolHParams:
  return byol.ByolHParams(
    peak_lr=schedules.scaled_learning_rate(config.optim.base_lr, config.batch_size),
    total_steps=plan.total_steps,
    warmup_steps=plan.warmup_steps,
    tau_base=config.optim.tau_base,
    weight_decay=config.optim.weight_decay,
    momentum=config.optim.momentum,
    trust_coefficient=config.optim.trust_coefficient,
    optimizer=config.optim.optimizer,
    predictor_lr_multiplier=config.optim.predictor_lr_multiplier,
    # (Without a predictor there is no predictor lr to keep.)
    predictor_lr_decay=config.optim.predictor_lr_decay or not config.model.predictor,
    freeze_predictor=config.optim.freeze_predictor,
    tau_schedule=config.optim.tau_schedule,
    loss=losses.LossSpec(**config.loss.to_dict()),
    skip_nonfinite=config.max_skipped_steps > 0,
  )


def prefetch_to_devices(batches: Iterator[dict[str, np.ndarray]], size: int = 2):
  """Keeps ``size`` batches in flight to the local devices while the step runs."""
  queue: collections.deque = collections.deque()
  for batch in batches:
    queue.append(parallel.shard(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def compile_then_sync(p_update, state, rng, device_batches: Iterator[Any]) -> Iterator[Any]:
  """Compiles the step, then waits for every process, so that all start the first step together
  (:func:`parallel.compile_then_sync`). Returns the batches, the first one included."""
  first = next(device_batches)
  parallel.compile_then_sync(p_update, (state, first, rng), "step_compiled")
  return itertools.chain([first], device_batches)


def initial_state(config: ml_collections.ConfigDict, optimizer) -> byol.TrainState:
  """Initial training state on the host (BatchNorm without a device axis at init time)."""
  network = build_network(config, axis_name=None)
  size = config.data.image_size
  dummy = jnp.zeros((2, size, size, 3), jnp.float32)
  separate_target = not config_base.shares_target(config.optim)
  init = jax.jit(
    lambda key: byol.init_state(
      network, optimizer, key, dummy, separate_target, config.loss.infonce_queue
    ),
    backend="cpu",
  )
  return jax.device_get(init(jax.random.PRNGKey(config.seed)))


def restore_or_init(
  checkpointer: checkpointing.Checkpointer, config: ml_collections.ConfigDict, optimizer
) -> byol.TrainState:
  """The newest intact checkpoint's state, or a fresh one when the workdir holds none."""
  state = initial_state(config, optimizer)

  def check_architecture(saved: dict[str, Any]) -> None:
    mismatch = config_diff.architecture_mismatch(
      saved, config.to_dict(), config_base.get_base_config().to_dict()
    )
    if config_base.shares_target(saved.get("optim", {})) != config_base.shares_target(config.optim):
      mismatch.append(
        "target network: checkpoint "
        f"{'none' if config_base.shares_target(saved.get('optim', {})) else 'kept'} vs config "
        f"{'none' if config_base.shares_target(config.optim) else 'kept'} "
        "(optim.tau_schedule='constant' with optim.tau_base=0 keeps none)"
      )
    saved_queue = saved.get("loss", {}).get("infonce_queue", 0)
    if saved_queue != config.loss.infonce_queue:
      mismatch.append(
        f"queue of negatives: checkpoint {saved_queue} vs config {config.loss.infonce_queue} "
        "(loss.infonce_queue)"
      )
    if mismatch:
      raise UserError(
        f"The checkpoint in {checkpointer.directory} is of another architecture "
        f"({'; '.join(mismatch)}): use the config it was trained with, or a fresh --workdir "
        "(with --config.init_encoder_from=<that workdir> to start from its encoder)."
      )

  found = checkpointer.restore_latest_intact(
    state._asdict(), check_architecture, all_agree=preemption.all_processes
  )
  if found is None:
    if config.init_encoder_from:
      state = with_encoder_from(state, config)
    return state
  step, restored = found
  logging.info("Resumed from %s at step %d.", checkpointer.directory, step)
  return byol.TrainState(**restored)


def with_encoder_from(state: byol.TrainState, config: ml_collections.ConfigDict) -> byol.TrainState:
  """A fresh state whose online and target encoders start from another run's online encoder.

  Only the encoder is taken (``config.init_encoder_from``: a workdir or checkpoint step folder),
  so the heads may differ; the encoder architecture must match the config's.
  """
  weights = encoder_lib.restore_encoder(config.init_encoder_from)
  encoder_lib.check_architecture(weights.spec, config.model, weights.source)
  logging.info("Encoder initialised from %s.", weights.source)
  return state._replace(
    online_params={**state.online_params, **weights.params},
    online_state={**state.online_state, **weights.state},
    # (None to fill where the target is the online network itself.)
    target_params={**state.target_params, **weights.params} if state.target_params else {},
    target_state={**state.target_state, **weights.state} if state.target_params else {},
  )


def update_step(
  config: ml_collections.ConfigDict, hp: byol.ByolHParams, optimizer, views, axis_name: str | None
):
  """The config's update step (unmapped) over the devices of ``axis_name`` (None: one device)."""
  on_device = config.data.pipeline == "device"
  return byol.make_update_fn(
    build_network(config, axis_name),
    optimizer,
    hp,
    axis_name=axis_name,
    device_colour_ops=views if on_device or not config.data.host_colour_ops else None,
    grad_accum_steps=config.optim.grad_accum_steps,
    device_crop_size=config.data.image_size if on_device else 0,
    rank_every=config.log_every_steps,
  )


def pmapped_update(config: ml_collections.ConfigDict, hp: byol.ByolHParams, optimizer, views):
  """The update step of the config, ``pmap``-ed over every device (the state donated)."""
  update = update_step(config, hp, optimizer, views, parallel.AXIS)
  return jax.pmap(update, axis_name=parallel.AXIS, donate_argnums=(0,))


def announce_start(
  config: ml_collections.ConfigDict, workdir: str, state: byol.TrainState, plan: RunPlan
) -> None:
  """Records the config in the workdir and prints what the run is about to do."""
  start_step = int(state.step)
  change = writers.record_config(workdir, config.to_json_best_effort(indent=2), start_step)
  if change:
    print(
      f"note: config changed since the last start ({', '.join(change[1])}); "
      f"the previous config is kept as {change[0]}."
    )
  n_params = models.count_params(state.online_params)
  accum = config.optim.grad_accum_steps
  print(
    f"BYOL pretraining: {config.model.encoder} ({n_params / 1e6:.2f}M online parameters), "
    f"{plan.num_examples} images, batch {config.batch_size} on {jax.device_count()} device(s)"
    f"{f' in {accum} micro-batches' if accum > 1 else ''}, "
    f"{compute_dtype(config).name} compute, "
    f"{plan.total_steps} steps ({plan.steps_per_epoch} per epoch), starting at step {start_step}.",
    flush=True,
  )


@dataclasses.dataclass
class TrainingLoop:
  """The steps of a run after its set-up: update, log, checkpoint, monitor, stop on a signal."""

  config: ml_collections.ConfigDict
  plan: RunPlan
  p_update: Any
  checkpointer: checkpointing.Checkpointer
  writer: writers.MetricWriter
  progress: writers.Progress
  knn_monitor: Any = None
  alarm: collapse.CollapseAlarm | None = None
  last: dict[str, float] = dataclasses.field(default_factory=dict)

  def run(self, state, device_batches, signals: preemption.StopSignals) -> tuple[int, bool]:
    """Steps until the plan's end or a stop; returns (last step, whether stopped early)."""
    rng = parallel.replicate(jax.random.PRNGKey(self.config.seed))
    step = start_step = int(state.step)
    state = parallel.replicate(state)
    vote = preemption.StopVote(signals)
    # A signal during the set-up ends the run before the step compiles: nothing new to save.
    if preemption.any_process(signals.requested, "stop_before_training"):
      return step, True
    if jax.process_count() > 1 and step < self.plan.total_steps:
      device_batches = compile_then_sync(self.p_update, state, rng, device_batches)
    for batch in device_batches:
      if step >= self.plan.total_steps:
        break
      state, metrics = self.p_update(state, batch, rng)
      step += 1
      if step == start_step + 1:
        self.progress.start(step)  # throughput excludes the compiling first step
      saved = self.after_step(step, state, metrics)
      if vote.after_step():
        if not saved:
          self.save(step, state)
        return step, True
    return step, False

  def after_step(self, step: int, state, metrics) -> bool:
    """Logs, checkpoints and monitors where ``step`` calls for it; returns whether it saved."""
    config, total = self.config, self.plan.total_steps
    is_log = step % config.log_every_steps == 0 or step == total
    is_ckpt = step % config.checkpoint_every_steps == 0 or step == total
    if is_log or is_ckpt:
      scalars = {k: float(v) for k, v in parallel.unreplicate(metrics).items()}
      if config.max_skipped_steps > 0:
        scalars["skipped_steps"] = float(parallel.unreplicate(state.skipped_steps))
        check_skipped(step, int(scalars["skipped_steps"]), config.max_skipped_steps)
      else:
        check_finite(step, scalars)
      if is_log:
        scalars["images_per_s"] = self.progress.update(step, scalars)
        self.writer.write(step, scalars)
        self.last = scalars
        self.watch_collapse(step, scalars)
      if is_ckpt:
        self.save(step, state)
    if self.knn_monitor is not None and self.knn_monitor.due(step, total):
      knn = self.knn_monitor(state.online_params, state.online_state)
      self.writer.write(step, knn)
      if jax.process_index() == 0:
        print(" | ".join(f"{k} {v:.4f}" for k, v in knn.items()), flush=True)
      self.progress.start(step)  # the throughput excludes the monitor's time
    return is_ckpt

  def watch_collapse(self, step: int, scalars: dict[str, float]) -> None:
    """Prints the collapse alarm's warning (once); with ``stop_on_collapse`` it raises."""
    warning = self.alarm.observe(step, scalars) if self.alarm is not None else None
    if warning and jax.process_index() == 0:
      print(warning, flush=True)

  def save(self, step: int, state) -> None:
    """Checkpoints the (replicated) state, unless it is no longer finite."""
    host_state = parallel.unreplicate(state)
    # Never write a diverged state: the last good checkpoint must survive.
    if not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(host_state)):
      raise UserError(
        f"The parameters stopped being finite at step {step}; the last good checkpoint is kept: "
        "lower --config.optim.base_lr or check the data."
      )
    self.checkpointer.save(step, host_state._asdict(), self.config.to_dict())


def pretrain_input(
  config: ml_collections.ConfigDict, source, views, start_step: int, total_steps: int
) -> Iterator[dict[str, np.ndarray]]:
  """This process's batches of steps ``[start_step, total_steps)`` from the config's pipeline:
  augmented views (tf.data), or whole images that the step augments (``data.pipeline="device"``)."""
  common = dict(
    global_batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_batches=total_steps - start_step,
  )
  if config.data.pipeline == "device":
    from byol_jax.data import in_memory

    return in_memory.batches(in_memory.decode_source(source), **common)
  from byol_jax.data import pipeline

  return pipeline.pretrain_batches(
    source,
    image_size=config.data.image_size,
    view1=views[0],
    view2=views[1],
    host_colour_ops=config.data.host_colour_ops,
    shuffle_buffer=config.data.shuffle_buffer,
    **common,
  )


def pretrain(
  config: ml_collections.ConfigDict,
  workdir: str,
  signals: preemption.StopSignals | None = None,
) -> dict[str, float]:
  """Runs (or resumes) BYOL pretraining; returns the last logged metrics.

  ``signals`` records SIGTERM / SIGINT (``main`` installs it before ``jax.distributed``); by
  default the run installs its own for its whole duration.
  """
  if signals is None:
    with preemption.StopSignals() as own:
      return pretrain(config, workdir, own)
  # The data modules (TensorFlow) load only where data is read, so the step and the model build
  # on hosts without TensorFlow (accelerator benchmarks).
  from byol_jax import monitor, run_data

  config_base.validate_config(config)
  parallel.check_devices(config.batch_size, config.optim.grad_accum_steps)
  source = run_data.make_source(config, config.data.train_split)
  plan = plan_run(config, source.num_examples)
  hp = hparams(config, plan)
  optimizer = byol.make_optimizer(hp)
  view1, view2 = view_params(config)
  p_update = pmapped_update(config, hp, optimizer, (view1, view2))
  # kNN accuracy on held-out data every config.eval.knn_every_steps steps (None when off).
  knn_monitor = monitor.from_config(config, source)

  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  checkpointer = checkpointing.Checkpointer(
    os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR), keep=config.keep_checkpoints
  )
  state = restore_or_init(checkpointer, config, optimizer)
  start_step = int(state.step)
  if is_main:
    announce_start(config, workdir, state, plan)
  batches = pretrain_input(config, source, (view1, view2), start_step, plan.total_steps)
  writer = writers.MetricWriter(workdir, enabled=is_main)
  # Steps after the checkpoint we resume from are recomputed: drop their stale records.
  writer.truncate_after(start_step)
  progress = writers.Progress(plan.total_steps, config.batch_size, enabled=is_main)
  loop = TrainingLoop(
    config, plan, p_update, checkpointer, writer, progress, knn_monitor, collapse_alarm(config)
  )
  try:
    step, stopped = loop.run(state, prefetch_to_devices(batches), signals)
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
  if is_main:
    print(end_summary(step, start_step, stopped, signals, checkpointer, writer), flush=True)
  return loop.last


def collapse_alarm(config: ml_collections.ConfigDict) -> collapse.CollapseAlarm:
  """The run's collapse alarm: the projection's size and the largest possible effective rank
  (that of view 1's representations over the global batch)."""
  rank_bound = min(
    config.batch_size, encoder_lib.feature_dim(encoder_lib.spec_from_config(config.model))
  )
  return collapse.CollapseAlarm(
    config.model.projector_output, rank_bound, stop=config.stop_on_collapse
  )


def end_summary(
  step: int,
  start_step: int,
  stopped: bool,
  signals: preemption.StopSignals,
  checkpointer: checkpointing.Checkpointer,
  writer: writers.MetricWriter,
) -> str:
  """The run's last line: where its outputs are, or where and why it stopped early."""
  if not stopped:
    tensorboard = f", TensorBoard logs in {writer.tensorboard_dir}" if writer.tensorboard_on else ""
    return (
      f"Done: {step} steps. Checkpoints in {checkpointer.directory}, metrics in "
      f"{writer.jsonl_path}{tensorboard}."
    )
  cause = signals.signal_name or "a signal to another process"
  if step == start_step:
    return (
      f"Stopped by {cause} before step {step + 1}: nothing new to save. "
      "Run the same command to continue."
    )
  return (
    f"Stopped by {cause} at step {step}; checkpoint written to {checkpointer.directory}. "
    "Run the same command to resume."
  )


def check_skipped(step: int, skipped: int, limit: int) -> None:
  if skipped > limit:
    raise UserError(
      f"{skipped} updates were dropped for non-finite values by step {step}, more than "
      f"config.max_skipped_steps={limit}; the last good checkpoint is kept: lower "
      "--config.optim.base_lr or check the data."
    )


def check_finite(step: int, scalars: dict[str, float]) -> None:
  bad = [k for k in ("loss", "grad_norm") if k in scalars and not math.isfinite(scalars[k])]
  if bad:
    raise UserError(
      f"The {bad[0]} became {scalars[bad[0]]} at step {step}; the last good checkpoint is kept: "
      "lower --config.optim.base_lr or check the data."
    )
