"""The update step: EMA, schedules in the metrics, and pmap over 8 devices equal to 1 device, with
XLA's convolutions (the GPU/TPU path) and the CPU lowering alike."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import byol, cpu_ops, models, parallel
from byol_jax.data import augment

HP = byol.ByolHParams(peak_lr=0.8, total_steps=10, warmup_steps=0, tau_base=0.9, weight_decay=1e-4)
ENC = models.EncoderSpec("tiny", small_image_stem=True)
HEADS = models.HeadSpec(32, 16, 32)
GLOBAL_BATCH, SIZE, STEPS = 16, 16, 2


def _batches(dtype):
  rng = np.random.default_rng(0)
  return [
    {k: rng.uniform(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(dtype) for k in ("view1", "view2")}
    for _ in range(STEPS)
  ]


def _initial_state(optimizer, dtype):
  net = models.make_byol_network(ENC, HEADS)
  dummy = jnp.zeros((2, SIZE, SIZE, 3), dtype)
  return jax.jit(lambda k: byol.init_state(net, optimizer, k, dummy))(jax.random.PRNGKey(0))


def _run(num_devices, device_colour_ops=None, dtype=np.float32, conv_impl="xla"):
  """STEPS updates pmapped over ``num_devices``; returns every state and metrics (device 0)."""
  with jax.enable_x64(dtype == np.float64):
    return _run_steps(num_devices, device_colour_ops, dtype, conv_impl)


def _run_steps(num_devices, device_colour_ops, dtype, conv_impl):
  devices = jax.local_devices()[:num_devices]
  optimizer = byol.make_optimizer(HP)
  update = byol.make_update_fn(
    cpu_ops.lowered(models.make_byol_network(ENC, HEADS, axis_name="batch"), conv_impl),
    optimizer,
    HP,
    axis_name="batch",
    device_colour_ops=device_colour_ops,
  )
  p_update = jax.pmap(update, axis_name="batch", devices=devices)
  state = parallel.replicate(_initial_state(optimizer, dtype), devices)
  rng = parallel.replicate(jax.random.PRNGKey(42), devices)
  history = [parallel.unreplicate(state)]
  metrics = []
  for batch in _batches(dtype):
    state, m = p_update(state, parallel.shard(batch, devices), rng)
    history.append(parallel.unreplicate(state))
    metrics.append(parallel.unreplicate(m))
  return history, metrics


@functools.cache
def _one_device(conv_impl="xla"):
  return _run(1, conv_impl=conv_impl)


@functools.cache
def _one_device_f64(conv_impl):
  return _run(1, dtype=np.float64, conv_impl=conv_impl)


@functools.cache
def _eight_devices_f64(conv_impl):
  return _run(8, dtype=np.float64, conv_impl=conv_impl)


def _assert_trees_close(a, b, rtol, atol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_eight_devices_equal_one_device(conv_impl):
  """Checked in float64: with 2 examples per device, float32 rounding in the BatchNorm sums is
  amplified through the first update to ~1e-2 of its size for a few near-zero gradients,
  which would hide a real difference."""
  assert jax.local_device_count() == 8
  (h1, m1), (h8, m8) = _one_device_f64(conv_impl), _eight_devices_f64(conv_impl)
  assert h1[-1].online_params["projector/linear"]["w"].dtype == np.float64
  for a, b in zip(m1, m8):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-10)
    np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-9)
  # Gradients are averaged and BatchNorm statistics computed over all 8 devices: the parameters,
  # the BN moving averages and the target match a single device that sees the whole batch.
  _assert_trees_close(h1[-1].online_params, h8[-1].online_params, rtol=1e-8, atol=1e-10)
  _assert_trees_close(h1[-1].online_state, h8[-1].online_state, rtol=1e-8, atol=1e-10)
  _assert_trees_close(h1[-1].target_params, h8[-1].target_params, rtol=1e-8, atol=1e-10)


def _ema(tau, target, online):
  return jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, target, online)


def test_target_is_an_ema_of_the_online_network(conv_impl):
  history, metrics = _one_device(conv_impl)
  for k in range(STEPS):
    before, after = history[k], history[k + 1]
    tau = 1 - (1 - HP.tau_base) * (np.cos(np.pi * k / HP.total_steps) + 1) / 2
    np.testing.assert_allclose(metrics[k]["tau"], tau, rtol=1e-6)
    _, online = models.split_predictor(after.online_params)
    _assert_trees_close(after.target_params, _ema(tau, before.target_params, online), 1e-5, 1e-6)
    assert int(after.step) == k + 1
  # The target keeps BatchNorm statistics of its own.
  _, online_state = models.split_predictor(history[-1].online_state)
  diffs = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))), online_state, history[-1].target_state
  )
  assert max(jax.tree.leaves(diffs)) > 0


def test_metrics_follow_the_schedules(conv_impl):
  _, metrics = _one_device(conv_impl)
  for k, m in enumerate(metrics):
    lr = 0.5 * HP.peak_lr * (1 + np.cos(np.pi * k / HP.total_steps))  # no warm-up here
    np.testing.assert_allclose(m["lr"], lr, rtol=1e-6)
    assert 0.0 <= m["loss"] <= 8.0
    assert 0.0 < m["projection_std"] <= 1.0
    assert np.isfinite(m["grad_norm"])
    assert m["grad_norm"] > 0


def test_predictor_gets_gradients_and_target_has_none(conv_impl):
  history, _ = _one_device(conv_impl)
  first, last = history[0], history[-1]
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))), first.online_params, last.online_params
  )
  assert min(jax.tree.leaves(moved["predictor/linear"])) > 0
  assert "predictor/linear" not in last.target_params


def test_xla_convolutions_and_the_cpu_lowering_make_the_same_update():
  """One step from the same state, batch and key, in float64: the lowering (im2col, per-tap
  products, dense tap matrices and Winograd in this network) changes only the rounding."""
  (xla, m_xla), (lowered, m_lowered) = _one_device_f64("xla"), _one_device_f64("winograd")
  np.testing.assert_allclose(m_lowered[0]["loss"], m_xla[0]["loss"], rtol=1e-12)
  np.testing.assert_allclose(m_lowered[0]["grad_norm"], m_xla[0]["grad_norm"], rtol=1e-10)
  for part in ("online_params", "online_state", "target_params", "target_state", "opt_state"):
    _assert_trees_close(getattr(lowered[1], part), getattr(xla[1], part), rtol=1e-9, atol=1e-12)


def test_device_colour_ops_do_not_depend_on_the_device_split():
  ops = (augment.PAPER_T, augment.PAPER_T_PRIME)
  _, on_one = _run(1, ops)
  _, on_two = _run(2, ops)
  for a, b in zip(on_one, on_two):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  # The ops did change the views.
  assert abs(on_one[0]["loss"] - _one_device()[1][0]["loss"]) > 1e-4
