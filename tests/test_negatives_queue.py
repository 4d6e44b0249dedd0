"""The queue of negatives (``loss.infonce_queue``): the InfoNCE term with past keys against a
numpy transcription of Eq. 6 with more negatives, over 8 devices as on one; the keys an update
pushes against the target network applied by hand; and through ``pretrain``: exact resume,
checkpoints written before the queue existed, and a change of queue size refused."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import final_state, read_metrics, tiny_config

from byol_jax import byol, checkpointing, contrastive, losses, models, negatives_queue, train
from byol_jax.data import device_augment
from byol_jax.errors import UserError

N_DEV, BATCH, DIM, ALPHA = 8, 16, 5, 0.3


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(x):
  m = np.max(x, axis=1, keepdims=True)
  return m[:, 0] + np.log(np.sum(np.exp(x - m), axis=1))


def _reference_term(phi1, phi2, psi1, psi2, queue_rows, alpha):
  """2α mean_i ln(Σ_{j≠i} e^{S(v_i,v_j)/α} + Σ_j e^{S(v_i,v'_j)/α} + Σ_k e^{φ(v_i)·q_k/α}) for
  both directions, written from the formula; ``queue_rows`` are the filled keys only."""

  def direction(phi, same, other):
    s_same = _unit(phi) @ _unit(same).T / alpha
    np.fill_diagonal(s_same, -np.inf)
    s_other = _unit(phi) @ _unit(other).T / alpha
    s_queue = _unit(phi) @ queue_rows.T / alpha
    return 2 * alpha * np.mean(_logsumexp(np.concatenate([s_same, s_other, s_queue], axis=1)))

  return direction(phi1, psi1, psi2) + direction(phi2, psi2, psi1)


def test_queued_keys_are_negatives_of_every_anchor_over_8_devices_as_on_one():
  rng = np.random.default_rng(0)
  phi1, phi2, psi1, psi2 = rng.normal(size=(4, BATCH, DIM))
  filled = _unit(rng.normal(size=(24, DIM)))
  queue = np.concatenate([filled, np.zeros((8, DIM))])  # 8 slots not filled yet
  spec = losses.LossSpec(infonce_weight=1.0, infonce_temperature=ALPHA, infonce_queue=32)

  def term(p1, p2, t1, t2, axis_name):
    return contrastive.infonce_term(p1, p2, t1, t2, spec, axis_name, jnp.asarray(queue))

  shard = lambda x: x.reshape(N_DEV, -1, DIM)  # noqa: E731
  expected = _reference_term(phi1, phi2, psi1, psi2, filled, ALPHA)
  with jax.enable_x64(True):
    on_one = term(phi1, phi2, psi1, psi2, None)
    per_device = jax.pmap(
      lambda *xs: jax.lax.pmean(term(*xs, "i"), "i"), axis_name="i", devices=jax.devices()[:N_DEV]
    )
    on_devices = per_device(*map(shard, (phi1, phi2, psi1, psi2)))[0]
  np.testing.assert_allclose(on_one, expected, rtol=1e-10)
  np.testing.assert_allclose(on_devices, expected, rtol=1e-10)
  # The queue's keys change the term: they are in its sums.
  without = _reference_term(phi1, phi2, psi1, psi2, np.zeros((0, DIM)), ALPHA)
  assert abs(expected - without) > 0.1


def test_push_puts_the_newest_keys_first_and_drops_the_oldest():
  queue = negatives_queue.empty(5, 2)
  a = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
  queue = negatives_queue.push(queue, a)
  np.testing.assert_array_equal(queue[:3], a)
  assert negatives_queue.filled(queue).tolist() == [True, True, True, False, False]
  b = -a
  queue = negatives_queue.push(queue, b)
  np.testing.assert_array_equal(queue, jnp.concatenate([b, a[:2]]))
  assert negatives_queue.filled(queue).all()
  np.testing.assert_array_equal(
    negatives_queue.push(queue, jnp.tile(a, (3, 1))), jnp.tile(a, (2, 1))[:5]
  )


# --------------------------------------------------------------------------------------------
# The keys an update pushes.

ENC = models.EncoderSpec("tiny", small_image_stem=True)
HEADS = models.HeadSpec(32, 16, 32)
SIZE, QUEUE = 16, 48
SPEC = losses.LossSpec(infonce_weight=1.0, infonce_temperature=ALPHA, infonce_queue=QUEUE)
HP = byol.ByolHParams(peak_lr=0.1, total_steps=4, warmup_steps=0, tau_base=0.9, loss=SPEC)


def _batches():
  rng = np.random.default_rng(1)
  shape = (BATCH, SIZE, SIZE, 3)
  return [{k: rng.uniform(size=shape).astype(np.float32) for k in ("view1", "view2")}] * 2


def _initial_state():
  net = models.make_byol_network(ENC, HEADS)
  optimizer = byol.make_optimizer(HP)
  dummy = jnp.zeros((2, SIZE, SIZE, 3))
  init = lambda k: byol.init_state(net, optimizer, k, dummy, queue_size=QUEUE)  # noqa: E731
  return jax.jit(init)(jax.random.PRNGKey(0)), optimizer


def _steps(num_devices):
  """Two updates over ``num_devices``; the state before and after each."""
  devices = jax.devices()[:num_devices]
  state, optimizer = _initial_state()
  net = models.make_byol_network(ENC, HEADS, axis_name="b")
  update = jax.pmap(byol.make_update_fn(net, optimizer, HP, axis_name="b"), "b", devices=devices)
  states = [state]
  replicated = train.parallel.replicate(state, devices)
  rng = train.parallel.replicate(jax.random.PRNGKey(3), devices)
  for batch in _batches():
    replicated, _ = update(replicated, train.parallel.shard(batch, devices), rng)
    states.append(train.parallel.unreplicate(replicated))
  return states


def _target_keys(state, batch):
  """The unit target projections of both views of the whole batch (view 1's, then view 2's),
  the target network applied to the batch here, BatchNorm over the whole batch."""
  net = models.make_byol_network(ENC, HEADS)
  keys = []
  for view in (batch["view1"], batch["view2"]):
    x = device_augment.normalize(jnp.asarray(view))
    out, _ = net.apply(
      state.target_params, state.target_state, x, is_training=True, with_predictor=False
    )
    keys.append(_unit(np.asarray(out["projection"])))
  return np.concatenate(keys)


def test_an_update_pushes_the_unit_target_projections_of_the_global_batch():
  one, eight = _steps(1), _steps(N_DEV)
  assert one[0].queue["keys"].shape == (QUEUE, HEADS.projector_output)
  assert not np.any(one[0].queue["keys"])
  first, second = (_target_keys(one[i], b) for i, b in enumerate(_batches()))
  after_1, after_2 = np.asarray(one[1].queue["keys"]), np.asarray(one[2].queue["keys"])
  np.testing.assert_allclose(after_1[: 2 * BATCH], first, atol=2e-5)
  assert not np.any(after_1[2 * BATCH :])  # not filled yet
  np.testing.assert_allclose(after_2[: 2 * BATCH], second, atol=2e-5)
  np.testing.assert_allclose(after_2[2 * BATCH :], first[: QUEUE - 2 * BATCH], atol=2e-5)
  # The same keys, in the same order, when the batch is spread over 8 devices.
  np.testing.assert_allclose(eight[2].queue["keys"], after_2, atol=2e-5)


# --------------------------------------------------------------------------------------------
# Through pretrain.

QUEUED = {"loss.infonce_weight": 1.0, "loss.infonce_temperature": ALPHA, "loss.infonce_queue": 40}


def test_a_run_with_a_queue_resumes_exactly(tmp_path):
  config = tiny_config(**QUEUED)
  full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
  train.pretrain(config, full)
  # A run stopped right after its step-3 checkpoint: the same workdir without what came later.
  shutil.copytree(full, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    head = f.readlines()[:3]
  with open(os.path.join(resumed, "metrics.jsonl"), "w") as f:
    f.writelines(head)
  train.pretrain(config, resumed)
  a, b = read_metrics(full), read_metrics(resumed)
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-6)
  sa, sb = final_state(full, config), final_state(resumed, config)
  assert np.all(np.abs(np.linalg.norm(sa["queue"]["keys"], axis=1) - 1) < 1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), sa, sb)
  # Another queue size would not fit the saved queue: one line, every checkpoint kept.
  with pytest.raises(UserError, match=r"queue of negatives: checkpoint 40 vs config 8"):
    train.pretrain(tiny_config(**{**QUEUED, "loss.infonce_queue": 8, "num_steps": 9}), full)
  assert sorted(os.listdir(os.path.join(full, "checkpoints"))) == ["3", "6"]


def test_a_checkpoint_written_before_the_queue_existed_resumes(tmp_path, capsys):
  """A state saved without the ``queue`` field (as earlier versions wrote it) resumes, and the
  run ends as one that never stopped."""
  config = tiny_config()
  full, old = str(tmp_path / "full"), str(tmp_path / "old")
  train.pretrain(config, full)
  # The step-3 checkpoint rewritten without the field, in a workdir that has nothing later.
  os.makedirs(os.path.join(old, "checkpoints"))
  state = final_state(full, config, 3)
  saved_config = checkpointing.Checkpointer(os.path.join(full, "checkpoints")).restore_config(3)
  del state["queue"]
  ckpt = checkpointing.Checkpointer(os.path.join(old, "checkpoints"))
  ckpt.save(3, state, saved_config)
  ckpt.close()
  capsys.readouterr()
  train.pretrain(config, old)
  printed = capsys.readouterr().out
  assert "starting at step 3" in printed
  assert "damaged" not in printed
  sa, sb = final_state(full, config), final_state(old, config)
  assert sb["queue"] == {}
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), sa, sb)
