"""The ablation switches of the BYOL and SimSiam papers, each against an independent reference:
the unified objective against numpy's NT-Xent and the paper's Eq. 6 over 8 devices, a constant τ
of 0 against a SimSiam step written from its paper, and each switch changing what it names."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tiny import REPO, load_config_module, tiny_config

from byol_jax import (
  byol,
  checkpointing,
  config_base,
  config_diff,
  contrastive,
  losses,
  models,
  optimizers,
  parallel,
  train,
)
from byol_jax.data import device_augment
from byol_jax.errors import UserError

N_DEV, BATCH, DIM_IN, DIM = 8, 16, 6, 5


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(x, axis):
  m = np.max(x, axis=axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _nt_xent(z1, z2, temperature):
  """SimCLR's NT-Xent (Chen et al. 2020, Eq. 1) over the 2B views, averaged over anchors."""
  z = _unit(np.concatenate([z1, z2]))
  sim = z @ z.T / temperature
  n = len(z1)
  np.fill_diagonal(sim, -np.inf)
  positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  return np.mean(-sim[np.arange(2 * n), positive] + _logsumexp(sim, axis=1))


def _eq6_loss(phi1, phi2, psi1, psi2, alpha, beta):
  """The BYOL paper's Eq. 6 as a loss, ``2 - InfoNCE`` for (v, v') plus the same for (v', v)."""

  def one_direction(phi, psi_same, psi_other):
    s_pos = np.sum(_unit(phi) * _unit(psi_other), axis=1)
    same = _unit(phi) @ _unit(psi_same).T / alpha
    np.fill_diagonal(same, -np.inf)
    other = _unit(phi) @ _unit(psi_other).T / alpha
    log_den = _logsumexp(np.concatenate([same, other], axis=1), axis=1)
    infonce = 2 * np.mean(s_pos) - beta * 2 * alpha * np.mean(log_den)
    return 2 - infonce

  return one_direction(phi1, psi1, psi2) + one_direction(phi2, psi2, psi1)


def _inputs():
  rng = np.random.default_rng(0)
  x1, x2 = rng.normal(size=(2, BATCH, DIM_IN))
  w = rng.normal(size=(DIM_IN, DIM))
  return w, x1, x2


def _loss_and_grad_on_devices(loss_fn, w, *xs):
  """``loss_fn(w, *xs)`` per device over 8 devices, loss and gradient averaged as the update
  step averages them."""

  def per_device(w, *xs):
    loss, grad = jax.value_and_grad(loss_fn)(w, *xs)
    return jax.lax.pmean((loss, grad), "i")

  shard = lambda x: x.reshape(N_DEV, -1, *x.shape[1:])  # noqa: E731
  ws = np.broadcast_to(w, (N_DEV, *w.shape))
  loss, grad = jax.pmap(per_device, axis_name="i")(ws, *map(shard, xs))
  return np.asarray(loss[0]), np.asarray(grad[0])


def _numeric_grad(f, w, eps=1e-6):
  grad = np.zeros_like(w)
  for idx in np.ndindex(w.shape):
    d = np.zeros_like(w)
    d[idx] = eps
    grad[idx] = (f(w + d) - f(w - d)) / (2 * eps)
  return grad


def _objective(spec, axis_name):
  """Loss of a linear "network" z = x w standing in for the projector (no predictor)."""

  def loss(w, x1, x2):
    z1, z2 = x1 @ w, x2 @ w
    return losses.byol_loss(z1, z2, z1, z2, spec) + contrastive.infonce_term(
      z1, z2, z1, z2, spec, axis_name
    )

  return loss


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_beta_1_without_predictor_and_target_is_nt_xent_over_the_global_batch(alpha):
  """SimCLR: β = 1, φ = ψ = the online projection with the gradient through both; over a global
  batch of 16 split 2 per device, negatives from every device. byol_jax's loss is
  ``4 + 4α NT-Xent`` (``2 - InfoNCE`` per direction, Eq. 6 is 2α times NT-Xent's negative)."""
  spec = losses.LossSpec(stop_gradient=False, infonce_weight=1.0, infonce_temperature=alpha)
  w, x1, x2 = _inputs()
  with jax.enable_x64(True):
    loss, grad = _loss_and_grad_on_devices(_objective(spec, "i"), w, x1, x2)
  reference = lambda w: 4 + 4 * alpha * _nt_xent(x1 @ w, x2 @ w, alpha)  # noqa: E731
  np.testing.assert_allclose(loss, reference(w), rtol=1e-10)
  np.testing.assert_allclose(grad, _numeric_grad(reference, w), rtol=1e-6, atol=1e-8)
  # With the stop-gradient, the targets carry no gradient: another gradient, the same loss.
  stopped = losses.LossSpec(infonce_weight=1.0, infonce_temperature=alpha)
  with jax.enable_x64(True):
    loss_sg, grad_sg = _loss_and_grad_on_devices(_objective(stopped, "i"), w, x1, x2)
  np.testing.assert_allclose(loss_sg, loss, rtol=1e-10)
  assert np.max(np.abs(grad_sg - grad)) > 1e-3 * np.max(np.abs(grad))


