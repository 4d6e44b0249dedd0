"""The CPU lowering: convolutions as matrix products and the separable max-pool against XLA's,
and which layers :func:`byol_jax.cpu_ops.lowered` hands to it."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import cpu_ops, models
from byol_jax.cpu_ops import conv_matmul
from byol_jax.cpu_ops.max_pool import max_pool_same


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
    (9, 3, 2, "SAME", conv_matmul.IM2COL_MIN_CHANNELS),  # im2col with all taps gathered at once
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
  got = jax.value_and_grad(loss(conv_matmul.conv2d_as_matmul), (0, 1))(x, w)
  assert (
    _conv_reference(x, w, strides, padding).shape
    == conv_matmul.conv2d_as_matmul(x, w, strides, padding).shape
  )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_implementations_share_parameters_and_results():
  spec = models.EncoderSpec("resnet18")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 64, 64, 3)), jnp.float32)
  outs = {}
  for impl in cpu_ops.CONV_IMPLS:
    net = cpu_ops.lowered(models.make_byol_network(spec, models.HeadSpec(64, 16, 64)), impl)
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
    cpu_ops.lowered(models.make_byol_network(spec, models.HeadSpec()), "fft")


@pytest.mark.parametrize("size", [8, 9])
def test_max_pool_same_equals_haiku(size):
  x = jnp.asarray(np.random.default_rng(size).normal(size=(2, size, size, 3)), jnp.float32)
  want = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
  got = max_pool_same(x, window=3, stride=2)
  np.testing.assert_array_equal(got, want)
  # Random inputs have unique maxima, so the gradients agree too.
  grad = lambda f: jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(x)  # noqa: E731
  np.testing.assert_allclose(
    grad(lambda x: max_pool_same(x, 3, 2)),
    grad(lambda x: hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")),
    rtol=1e-6,
  )


def _jaxpr(network, x, *args):
  """The jaxpr of ``network.apply(params, state, x, *args)``, as text."""
  params, state = jax.eval_shape(lambda k: network.init(k, x, *args), jax.random.PRNGKey(0))
  return str(jax.make_jaxpr(lambda p, s: network.apply(p, s, x, *args))(params, state))


def test_lowering_takes_convolutions_and_max_pool_from_xla_on_cpu_only():
  # The ImageNet stem (7x7 convolution, max-pool) at 32x32: 4x4 maps of 16 channels in stage 1,
  # where Winograd applies.
  network = models.make_byol_network(models.EncoderSpec("tiny"), models.HeadSpec(32, 16, 32))
  x = jnp.zeros((2, 32, 32, 3))
  assert cpu_ops.lowered(network, "xla") is network  # the GPU/TPU path: XLA's own ops
  xla = _jaxpr(network, x, True)
  assert "conv_general_dilated" in xla
  assert "reduce_window_max" in xla
  for impl in ("matmul", "winograd"):
    jaxpr = _jaxpr(cpu_ops.lowered(network, impl), x, True)
    assert "conv_general_dilated" not in jaxpr, impl
    assert "reduce_window" not in jaxpr, impl
    # Winograd's input transform is the custom-gradient function winograd.input_tiles.
    assert ("name=input_tiles" in jaxpr) == (impl == "winograd")


def test_layers_outside_the_lowering_stay_with_haiku():
  def forward(x):
    # Haiku's integer window (1, 3, 3, 1) is lowered; VALID pooling and dilated convolutions
    # are not, and compute as Haiku's own.
    a = hk.MaxPool(3, 2, "SAME")(x)
    b = hk.MaxPool((1, 2, 2, 1), (1, 2, 2, 1), "VALID")(x)
    c = hk.Conv2D(4, 3, rate=2, name="dilated")(x)
    return jnp.sum(a) + jnp.sum(b) + jnp.sum(c)

  network = hk.without_apply_rng(hk.transform_with_state(forward))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 3)), jnp.float32)
  params, state = network.init(jax.random.PRNGKey(0), x)
  jaxpr = _jaxpr(cpu_ops.lowered(network, "matmul"), x)
  assert jaxpr.count("reduce_window_max") == 1
  assert jaxpr.count("conv_general_dilated") == 1
  np.testing.assert_allclose(
    cpu_ops.lowered(network, "matmul").apply(params, state, x)[0],
    network.apply(params, state, x)[0],
    rtol=1e-5,
  )
