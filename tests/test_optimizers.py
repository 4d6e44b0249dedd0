"""LARS in the paper's order, against a numpy re-derivation of the update rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import optimizers


def _params(rng):
  return {
    "enc/~/conv_0": {"w": rng.normal(size=(3, 3, 2, 4))},
    "enc/~/batchnorm_0": {"scale": rng.normal(size=(4,)), "offset": rng.normal(size=(4,))},
    "projector/~/linear": {"w": rng.normal(size=(4, 5)), "b": rng.normal(size=(5,))},
    "projector/~/batch_norm": {"scale": rng.normal(size=(5,)), "offset": rng.normal(size=(5,))},
  }


def _np_lars_steps(params, grads_seq, lrs, wd, momentum, eta):
  """The original BYOL rule: wd -> trust ratio -> momentum -> -lr, biases and norms excluded."""
  params = {m: dict(v) for m, v in params.items()}
  mu = {m: {n: np.zeros_like(x) for n, x in v.items()} for m, v in params.items()}
  for grads, lr in zip(grads_seq, lrs):
    for m in params:
      for n, w in params[m].items():
        g = grads[m][n]
        if not (n == "b" or "norm" in m.split("/")[-1]):
          g = g + wd * w
          wn, gn = np.linalg.norm(w), np.linalg.norm(g)
          g = g * (eta * wn / gn if wn > 0 and gn > 0 else 1.0)
        mu[m][n] = momentum * mu[m][n] + g
        params[m][n] = w - lr * mu[m][n]
  return params


def test_mask_excludes_biases_and_norms():
  mask = optimizers.lars_mask(_params(np.random.default_rng(0)))
  assert mask["enc/~/conv_0"]["w"]
  assert mask["projector/~/linear"]["w"]
  assert not mask["projector/~/linear"]["b"]
  assert not any(mask["enc/~/batchnorm_0"].values())
  assert not any(mask["projector/~/batch_norm"].values())


def test_lars_matches_numpy_over_steps_with_changing_lr():
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads_seq = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(3)]
  lrs = [0.5, 1.5, 0.25]
  wd, momentum, eta = 1e-2, 0.9, 1e-3
  opt = optimizers.lars(lambda count: jnp.asarray(lrs)[count], wd, momentum, eta)
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = opt.init(p)
  for grads in grads_seq:
    updates, state = opt.update(jax.tree.map(jnp.float32, grads), state, p)
    p = optax.apply_updates(p, updates)
  expected = _np_lars_steps(params, grads_seq, lrs, wd, momentum, eta)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p, expected)

  # optax.lars multiplies by the learning rate before the momentum trace, so it drifts from the
  # paper's rule as soon as the learning rate changes.
  ref = optax.lars(
    lambda count: jnp.asarray(lrs)[count],
    wd,
    weight_decay_mask=optimizers.lars_mask,
    trust_coefficient=eta,
    trust_ratio_mask=optimizers.lars_mask,
    momentum=momentum,
  )
  q = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  rstate = ref.init(q)
  for grads in grads_seq:
    updates, rstate = ref.update(jax.tree.map(jnp.float32, grads), rstate, q)
    q = optax.apply_updates(q, updates)
  diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), q, expected)))
  assert diff > 1e-4


def test_trust_ratio_is_one_where_a_norm_is_zero_and_equals_optax_elsewhere():
  rng = np.random.default_rng(5)
  w = {"zero": jnp.zeros((3, 4)), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  g = {"zero": jnp.ones((3, 4)), "b": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
  scale = optimizers.scale_by_trust_ratio(1e-3)
  got, _ = scale.update(g, scale.init(w), w)
  np.testing.assert_array_equal(got["zero"], g["zero"])  # ||w|| = 0
  ratio = 1e-3 * np.linalg.norm(w["b"]) / np.linalg.norm(g["b"])
  np.testing.assert_allclose(got["b"], g["b"] * ratio, rtol=1e-6)
  want, _ = optax.scale_by_trust_ratio(trust_coefficient=1e-3).update(g, optax.EmptyState(), w)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  # ||g|| = 0: the update stays zero (and finite).
  got, _ = scale.update({"zero": w["zero"], "b": jnp.zeros(5)}, scale.init(w), g)
  np.testing.assert_array_equal(got["b"], np.zeros(5))


def _byol_params(rng):
  return dict(
    _params(rng),
    **{"predictor/~/linear": {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=(3,))}},
  )


def _one_update(opt, params, grads):
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  updates, _ = opt.update(jax.tree.map(jnp.float32, grads), opt.init(p), p)
  return updates


def test_make_lars_is_lars():
  rng = np.random.default_rng(1)
  params = _byol_params(rng)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
  got = _one_update(optimizers.make("lars", 0.5, 1e-2, 0.9, 1e-3), params, grads)
  want = _one_update(optimizers.lars(0.5, 1e-2, 0.9, 1e-3), params, grads)
  jax.tree.map(np.testing.assert_allclose, got, want)


def test_make_sgd_is_masked_weight_decay_momentum_sgd():
  rng = np.random.default_rng(2)
  params = _byol_params(rng)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
  got = _one_update(optimizers.make("sgd", 0.5, 1e-2, 0.9), params, grads)
  conv = "enc/~/conv_0"
  np.testing.assert_allclose(
    got[conv]["w"], -0.5 * (grads[conv]["w"] + 1e-2 * params[conv]["w"]), rtol=1e-5
  )
  bias = "projector/~/linear"
  np.testing.assert_allclose(got[bias]["b"], -0.5 * grads[bias]["b"], rtol=1e-5)


def test_make_adamw_first_step_is_sign_like_plus_decoupled_decay():
  rng = np.random.default_rng(3)
  params = _byol_params(rng)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
  got = _one_update(optimizers.make("adamw", 1e-3, 0.1, 0.9), params, grads)
  conv, norm = "enc/~/conv_0", "enc/~/batchnorm_0"
  # Adam's first step is lr * g / (|g| + eps) = lr * sign(g); decay lr * wd * w where unmasked.
  np.testing.assert_allclose(
    got[conv]["w"],
    -1e-3 * (np.sign(grads[conv]["w"]) + 0.1 * params[conv]["w"]),
    rtol=1e-4,
    atol=1e-7,
  )
  np.testing.assert_allclose(
    got[norm]["scale"], -1e-3 * np.sign(grads[norm]["scale"]), rtol=1e-4, atol=1e-7
  )


def test_predictor_lr_multiplier_scales_only_the_predictor():
  rng = np.random.default_rng(4)
  params = _byol_params(rng)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
  for name in optimizers.OPTIMIZERS:
    base = _one_update(optimizers.make(name, 0.5, 1e-2), params, grads)
    fast = _one_update(
      optimizers.make(name, 0.5, 1e-2, predictor_lr_multiplier=10.0), params, grads
    )
    for module in base:
      factor = 10.0 if module.startswith("predictor") else 1.0
      for n in base[module]:
        np.testing.assert_allclose(fast[module][n], factor * base[module][n], rtol=1e-5)


def test_make_rejects_unknown_names():
  with pytest.raises(ValueError, match="Unknown optimizer"):
    optimizers.make("rmsprop", 0.1)


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_with_schedule_step_sets_the_learning_rate_step(name):
  rng = np.random.default_rng(6)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _byol_params(rng))
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  lrs = jnp.asarray([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
  opt = optimizers.make(name, lambda count: lrs[count], 1e-2, predictor_lr_multiplier=2.0)
  _, state = opt.update(grads, opt.init(params), params)  # one update: every count is 1
  at_four = optimizers.with_schedule_step(state, jnp.asarray(4))
  # The update uses the learning rate of step 4, with the moments of the one update done ...
  got, _ = opt.update(grads, at_four, params)
  fixed = optimizers.make(name, lambda count: lrs[4], 1e-2, predictor_lr_multiplier=2.0)
  want, _ = fixed.update(grads, state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  # ... and nothing else changed: Adam's bias correction still counts one update.
  has_count = lambda s: "count" in getattr(s, "_fields", ())  # noqa: E731
  counts = [
    (type(s).__name__, int(s.count))
    for s in jax.tree.leaves(at_four, is_leaf=has_count)
    if has_count(s)
  ]
  expected = [("ScaleByScheduleState", 4)]
  if name == "adamw":
    expected = [("ScaleByAdamState", 1), *expected]
  assert counts == expected
