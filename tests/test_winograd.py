"""Winograd F(2x2, 3x3) against XLA's convolution: values and gradients, odd sizes, the dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import cpu_ops
from byol_jax.cpu_ops import conv_matmul, winograd


def _reference(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
  )


@pytest.mark.parametrize(
  ("height", "width", "cin", "cout"),
  [(8, 8, 4, 5), (5, 7, 3, 2), (1, 1, 2, 3), (2, 3, 6, 4), (16, 16, 16, 16)],
)
def test_conv3x3_equals_xla_convolution_and_its_gradients(height, width, cin, cout):
  rng = np.random.default_rng(height * 100 + width)
  x = jnp.asarray(rng.normal(size=(3, height, width, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(3, height, width, cout)), jnp.float32)

  def loss(conv):
    return lambda x, w: jnp.sum(conv(x, w) * cotangent)

  want = jax.jit(jax.value_and_grad(loss(_reference), (0, 1)))(x, w)
  got = jax.jit(jax.value_and_grad(loss(winograd.conv3x3), (0, 1)))(x, w)
  np.testing.assert_allclose(
    jax.jit(winograd.conv3x3)(x, w), _reference(x, w), rtol=1e-5, atol=1e-5
  )
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(np.max(np.abs(b)))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("transform", ["input", "output", "kernel"])
def test_transform_gradients_are_the_transposes(transform):
  # <T x, v> == <x, T^T v> for the hand-written transposes of the (linear) transforms.
  rng = np.random.default_rng(0)
  if transform == "input":  # image [2, 5, 6, 3] -> tiles [16, 2 * 3 * 3, 3]
    fn, plain = winograd.input_tiles, winograd._tiles
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
  elif transform == "kernel":  # kernel [3, 3, 2, 3] -> [16, 2, 3]
    fn, plain = winograd.kernel_transform, lambda w: winograd._two_sided(winograd._G, w)
    x = jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32)
  else:  # products [16, 2 * 3 * 3, 4] -> image [2, 5, 6, 4]
    fn = lambda m: winograd.output_image(m, (2, 5, 6, 4))  # noqa: E731
    plain = lambda m: winograd._output_image(m, (2, 5, 6, 4))  # noqa: E731
    x = jnp.asarray(rng.normal(size=(16, 18, 4)), jnp.float32)
  out, vjp = jax.vjp(jax.jit(fn), x)
  v = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  f64 = lambda a: np.asarray(a, np.float64).ravel()  # noqa: E731 (the sums cancel: add in float64)
  np.testing.assert_allclose(
    np.dot(f64(out), f64(v)), np.dot(f64(x), f64(vjp(v)[0])), rtol=1e-5, atol=1e-5
  )
  # The same as autodiff's transpose of the plain transform.
  (want,) = jax.linear_transpose(plain, x)(v)
  np.testing.assert_allclose(vjp(v)[0], want, rtol=1e-5, atol=1e-5)


def test_kernel_transform_is_g_g_gt():
  # Lavin & Gray's G, written out here, and G g G^T per channel pair in float64.
  g_matrix = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
  w = np.random.default_rng(0).normal(size=(3, 3, 5, 7))
  want = np.einsum("ai,ijck,bj->abck", g_matrix, w, g_matrix).reshape(16, 5, 7)
  got = jax.jit(winograd.kernel_transform)(jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bfloat16_inputs_keep_their_dtype():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  w = jnp.ones((3, 3, 2, 3), jnp.bfloat16)
  out = jax.jit(winograd.conv3x3)(x, w)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), _reference(x, w).astype(jnp.float32))
  assert jax.grad(lambda x: jnp.sum(winograd.conv3x3(x, w)).astype(jnp.float32))(x).dtype == (
    jnp.bfloat16
  )


def test_conv2d_as_matmul_uses_winograd_only_where_it_pays():
  def winograd_used(x_shape, w_shape, stride=(1, 1)):
    x, w = jnp.zeros(x_shape), jnp.zeros(w_shape)

    def fn(x, w):
      return conv_matmul.conv2d_as_matmul(x, w, stride, "SAME", use_winograd=True)

    # Winograd's input transform is the custom-gradient function winograd.input_tiles.
    return "name=input_tiles" in str(jax.make_jaxpr(fn)(x, w))

  size, ch = conv_matmul.WINOGRAD_MIN_SIZE, conv_matmul.WINOGRAD_MIN_CHANNELS
  assert winograd_used((2, size, size, ch), (3, 3, ch, 8))
  # Too small a map, too few channels, stride 2 or a 1x1 kernel: im2col or per-tap products.
  assert not winograd_used((2, size - 1, size - 1, ch), (3, 3, ch, 8))
  assert not winograd_used((2, size, size, ch - 1), (3, 3, ch - 1, 8))
  assert not winograd_used((2, 2 * size, 2 * size, ch), (3, 3, ch, 8), stride=(2, 2))
  assert not winograd_used((2, size, size, ch), (1, 1, ch, 8))
  assert cpu_ops.resolve_conv_impl("auto", "cpu") == "winograd"
  assert cpu_ops.resolve_conv_impl("auto", "gpu") == "xla"
