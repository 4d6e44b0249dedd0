"""Non-finite values: a diverging run stops and keeps its last finite checkpoint; dropped updates
(``max_skipped_steps``) change nothing but the step, and the learning rate stays on the step."""

import functools
import os
import re

import jax
import numpy as np
import optax
import pytest
from tiny import read_metrics, tiny_config

from byol_jax import byol, checkpointing, models, optimizers, parallel, run_data, train
from byol_jax.data import pipeline
from byol_jax.errors import UserError

# The learning rate ramps (a warm-up over the whole run) from 0 to far beyond what training
# survives: the first updates are finite, then LARS grows the weights by orders of magnitude per
# step until a BatchNorm variance or the loss overflows (at step 5 here; the tests read the step
# from the run).
STEPS = 12
DIVERGING = {
  "optim.base_lr": 2e7,
  "optim.warmup_steps": STEPS,
  "num_steps": STEPS,
  "checkpoint_every_steps": 1,
  "keep_checkpoints": STEPS,
}


def _schedule_counts(opt_state):
  """The counts the optimiser's learning-rate schedules read."""
  is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)  # noqa: E731
  return [int(s.count) for s in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(s)]


def _is_finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree))


def _assert_trees_equal(a, b) -> None:
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _checkpoints(workdir, config):
  """{step: state} of every checkpoint in ``workdir``."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  template = train.initial_state(config, _optimizer(config))._asdict()
  try:
    return {step: ckpt.restore(template, step) for step in sorted(ckpt.all_steps())}
  finally:
    ckpt.close()


def _optimizer(config):
  return byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))


@functools.cache
def _reference(num_steps: int):
  """(states, metrics) of the first ``num_steps`` updates of the DIVERGING run, computed apart from
  ``pretrain``: its update function applied step by step, pmapped as in the run, to the batches of
  its input pipeline. ``states[k]`` is the state after k updates, ``metrics[k]`` those of update
  k + 1."""
  config = tiny_config(**DIVERGING)
  source = run_data.make_source(config, config.data.train_split)
  hp = train.hparams(config, train.plan_run(config, source.num_examples))
  optimizer = byol.make_optimizer(hp)
  view1, view2 = train.view_params(config)
  assert config.data.host_colour_ops  # the views come whole from the pipeline
  update = byol.make_update_fn(train.build_network(config, "batch"), optimizer, hp)
  p_update = jax.pmap(update, axis_name="batch", donate_argnums=(0,))
  batches = pipeline.pretrain_batches(
    source,
    global_batch_size=config.batch_size,
    image_size=config.data.image_size,
    view1=view1,
    view2=view2,
    seed=config.seed,
    shuffle_buffer=config.data.shuffle_buffer,
    num_batches=num_steps,
  )
  rng = parallel.replicate(jax.random.PRNGKey(config.seed))
  states, metrics = [train.initial_state(config, optimizer)], []
  for batch in batches:
    views = parallel.shard({k: batch[k] for k in ("view1", "view2", "label")})
    state, m = p_update(parallel.replicate(states[-1]), views, rng)
    states.append(parallel.unreplicate(state))
    metrics.append(parallel.unreplicate(m))
  return states, metrics


def _assert_first_non_finite_update(step: int) -> None:
  """Update ``step`` (1-based) of the DIVERGING run is the first whose loss or result (the new
  state) is not finite, as the reference computes it."""
  states, metrics = _reference(step)
  assert all(_is_finite(s) for s in states[:step])
  assert not (np.isfinite(metrics[step - 1]["loss"]) and _is_finite(states[step]))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(**DIVERGING)
  with pytest.raises(UserError, match="the last good checkpoint is kept") as error:
    train.pretrain(config, workdir)
  diverged_at = int(re.search(r"at step (\d+);", str(error.value)).group(1))
  _assert_first_non_finite_update(diverged_at)
  # Several finite steps were taken, each checkpointed, and nothing after them.
  saved = _checkpoints(workdir, config)
  assert diverged_at >= 4
  assert list(saved) == list(range(1, diverged_at))
  states, _ = _reference(diverged_at)
  for step, state in saved.items():
    assert int(state["step"]) == step
    _assert_trees_equal(state, states[step]._asdict())


def test_non_finite_updates_are_dropped_up_to_a_limit(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(**DIVERGING, max_skipped_steps=2)
  # Once the run diverges every later update does too: each is dropped, the third drop ends it.
  with pytest.raises(UserError, match="3 updates were dropped") as error:
    train.pretrain(config, workdir)
  skipped = [r["skipped_steps"] for r in read_metrics(workdir)]
  first_drop = skipped.index(1.0) + 1
  assert skipped == [0.0] * (first_drop - 1) + [1.0, 2.0]
  assert f"by step {first_drop + 2}," in str(error.value)
  # The first update dropped is the one that ends the run without max_skipped_steps: the first
  # whose result is not finite, be it only a BatchNorm statistic.
  _assert_first_non_finite_update(first_drop)
  saved = _checkpoints(workdir, config)
  assert list(saved) == list(range(1, first_drop + 2))
  applied, newest = saved[first_drop - 1], saved[first_drop + 1]
  assert (int(newest["step"]), int(newest["skipped_steps"])) == (first_drop + 1, 2)
  # Nothing of the dropped updates was applied: the parameters, BatchNorm statistics, target and
  # optimiser state are those of the last applied update, but for the learning-rate schedule,
  # which moved on with the step so that the next update uses the learning rate it logs.
  assert _schedule_counts(newest["opt_state"]) == [first_drop + 1]
  moved_on = optimizers.with_schedule_step(applied["opt_state"], first_drop + 1)
  _assert_trees_equal(newest["opt_state"], moved_on)
  for part in ("online_params", "online_state", "target_params", "target_state"):
    _assert_trees_equal(newest[part], applied[part])


# The update step alone, on one device: a batch of NaN images makes the loss non-finite.
ENC = models.EncoderSpec("tiny", small_image_stem=True)
HEADS = models.HeadSpec(32, 16, 32)
HP = byol.ByolHParams(peak_lr=0.8, total_steps=8, warmup_steps=4, skip_nonfinite=True)


def _batch(seed, nan=False):
  rng = np.random.default_rng(seed)
  views = {k: rng.uniform(size=(8, 16, 16, 3)).astype(np.float32) for k in ("view1", "view2")}
  return {k: np.full_like(v, np.nan) for k, v in views.items()} if nan else views


def _updates(before, after):
  return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, after, before)


def test_learning_rate_after_dropped_updates_is_the_logged_one():
  network = models.make_byol_network(ENC, HEADS)
  optimizer = byol.make_optimizer(HP)
  update = jax.jit(byol.make_update_fn(network, optimizer, HP, axis_name=None))
  rng = jax.random.PRNGKey(1)
  state = byol.init_state(network, optimizer, jax.random.PRNGKey(0), _batch(0)["view1"])
  # Step 0 is applied (lr 0: it only fills the momentum), steps 1 and 2 are dropped.
  for k, nan in enumerate([False, True, True]):
    state, metrics = update(state, _batch(k, nan), rng)
    assert np.isfinite(metrics["loss"]) != nan
  assert (int(state.step), int(state.skipped_steps)) == (3, 2)
  assert _schedule_counts(state.opt_state) == [3]
  # Step 3 applies the learning rate it logs (0.6, not the 0.2 of the step before the drops): its
  # update is that of the same optimiser with this learning rate fixed.
  after, metrics = update(state, _batch(3), rng)
  np.testing.assert_allclose(metrics["lr"], 0.6, rtol=1e-6)
  fixed = optimizers.make(
    HP.optimizer,
    learning_rate=lambda count: 0.6,
    weight_decay=HP.weight_decay,
    momentum=HP.momentum,
    trust_coefficient=HP.trust_coefficient,
  )
  expected = jax.jit(byol.make_update_fn(network, fixed, HP, axis_name=None))(
    state, _batch(3), rng
  )[0]
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-9)
  applied = _updates(state.online_params, after.online_params)
  jax.tree.map(close, applied, _updates(state.online_params, expected.online_params))
  # A state whose schedule count lags its step (saved by a run before this was so) gets the same.
  lagging = state._replace(opt_state=optimizers.with_schedule_step(state.opt_state, 1))
  jax.tree.map(
    close, _updates(state.online_params, update(lagging, _batch(3), rng)[0].online_params), applied
  )
