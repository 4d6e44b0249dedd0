"""bfloat16 mixed precision: what stays float32, what computes in bfloat16, and how close the
losses of bfloat16 and float32 runs stay, with XLA's convolutions (the GPU/TPU path) and the CPU
lowering alike."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import tiny_config

from byol_jax import (
  byol,
  config_base,
  config_diff,
  cpu_ops,
  models,
  precision,
  train,
)
from byol_jax.errors import UserError

ENC = models.EncoderSpec("tiny", small_image_stem=True)
HEADS = models.HeadSpec(32, 16, 32)
# The tiny config's schedule at base_lr 0.4 (batch 16): 2 warm-up steps of 8.
HP = byol.ByolHParams(peak_lr=0.025, total_steps=8, warmup_steps=2)
BATCH, SIZE, STEPS = 16, 16, 8


def _batch(seed):
  rng = np.random.default_rng(seed)
  return {
    k: rng.uniform(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32) for k in ("view1", "view2")
  }


def _dtypes(tree):
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


def _network(conv_impl):
  return cpu_ops.lowered(models.make_byol_network(ENC, HEADS), conv_impl)


@functools.cache
def _step(dtype, conv_impl):
  """The compiled update step of the tiny ResNet, its HLO and first state."""
  # The lowering inside the precision interceptor, as train.build_network builds it.
  network = precision.mixed_precision(_network(conv_impl), dtype)
  optimizer = byol.make_optimizer(HP)
  dummy = jnp.zeros((2, SIZE, SIZE, 3))
  state = jax.jit(lambda k: byol.init_state(network, optimizer, k, dummy))(jax.random.PRNGKey(0))
  lowered = jax.jit(byol.make_update_fn(network, optimizer, HP, axis_name=None)).lower(
    state, _batch(0), jax.random.PRNGKey(1)
  )
  return lowered.compile(), lowered.as_text(), state


def _convolutions(hlo, conv_impl):
  """The lines of the convolutions: XLA's, or the matrix products the CPU lowering makes them."""
  op = "convolution(" if conv_impl == "xla" else "dot_general"
  return [line for line in hlo.splitlines() if op in line]


def test_bfloat16_step_convolves_in_bfloat16_and_keeps_float32_state(conv_impl):
  update, hlo, state = _step("bfloat16", conv_impl)
  convs = _convolutions(hlo, conv_impl)
  # Forward and backward convolutions: 16 at least (5 convolutions, 2 views, 3 passes each).
  assert len(convs) >= 16
  assert all("xbf16>" in line.rsplit("->", 1)[-1] for line in convs), convs[:3]
  state, metrics = update(state, _batch(0), jax.random.PRNGKey(1))
  assert _dtypes(state.online_params) == {"float32"}
  assert _dtypes(state.target_params) == {"float32"}
  assert _dtypes(state.opt_state) <= {"float32", "int32"}
  # BatchNorm moving averages (and their counters).
  assert _dtypes(state.online_state) == {"float32", "int32"}
  assert _dtypes(state.target_state) == {"float32", "int32"}
  assert metrics["loss"].dtype == jnp.float32
  assert np.isfinite(metrics["loss"])


def test_float32_step_has_no_bfloat16(conv_impl):
  _, hlo, _ = _step("float32", conv_impl)
  assert _convolutions(hlo, conv_impl)
  assert "bf16" not in hlo


def test_bfloat16_forward_is_close_to_float32():
  network = models.make_byol_network(ENC, HEADS)
  images = jnp.asarray(_batch(0)["view1"])
  initial = _step("float32", "xla")[2]
  params, state = initial.online_params, initial.online_state
  bf16 = precision.mixed_precision(network, jnp.bfloat16)
  (out32, state32), (out16, state16) = jax.jit(
    lambda p, s, x: (
      network.apply(p, s, x, is_training=True),
      bf16.apply(p, s, x, is_training=True),
    )
  )(params, state, images)
  for key in ("embedding", "projection", "prediction"):
    assert out16[key].dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out32[key])))
    error = float(jnp.max(jnp.abs(out16[key] - out32[key])))
    # bfloat16 keeps 8 bits of mantissa (0.4% rounding) per operation.
    assert 0 < error < 0.05 * scale, key
  # BatchNorm's statistics are float32 statistics of (bfloat16-computed) activations.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.02), state16, state32)