def test_unified_objective_with_predictor_and_target_is_eq_6():
  """φ (predictions) and ψ (target projections) distinct, β = 0.5: the loss is the paper's
  Eq. 6 written in numpy, over 8 devices as on one."""
  rng = np.random.default_rng(1)
  phi1, phi2, psi1, psi2 = rng.normal(size=(4, BATCH, DIM))
  spec = losses.LossSpec(infonce_weight=0.5, infonce_temperature=0.3)

  def loss(dummy, p1, p2, t1, t2, axis_name="i"):
    del dummy
    return losses.byol_loss(p1, p2, t1, t2, spec) + contrastive.infonce_term(
      p1, p2, t1, t2, spec, axis_name
    )

  expected = _eq6_loss(phi1, phi2, psi1, psi2, alpha=0.3, beta=0.5)
  with jax.enable_x64(True):
    on_devices, _ = _loss_and_grad_on_devices(loss, np.zeros(()), phi1, phi2, psi1, psi2)
    on_one = loss(None, phi1, phi2, psi1, psi2, axis_name=None)
  np.testing.assert_allclose(on_devices, expected, rtol=1e-10)
  np.testing.assert_allclose(on_one, expected, rtol=1e-10)


def test_cross_entropy_similarity_and_asymmetric_loss():
  rng = np.random.default_rng(2)
  p1, p2, z1, z2 = rng.normal(size=(4, BATCH, DIM))

  def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

  ce = lambda p, z: np.mean(-np.sum(softmax(z) * np.log(softmax(p)), axis=1))  # noqa: E731
  spec = losses.LossSpec(similarity="cross_entropy")
  np.testing.assert_allclose(losses.byol_loss(p1, p2, z1, z2, spec), ce(p1, z2) + ce(p2, z1), 1e-5)
  asym = losses.LossSpec(symmetric=False)
  value, grads = jax.value_and_grad(
    lambda p1, p2: losses.byol_loss(p1, p2, z1, z2, asym), argnums=(0, 1)
  )(p1, p2)
  np.testing.assert_allclose(value, np.mean(2 - 2 * np.sum(_unit(p1) * _unit(z2), axis=1)), 1e-5)
  assert np.all(grads[1] == 0)
  assert np.any(grads[0] != 0)
  # The targets get a gradient only without the stop-gradient.
  for stop in (True, False):
    spec = losses.LossSpec(stop_gradient=stop)
    g = jax.grad(lambda z, spec=spec: losses.byol_loss(p1, p2, z, z2, spec))(z1)
    assert np.any(g != 0) != stop


# --------------------------------------------------------------------------------------------
# The update step with a constant τ of 0 against SimSiam's step.

ENC = models.EncoderSpec("tiny", small_image_stem=True)
HEADS = models.HeadSpec(32, 16, 32, projector_layers=3, head_batchnorm="hidden+projector_output")
SIZE, LR = 16, 0.05


def _simsiam_hp(**kw):
  return byol.ByolHParams(
    peak_lr=LR, total_steps=10, warmup_steps=0, tau_base=0.0, tau_schedule="constant",
    weight_decay=0.0, momentum=0.0, optimizer="sgd", **kw,
  )  # fmt: skip


