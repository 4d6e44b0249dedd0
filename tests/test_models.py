"""Encoders, heads and their parameter names, counts and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import models


def _shapes(spec, size=32):
  net = models.make_byol_network(spec, models.HeadSpec())
  return jax.eval_shape(
    lambda k, x: net.init(k, x, True), jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3))
  )


def _resnet_count(blocks, channels, bottleneck, width):
  """Parameters of a ResNet v1 torso counted layer by layer (convs without bias, BN scale+offset)."""
  conv = lambda k, i, o: k * k * i * o + 2 * o  # noqa: E731 (conv followed by its BatchNorm)
  stem = 64 * width
  total, c_in = conv(7, 3, stem), stem
  for n, c in zip(blocks, channels):
    c *= width
    for b in range(n):
      if bottleneck:
        total += conv(1, c_in, c // 4) + conv(3, c // 4, c // 4) + conv(1, c // 4, c)
      else:
        total += conv(3, c_in, c) + conv(3, c, c)
      if b == 0 and (bottleneck or c_in != c):
        total += conv(1, c_in, c)
      c_in = c
  return total


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  ("name", "width", "expected"),
  [
    # torchvision's counts without the classifier (fc) layer.
    ("resnet18", 1, 11_689_512 - 513_000),
    ("resnet50", 1, 25_557_032 - 2_049_000),
    ("resnet50", 2, _resnet_count((3, 4, 6, 3), (256, 512, 1024, 2048), True, 2)),
    ("resnet200", 1, _resnet_count((3, 24, 36, 3), (256, 512, 1024, 2048), True, 1)),
  ],
)
def test_encoder_parameter_counts(name, width, expected):
  params, _ = _shapes(models.EncoderSpec(name, width))
  encoder = {k: v for k, v in params.items() if not k.startswith(("projector", "predictor"))}
  assert _count(encoder) == expected


def test_heads_match_the_paper():
  params, state = _shapes(models.EncoderSpec("resnet50"))
  projector = {k: v for k, v in params.items() if k.startswith("projector")}
  predictor = {k: v for k, v in params.items() if k.startswith("predictor")}
  # Linear(2048 -> 4096, bias) + BN(4096) + Linear(4096 -> 256, no bias)
  assert _count(projector) == 2048 * 4096 + 4096 + 2 * 4096 + 4096 * 256
  assert _count(predictor) == 256 * 4096 + 4096 + 2 * 4096 + 4096 * 256
  assert "b" not in params["projector/linear_1"]
  # Original checkpoint names.
  for name in [
    "res_net50/~/initial_conv",
    "res_net50/~/initial_batchnorm",
    "res_net50/~/block_group_0/~/block_0/~/conv_0",
    "res_net50/~/block_group_3/~/block_2/~/batchnorm_2",
    "res_net50/~/block_group_1/~/block_0/~/shortcut_conv",
    "projector/linear",
    "projector/batch_norm",
    "predictor/linear_1",
  ]:
    assert name in params, name
  assert "res_net50/~/initial_batchnorm/~/mean_ema" in state


def test_output_shapes_and_target_without_predictor():
  net = models.make_byol_network(
    models.EncoderSpec("tiny", small_image_stem=True), models.HeadSpec(32, 16, 32)
  )
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 32, 32, 3))
  params, state = jax.jit(lambda k: net.init(k, x, True))(jax.random.PRNGKey(0))
  out, _ = jax.jit(lambda p, s: net.apply(p, s, x, True))(params, state)
  assert out["embedding"].shape == (4, 64)
  assert out["projection"].shape == out["prediction"].shape == (4, 16)
  # Haiku v1 bottleneck blocks zero-initialise their last BN scale; basic blocks do not.
  assert np.all(params["res_net_tiny/~/block_group_0/~/block_0/~/batchnorm_1"]["scale"] == 1.0)
  r50, _ = _shapes(models.EncoderSpec("resnet50"))
  assert "res_net50/~/block_group_0/~/block_0/~/batchnorm_2" in r50
  # The target needs no predictor parameters at all.
  pred, rest = models.split_predictor(params)
  assert pred
  assert all(k.startswith("predictor") for k in pred)
  target_out, _ = jax.eval_shape(
    lambda p, s: net.apply(p, s, x, True, with_predictor=False), rest, state
  )
  assert "prediction" not in target_out


def _tiny_config(fields):
  """The base config with the tiny x2 encoder on the small-image stem, then ``fields`` set."""
  from byol_jax import config_base

  config = config_base.get_base_config()
  stem = {"model.encoder": "tiny", "model.width_multiplier": "2", "model.small_image_stem": "True"}
  return config_base.set_fields(config, {**stem, **fields})


def test_tiny_encoder_leaves_out_stages_of_zero_blocks():
  from byol_jax import encoder as encoder_lib
  from byol_jax import interop
  from byol_jax.errors import UserError

  full, _ = _shapes(models.EncoderSpec("tiny", 2, True))
  spec = models.EncoderSpec("tiny", 2, True, tiny_blocks=(0, 1, 2, 1))
  params, _ = _shapes(spec)
  groups = {k.split("/~/")[1] for k in params if "block_group" in k}
  assert groups == {"block_group_1", "block_group_2", "block_group_3"}
  # The stem (16 channels) feeds the stride-2 stage of 32 channels through a projection.
  assert params["res_net_tiny/~/block_group_1/~/block_0/~/shortcut_conv"]["w"].shape == (
    1,
    1,
    16,
    32,
  )
  assert "res_net_tiny/~/block_group_2/~/block_1/~/conv_1" in params
  encoder = lambda p: {k: v for k, v in p.items() if k.startswith("res_net")}  # noqa: E731
  stage0 = lambda p: {k: v for k, v in p.items() if "block_group_0" in k}  # noqa: E731
  # One block more in stage 2 (64 channels): two 3x3 convs and their BatchNorms.
  extra = 2 * (3 * 3 * 64 * 64 + 2 * 64)
  assert _count(encoder(params)) == _count(encoder(full)) - _count(stage0(full)) + extra
  # The counts are read back from the module names (how imported checkpoints are recognised).
  assert interop.infer_spec(params) == spec
  assert interop.infer_spec(full) == models.EncoderSpec("tiny", 2, True)
  # A config names the same spec, and a checkpoint of the full network does not fit it.
  config = _tiny_config({"model.tiny_blocks": "(0,1,2,1)"})
  assert encoder_lib.spec_from_config(config.model) == spec
  config.model.encoder = "resnet18"  # the block counts are the tiny encoder's alone
  assert encoder_lib.spec_from_config(config.model).tiny_blocks == (1, 1, 1, 1)
  full_params, full_state = encoder_lib.expected_shapes(models.EncoderSpec("tiny", 2, True))
  encoder_lib.check_fits(spec, *encoder_lib.expected_shapes(spec), "run/checkpoints/10")
  with pytest.raises(UserError, match=r"blocks \(0, 1, 2, 1\)"):
    encoder_lib.check_fits(spec, full_params, full_state, "run/checkpoints/10")
  net = models.make_byol_network(spec, models.HeadSpec(32, 16, 32))
  x = jnp.zeros((2, 16, 16, 3))
  out, _ = jax.eval_shape(
    lambda k: net.apply(*net.init(k, x, True), x, True), jax.random.PRNGKey(0)
  )
  assert out["embedding"].shape == (2, 128)


def test_tiny_encoder_channels_are_configurable():
  from byol_jax import encoder as encoder_lib
  from byol_jax import interop
  from byol_jax.errors import UserError

  spec = models.EncoderSpec(
    "tiny", 2, True, tiny_blocks=(0, 1, 1, 1), tiny_channels=(8, 12, 32, 128)
  )
  params, _ = _shapes(spec)

  def conv(group, name):
    return params[f"res_net_tiny/~/block_group_{group}/~/block_0/~/{name}"]["w"].shape

  # Stem min(64, 8) x 2 = 16 channels, then 24, 64 and 256: each stage's first conv and
  # projection shortcut go from the previous width to its own.
  assert params["res_net_tiny/~/initial_conv"]["w"].shape == (3, 3, 3, 16)
  assert [conv(g, "conv_0") for g in (1, 2, 3)] == [(3, 3, 16, 24), (3, 3, 24, 64), (3, 3, 64, 256)]
  assert conv(3, "shortcut_conv") == (1, 1, 64, 256)
  # The representation is as wide as the last stage, and the projector takes it in.
  assert params["projector/linear"]["w"].shape[0] == 256
  assert interop.infer_spec(params) == spec
  config = _tiny_config({"model.tiny_blocks": "(0,1,1,1)", "model.tiny_channels": "(8,12,32,128)"})
  assert encoder_lib.spec_from_config(config.model) == spec
  default = models.EncoderSpec("tiny", 2, True, tiny_blocks=(0, 1, 1, 1))
  with pytest.raises(UserError, match=r"channels \(8, 12, 32, 128\)"):
    encoder_lib.check_fits(spec, *encoder_lib.expected_shapes(default), "run/checkpoints/10")


def test_stems_set_the_resolution():
  for small, size in [(True, 32), (False, 64)]:
    params, _ = _shapes(models.EncoderSpec("resnet18", small_image_stem=small), size=size)
    kernel = params["res_net18/~/initial_conv"]["w"].shape
    assert kernel == ((3, 3, 3, 64) if small else (7, 7, 3, 64))