def test_layers_see_bfloat16_and_batchnorm_sees_float32():
  seen = []

  def record(next_f, args, kwargs, context):
    out = next_f(*args, **kwargs)
    if context.method_name == "__call__":
      seen.append((type(context.module).__name__, args[0].dtype, out.dtype))
    return out

  def forward(x):
    # Registered inside the transform, so it runs after (inside) the precision interceptor.
    with hk.intercept_methods(record):
      h = hk.Linear(8)(x)
      h = hk.BatchNorm(True, True, 0.9)(h, is_training=True)
      return {"out": hk.Linear(4)(jax.nn.relu(h))}

  network = hk.without_apply_rng(hk.transform_with_state(forward))
  x = jnp.ones((4, 3))
  params, state = network.init(jax.random.PRNGKey(0), x)
  seen.clear()
  out, new_state = precision.mixed_precision(network, "bfloat16").apply(params, state, x)
  assert [r for r in seen if r[0] != "ExponentialMovingAverage"] == [
    ("Linear", jnp.bfloat16, jnp.bfloat16),
    ("BatchNorm", jnp.float32, jnp.float32),
    ("Linear", jnp.bfloat16, jnp.bfloat16),
  ]
  # BatchNorm's moving averages of the mean and variance.
  assert [r[1] for r in seen if r[0] == "ExponentialMovingAverage"] == [jnp.float32] * 2
  assert out["out"].dtype == jnp.float32
  assert _dtypes(new_state) == {"float32", "int32"}


def test_bfloat16_and_float32_runs_agree_in_loss(conv_impl):
  """8 steps of the tiny model in both precisions, from the same initial state and data."""
  (update32, _, state32) = _step("float32", conv_impl)
  (update16, _, state16) = _step("bfloat16", conv_impl)
  key = jax.random.PRNGKey(1)
  trajectory, same_state = [], []
  for step in range(STEPS):
    batch = _batch(step)
    # From the float32 run's state: the precision error of one step alone.
    _, m16_here = update16(state32, batch, key)
    state32, m32 = update32(state32, batch, key)
    state16, m16 = update16(state16, batch, key)
    same_state.append(abs(float(m16_here["loss"]) - float(m32["loss"])) / float(m32["loss"]))
    trajectory.append(abs(float(m16["loss"]) - float(m32["loss"])))
  # Stated tolerances, 4-5x above those measured on XLA:CPU (same state: at most 0.25% of the
  # loss; trajectories, which the updates slowly pull apart: at most 0.018, mean 0.008, on a
  # loss of about 3.5).
  assert max(same_state) < 0.01, same_state
  assert np.mean(trajectory) < 0.03, trajectory
  assert max(trajectory) < 0.1, trajectory


def test_train_builds_the_network_in_the_configured_precision(conv_impl):
  images = jnp.zeros((2, SIZE, SIZE, 3))
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(**{"model.compute_dtype": dtype, "model.conv_impl": conv_impl})
    assert train.compute_dtype(config) == jnp.dtype(dtype)
    network = train.build_network(config, None)
    params, state = jax.eval_shape(
      lambda x, n=network: n.init(jax.random.PRNGKey(0), x, is_training=True), images
    )
    assert _dtypes(params) == {"float32"}
    jaxpr = str(
      jax.make_jaxpr(functools.partial(network.apply, is_training=True))(params, state, images)
    )
    assert ("bf16" in jaxpr) == (dtype == "bfloat16")


def test_auto_compute_dtype_is_bfloat16_on_accelerators_only():
  assert precision.resolve_compute_dtype("auto", "cpu") == jnp.float32
  assert precision.resolve_compute_dtype("auto", "gpu") == jnp.bfloat16
  assert precision.resolve_compute_dtype("auto", "tpu") == jnp.bfloat16
  assert precision.resolve_compute_dtype("float32", "tpu") == jnp.float32
  assert train.compute_dtype(tiny_config()) == jnp.float32  # the tests run on the CPU


def test_unknown_compute_dtype_is_a_one_line_error():
  with pytest.raises(UserError, match="compute_dtype='float16' is not one of"):
    config_base.validate_config(tiny_config(**{"model.compute_dtype": "float16"}))


def test_compute_dtype_is_not_part_of_the_architecture():
  saved = tiny_config(**{"model.compute_dtype": "float32"}).to_dict()
  assert not config_diff.architecture_mismatch(
    saved, tiny_config(**{"model.compute_dtype": "bfloat16"}).to_dict()
  )
  assert config_diff.architecture_mismatch(saved, tiny_config(**{"model.bn_eps": 1e-3}).to_dict())


def test_saved_configs_compare_as_json_gives_them_back():
  import json

  wanted = tiny_config().to_dict()
  saved = json.loads(json.dumps(wanted))  # tuples come back as lists
  del saved["model"]["tiny_blocks"]  # a checkpoint written before the field existed
  defaults = config_base.get_base_config().to_dict()
  assert not config_diff.architecture_mismatch(saved, wanted, defaults)
  other = tiny_config(**{"model.tiny_blocks": (0, 1, 1, 1)}).to_dict()
  assert config_diff.architecture_mismatch(saved, other, defaults) == [
    "model.tiny_blocks: checkpoint (1, 1, 1, 1) vs config (0, 1, 1, 1)"
  ]