@functools.cache
def _simsiam_step():
  """One pmapped step over 8 devices (float64), from a fresh state; returns (state before,
  state after, metrics, the batch's normalised views)."""
  rng = np.random.default_rng(3)
  batch = {k: rng.uniform(size=(BATCH, SIZE, SIZE, 3)) for k in ("view1", "view2")}
  hp = _simsiam_hp(predictor_lr_decay=False)
  with jax.enable_x64(True):
    optimizer = byol.make_optimizer(hp)
    net = models.make_byol_network(ENC, HEADS)
    dummy = jnp.zeros((2, SIZE, SIZE, 3), jnp.float64)
    state = byol.init_state(net, optimizer, jax.random.PRNGKey(0), dummy, separate_target=False)
    update = byol.make_update_fn(
      models.make_byol_network(ENC, HEADS, axis_name="batch"), optimizer, hp, axis_name="batch"
    )
    devices = jax.local_devices()[:N_DEV]
    new, metrics = jax.pmap(update, axis_name="batch", devices=devices)(
      parallel.replicate(state, devices),
      parallel.shard(batch, devices),
      parallel.replicate(jax.random.PRNGKey(1), devices),
    )
    after, metrics = parallel.unreplicate((new, metrics))
    views = [np.asarray(device_augment.normalize(batch[k])) for k in ("view1", "view2")]
  return jax.device_get(state), after, metrics, views


def _cos(a, b):
  return jnp.sum(a * b, axis=1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1))


def test_constant_tau_of_zero_is_simsiam_without_target_parameters():
  """SimSiam's step written from its paper (Algorithm 1) on one device over the whole batch:
  L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2, D = -cos, SGD. byol_jax's loss is 4 + 4L, so its
  gradient is 4 times SimSiam's (configs/simsiam_r50.py converts the lr)."""
  before, after, metrics, (v1, v2) = _simsiam_step()
  assert before.target_params == {}
  assert before.target_state == {}
  assert after.target_params == {}
  assert after.target_state == {}
  net = models.make_byol_network(ENC, HEADS)

  def simsiam_loss(params):
    state = before.online_state
    out1, state = net.apply(params, state, v1, is_training=True)
    out2, state = net.apply(params, state, v2, is_training=True)
    z1, z2 = (jax.lax.stop_gradient(o["projection"]) for o in (out1, out2))
    loss = -_cos(out1["prediction"], z2).mean() / 2 - _cos(out2["prediction"], z1).mean() / 2
    return loss, state

  with jax.enable_x64(True):
    (loss, bn_state), grads = jax.value_and_grad(simsiam_loss, has_aux=True)(before.online_params)
    expected = jax.tree.map(lambda w, g: np.asarray(w - LR * 4 * g), before.online_params, grads)
  np.testing.assert_allclose(metrics["loss"], 4 + 4 * np.asarray(loss), rtol=1e-10)
  np.testing.assert_allclose(metrics["tau"], 0.0)
  # (The updates are ~1e-3; float64 rounding in BatchNorm over 2 examples per device leaves
  # differences of ~1e-9, a wrong gradient ~1e-4.)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-8),
    after.online_params,
    expected,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10),
    after.online_state,
    bn_state,
  )


def test_a_state_with_or_without_target_must_match_the_hyperparameters():
  before, _, _, _ = _simsiam_step()
  net = models.make_byol_network(ENC, HEADS)
  with_target = byol.ByolHParams(peak_lr=LR, total_steps=10, warmup_steps=0)
  update = byol.make_update_fn(net, byol.make_optimizer(with_target), with_target, axis_name=None)
  batch = {k: np.zeros((2, SIZE, SIZE, 3), np.float32) for k in ("view1", "view2")}
  with pytest.raises(ValueError, match="lacks target parameters"):
    update(jax.tree.map(jnp.asarray, before), batch, jax.random.PRNGKey(0))


# --------------------------------------------------------------------------------------------
# Each switch changes what it names.


def _params():
  """A parameter tree with a predictor, a projector and a norm."""
  return {
    "predictor/linear": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
    "projector/linear": {"w": jnp.ones((3, 2))},
    "res_net_tiny/~/initial_batchnorm": {"scale": jnp.ones(2)},
  }


def _warmup_cosine(step, peak, warmup, total):
  if step < warmup:
    return peak * step / warmup
  return 0.5 * peak * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adamw"])
