"""Gradient accumulation: k micro-batches per update, against separate micro-batch and big-batch
updates, with XLA's convolutions (the GPU/TPU path) and the CPU lowering alike."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import tiny_config

from byol_jax import byol, config_base, cpu_ops, models, parallel, train
from byol_jax.errors import UserError

HP = byol.ByolHParams(peak_lr=0.8, total_steps=10, warmup_steps=0, tau_base=0.9, weight_decay=1e-4)
ENC = models.EncoderSpec("tiny", small_image_stem=True)
HEADS = models.HeadSpec(32, 16, 32)
K, DEVICES, PER_DEVICE, SIZE = 4, 2, 8, 16


def _batch(seed=0, size=SIZE):
  rng = np.random.default_rng(seed)
  shape = (DEVICES * PER_DEVICE, size, size, 3)
  return {k: rng.uniform(size=shape).astype(np.float32) for k in ("view1", "view2")}


def _micro_batch(batch, j):
  """Micro-batch ``j`` of every device's share, as one global batch laid out for ``shard``."""
  m = PER_DEVICE // K
  return {
    k: np.concatenate([v[d * PER_DEVICE + j * m : d * PER_DEVICE + (j + 1) * m] for d in range(2)])
    for k, v in batch.items()
  }


def _p_update(network, optimizer, grad_accum_steps):
  update = byol.make_update_fn(
    network, optimizer, HP, axis_name="batch", grad_accum_steps=grad_accum_steps
  )
  return jax.pmap(update, axis_name="batch", devices=jax.local_devices()[:DEVICES])


def _init(network, optimizer, size=SIZE):
  dummy = jnp.zeros((2, size, size, 3), jnp.float32)
  return jax.jit(lambda k: byol.init_state(network, optimizer, k, dummy))(jax.random.PRNGKey(0))


def _place(tree, shard=False):
  devices = jax.local_devices()[:DEVICES]
  return (parallel.shard if shard else parallel.replicate)(tree, devices)


def _close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@functools.cache
def _resnet_runs(conv_impl):
  """One accumulated update of the BatchNorm ResNet, and the 4 micro-batches as separate updates.

  Plain SGD makes the update linear in the gradient, so the accumulated update must equal the
  mean of the separate ones. The separate updates all start from the same parameters; only the
  BatchNorm states are passed from one to the next, which in training mode does not change the
  outputs, so they reproduce the accumulated step's sequence of micro-batches.
  """
  network = cpu_ops.lowered(models.make_byol_network(ENC, HEADS, axis_name="batch"), conv_impl)
  optimizer = optax.sgd(0.1)
  state = _init(models.make_byol_network(ENC, HEADS), optimizer)
  rng = _place(jax.random.PRNGKey(1))
  batch = _batch()
  accumulated, metrics = _p_update(network, optimizer, K)(_place(state), _place(batch, True), rng)
  one = _p_update(network, optimizer, 1)
  separate, separate_metrics = [], []
  online_state, target_state = state.online_state, state.target_state
  for j in range(K):
    start = state._replace(online_state=online_state, target_state=target_state)
    out, m = one(_place(start), _place(_micro_batch(batch, j), True), rng)
    out = parallel.unreplicate(out)
    online_state, target_state = out.online_state, out.target_state
    separate.append(out)
    separate_metrics.append(parallel.unreplicate(m))
  return (
    state,
    parallel.unreplicate(accumulated),
    parallel.unreplicate(metrics),
    separate,
    (separate_metrics),
  )


def test_accumulated_loss_and_update_are_the_means_over_micro_batches(conv_impl):
  initial, accumulated, metrics, separate, separate_metrics = _resnet_runs(conv_impl)
  np.testing.assert_allclose(
    metrics["loss"], np.mean([m["loss"] for m in separate_metrics]), rtol=1e-6
  )
  # SGD: p - lr * mean(g_j) = mean(p - lr * g_j), and the EMA is linear in the online parameters.
  mean = functools.partial(jax.tree.map, lambda *xs: np.mean(xs, axis=0))
  _close(accumulated.online_params, mean(*[s.online_params for s in separate]))
  _close(accumulated.target_params, mean(*[s.target_params for s in separate]))
  moved = jax.tree.map(
    lambda a, b: np.max(np.abs(a - b)), accumulated.online_params, initial.online_params
  )
  assert min(jax.tree.leaves(moved)) > 0  # every parameter took part in the update
  # The micro-batches are not all alike: averaging did something.
  assert np.ptp([m["loss"] for m in separate_metrics]) > 1e-3
  assert int(accumulated.step) == 1


