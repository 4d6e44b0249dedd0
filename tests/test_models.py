"""Encoders, heads and their parameter names, counts and shapes."""

import haiku as hk
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


def _conv_reference(x, w, stride, padding):
  return jax.lax.conv_general_dilated(
    x, w, stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.parametrize(
  ("size", "kernel", "stride", "padding", "channels"),
  [
    (9, 3, 1, "SAME", 4),  # patches (im2col)
    (4, 3, 2, "SAME", 4),  # per-tap products
    (9, 3, 2, "SAME", 4),  # odd size, stride 2: SAME pads the extra pixel after
    (8, 7, 2, "SAME", 4),  # the ImageNet stem
    (8, 1, 2, "SAME", 4),  # projection shortcut
    (7, 3, 1, "VALID", 4),
    (8, 3, 1, ((2, 0), (1, 1)), 4),
    (2, 3, 1, "SAME", 4),  # every pixel meets every pixel: one product with a matrix of taps
    (1, 3, 1, "SAME", 4),
    (3, 3, 1, "SAME", 4),  # mostly padding: one product per kernel tap
    (2, 3, 2, "SAME", 4),
    (9, 3, 2, "SAME", models.IM2COL_MIN_CHANNELS),  # im2col with all taps gathered at once
  ],
)
def test_conv_as_matmul_equals_xla_convolution_and_its_gradients(
  size, kernel, stride, padding, channels
):
  rng = np.random.default_rng(size * 10 + kernel)
  x = jnp.asarray(rng.normal(size=(3, size, size, channels)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, channels, 5)), jnp.float32)
  strides = (stride, stride)

  def loss(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding)))

  want = jax.value_and_grad(loss(_conv_reference), (0, 1))(x, w)
  got = jax.value_and_grad(loss(models.conv2d_as_matmul), (0, 1))(x, w)
  assert (
    _conv_reference(x, w, strides, padding).shape
    == models.conv2d_as_matmul(x, w, strides, padding).shape
  )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_implementations_share_parameters_and_results():
  spec = models.EncoderSpec("resnet18")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 64, 64, 3)), jnp.float32)
  outs = {}
  for impl in models.CONV_IMPLS:
    net = models.make_byol_network(spec, models.HeadSpec(64, 16, 64), conv_impl=impl)
    params, state = net.init(jax.random.PRNGKey(0), x, True)
    outs[impl] = (params, net.apply(params, state, x, True)[0])
  p_xla, out_xla = outs["xla"]
  for impl in ("matmul", "winograd"):
    params, out = outs[impl]
    assert jax.tree.structure(params) == jax.tree.structure(p_xla)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p_xla)):
      np.testing.assert_array_equal(a, b)
    for key in ("embedding", "projection", "prediction"):
      np.testing.assert_allclose(out[key], out_xla[key], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="conv_impl"):
    models.make_byol_network(spec, models.HeadSpec(), conv_impl="fft").init(
      jax.random.PRNGKey(0), x, True
    )


@pytest.mark.parametrize("size", [8, 9])
def test_max_pool_same_equals_haiku(size):
  x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size, 3)), jnp.float32)
  want = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
  got = models.max_pool_same(x, window=3, stride=2)
  np.testing.assert_array_equal(got, want)
  # Random inputs have unique maxima, so the gradients agree too.
  grad = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)  # noqa: E731
  np.testing.assert_allclose(
    grad(lambda x: models.max_pool_same(x, 3, 2)),
    grad(lambda x: hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")),
    rtol=1e-6,
  )