def test_predictor_lr_not_decayed_stays_at_its_peak(optimizer):
  """SGD without momentum or decay moves each parameter by -lr x gradient: the predictor's lr
  is the peak at every step (times the multiplier), the rest follows warm-up and cosine. LARS and
  AdamW: the predictor's updates keep their size while the rest's shrink."""
  hp = byol.ByolHParams(
    peak_lr=0.4, total_steps=20, warmup_steps=5, weight_decay=0.0, momentum=0.0,
    optimizer=optimizer, predictor_lr_decay=False, predictor_lr_multiplier=2.0,
  )  # fmt: skip
  opt = byol.make_optimizer(hp)
  params = _params()
  state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  sizes = []
  for step in range(hp.total_steps):
    state = optimizers.with_schedule_step(state, step)
    updates, state = opt.update(grads, state, params)
    pred, proj = updates["predictor/linear"]["w"][0, 0], updates["projector/linear"]["w"][0, 0]
    sizes.append((float(pred), float(proj)))
    if optimizer == "sgd":
      np.testing.assert_allclose(pred, -0.4 * 2.0, rtol=1e-6)
      np.testing.assert_allclose(proj, -_warmup_cosine(step, 0.4, 5, 20), rtol=1e-5, atol=1e-7)
  pred, proj = np.abs(np.array(sizes)).T
  np.testing.assert_allclose(pred, pred[0], rtol=1e-3)  # constant
  assert proj[0] == 0
  assert proj[-1] < 0.05 * proj.max()


def test_frozen_predictor_never_moves_through_pretraining(tmp_path):
  """Through ``pretrain`` (AdamW, whose decoupled weight decay would move every kernel): the
  predictor's parameters after 6 steps are those of the initial state; the rest moved."""
  config = tiny_config(**{"optim.freeze_predictor": True, "optim.optimizer": "adamw"})
  config.optim.base_lr = 1e-2
  train.pretrain(config, str(tmp_path))
  ckpt = checkpointing.Checkpointer(os.path.join(str(tmp_path), "checkpoints"))
  optimizer = byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  initial = train.initial_state(config, optimizer)
  final = byol.TrainState(**ckpt.restore(initial._asdict()))
  ckpt.close()
  assert int(final.step) == 6
  for module, leaves in final.online_params.items():
    moved = max(
      float(np.max(np.abs(v - initial.online_params[module][k]))) for k, v in leaves.items()
    )
    assert (moved == 0) == module.startswith("predictor"), (module, moved)


def test_constant_tau_keeps_the_target_rate():
  hp = byol.ByolHParams(peak_lr=0.1, total_steps=10, warmup_steps=0, tau_base=0.7,
                        tau_schedule="constant")  # fmt: skip
  enc, heads = models.EncoderSpec("tiny", small_image_stem=True), models.HeadSpec(8, 4, 8)
  net = models.make_byol_network(enc, heads)
  opt = byol.make_optimizer(hp)
  state = byol.init_state(net, opt, jax.random.PRNGKey(0), jnp.zeros((2, SIZE, SIZE, 3)))
  update = jax.jit(byol.make_update_fn(net, opt, hp, axis_name=None))
  batch = {k: np.random.default_rng(4).uniform(size=(4, SIZE, SIZE, 3)) for k in ("view1", "view2")}
  for _ in range(2):
    new, metrics = update(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(metrics["tau"], 0.7)
    _, online = models.split_predictor(new.online_params)
    expected = jax.tree.map(lambda t, o: 0.7 * t + 0.3 * o, state.target_params, online)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), new.target_params, expected
    )
    state = new


def _head_modules(heads):
  net = models.make_byol_network(models.EncoderSpec("tiny", small_image_stem=True), heads)
  params, state = net.init(jax.random.PRNGKey(0), jnp.zeros((4, SIZE, SIZE, 3)), is_training=True)
  out, _ = net.apply(
    params,
    state,
    jnp.ones((4, SIZE, SIZE, 3)) * jnp.arange(4.0)[:, None, None, None],
    is_training=True,
  )
  heads_of = lambda tree, name: {k: v for k, v in tree.items() if k.startswith(name + "/")}  # noqa: E731
  return params, state, out, heads_of


@pytest.mark.parametrize(("projector", "predictor"), [(1, 1), (2, 3), (3, 2)])
def test_head_depths_are_counted_in_linear_layers(projector, predictor):
  params, _, out, heads_of = _head_modules(
    models.HeadSpec(32, 16, 24, projector_layers=projector, predictor_layers=predictor)
  )
  for name, depth, hidden in (("projector", projector, 32), ("predictor", predictor, 24)):
    linears = sorted(k for k in heads_of(params, name) if "/linear" in k)
    assert len(linears) == depth
    norms = [k for k in heads_of(params, name) if "norm" in k]
    assert len(norms) == depth - 1  # after each hidden layer
    widths = [params[k]["w"].shape[1] for k in linears]
    assert widths == [hidden] * (depth - 1) + [16]
  assert out["prediction"].shape == (4, 16)