def test_batchnorm_moving_averages_advance_once_per_micro_batch(conv_impl):
  initial, accumulated, _, separate, _ = _resnet_runs(conv_impl)
  _close(accumulated.online_state, separate[-1].online_state)
  _close(accumulated.target_state, separate[-1].target_state)
  counter = accumulated.online_state["projector/batch_norm/~/mean_ema"]["counter"]
  assert int(counter) == 2 * K  # two views per micro-batch
  assert initial.online_state["projector/batch_norm/~/mean_ema"]["counter"] == 0


def _bn_free_network():
  """BYOL's interface (embedding, projection, prediction) without BatchNorm: nothing depends on
  how the batch is split."""

  def forward(images, is_training, with_predictor=True):
    del is_training
    h = jax.nn.relu(hk.Conv2D(8, 3, stride=2, name="conv")(images))
    embedding = jnp.mean(h, axis=(1, 2))
    projection = hk.nets.MLP([32, 16], name="projector")(embedding)
    out = dict(embedding=embedding, projection=projection)
    if with_predictor:
      out["prediction"] = hk.nets.MLP([32, 16], name="predictor")(projection)
    return out

  return hk.without_apply_rng(hk.transform_with_state(forward))


def test_accumulation_of_4_micro_batches_matches_one_4x_batch(conv_impl):
  network = cpu_ops.lowered(_bn_free_network(), conv_impl)
  optimizer = byol.make_optimizer(HP)
  state = _init(network, optimizer, size=8)
  rng = _place(jax.random.PRNGKey(1))
  runs = {}
  for k in (1, K):
    p_update = _p_update(network, optimizer, k)
    s, history = _place(state), []
    for step in range(2):  # the second step checks the optimiser state too
      s, m = p_update(s, _place(_batch(step, size=8), True), rng)
      history.append(parallel.unreplicate(m))
    runs[k] = parallel.unreplicate(s), history
  (big, big_metrics), (accumulated, acc_metrics) = runs[1], runs[K]
  for a, b in zip(big_metrics, acc_metrics):
    for key in ("loss", "grad_norm", "projection_std"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)
  _close(big.online_params, accumulated.online_params)
  _close(big.target_params, accumulated.target_params)
  _close(big.opt_state, accumulated.opt_state)
  assert not np.allclose(
    big.online_params["predictor/~/linear_0"]["w"], state.online_params["predictor/~/linear_0"]["w"]
  )


def test_micro_batches_must_split_the_per_device_batch():
  assert parallel.check_devices(64, 4) == 8
  with pytest.raises(UserError, match=r"grad_accum_steps=3 micro-batches.*grad_accum_steps=2"):
    parallel.check_devices(16, 3)  # 2 per device on 8 devices


def test_accumulation_steps_must_be_positive():
  with pytest.raises(UserError, match="grad_accum_steps=0 must be a positive integer"):
    config_base.validate_config(tiny_config(**{"optim.grad_accum_steps": 0}))


def test_pretraining_with_accumulation(tmp_path, capsys):
  with pytest.raises(UserError, match="grad_accum_steps=3"):
    train.pretrain(tiny_config(**{"optim.grad_accum_steps": 3}), str(tmp_path / "bad"))
  config = tiny_config(**{"optim.grad_accum_steps": 2, "num_steps": 2})
  metrics = train.pretrain(config, str(tmp_path / "run"))
  assert "batch 16 on 8 device(s) in 2 micro-batches" in capsys.readouterr().out
  assert np.isfinite(metrics["loss"])