@pytest.mark.parametrize(
  ("placement", "proj_norms", "pred_norms", "output_normalised"),
  [
    ("none", 0, 0, False),
    ("hidden", 1, 1, False),
    ("hidden+projector_output", 2, 1, True),
    ("all", 2, 2, True),
  ],
)
def test_head_batchnorm_placement_is_simsiams_table_3(
  placement, proj_norms, pred_norms, output_normalised
):
  params, state, out, heads_of = _head_modules(
    models.HeadSpec(32, 16, 24, head_batchnorm=placement)
  )
  # BatchNorm modules have moving averages; the output's has no scale or offset.
  for name, count in (("projector", proj_norms), ("predictor", pred_norms)):
    assert len({k.split("/~/")[0] for k in heads_of(state, name)}) == count
    assert len([k for k in heads_of(params, name) if "norm" in k]) == min(count, 1)
  # In training mode an output BatchNorm leaves each dimension with batch mean 0 and variance 1.
  z = np.asarray(out["projection"])
  assert (
    np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(z.var(0), 1, atol=1e-2)
  ) == output_normalised


def test_resuming_across_a_change_of_target_network_is_refused(tmp_path):
  """A run without a target network (τ = 0 throughout) resumes as itself, and refuses a config
  that keeps one (and so a checkpoint of another structure) with one line, the checkpoints kept."""
  simsiam = {"optim.tau_schedule": "constant", "optim.tau_base": 0.0, "num_steps": 3}
  train.pretrain(tiny_config(**simsiam), str(tmp_path))
  train.pretrain(tiny_config(**{**simsiam, "num_steps": 6}), str(tmp_path))
  with pytest.raises(UserError, match="target network: checkpoint none vs config kept"):
    train.pretrain(tiny_config(**{"num_steps": 9}), str(tmp_path))
  assert sorted(os.listdir(os.path.join(str(tmp_path), "checkpoints"))) == ["3", "6"]


def test_simclr_row_trains_through_pretrain_over_8_devices(tmp_path):
  """The unified objective on the real path: ``pretrain`` with the SimCLR row's overrides (β=1,
  no predictor, the online network as an un-stopped target), negatives gathered over 8 devices."""
  simclr = load_config_module("ablations").ROWS["simclr"].overrides
  metrics = train.pretrain(tiny_config(**{**simclr, "num_steps": 2}), str(tmp_path))
  assert np.isfinite(metrics["loss"])
  # 4 + 4α NT-Xent, and NT-Xent > 0 (the positive is one of the terms its log sums).
  assert metrics["loss"] > 4
  assert metrics["tau"] == 0.0


# --------------------------------------------------------------------------------------------
# The presets and the table of ablations.


def test_simsiam_r50_preset_runs_on_mocked_imagenet(tmp_path):
  """SimSiam's recipe (heads, SGD, no target, augmentations) for two steps; a tiny encoder, as
  ResNet-50 itself is tested elsewhere."""
  config = load_config_module("simsiam_r50").get_config()
  assert config_base.shares_target(config.optim)
  assert not config.optim.predictor_lr_decay
  # SimSiam's lr 0.05 and weight decay 1e-4 in byol_jax's loss units (4x the gradient).
  assert (config.optim.base_lr * 4, config.optim.weight_decay / 4) == (0.05, 1e-4)
  config_base.set_fields(config, {
    "model.encoder": "tiny", "model.conv_impl": "xla", "data.image_size": 32,
    "data.eval_resize": 36, "batch_size": 8, "num_steps": 2, "log_every_steps": 1,
  })  # fmt: skip
  with tfds.testing.mock_data(num_examples=16):
    metrics = train.pretrain(config, str(tmp_path))
  assert np.isfinite(metrics["loss"])
  assert metrics["tau"] == 0.0


def test_every_ablation_row_changes_its_fields_and_is_in_the_readme():
  """Each row's config differs from its base in exactly the fields the row names, validates,
  and README.md's table is the module's."""
  ablations = load_config_module("ablations")
  assert len(ablations.ROWS) >= 90
  for name, row in ablations.ROWS.items():
    config = ablations.get_config(name)
    config_base.validate_config(config)
    base = config_diff.flat_dict(ablations.get_config(row.paper.lower()).to_dict())
    flat = config_diff.flat_dict(config.to_dict())
    assert {k for k in flat if flat[k] != base[k]} == set(row.overrides), name
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  assert ablations.markdown_table() in readme, "README.md: paste `python configs/ablations.py`"
