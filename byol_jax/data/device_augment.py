"""The colour part of the augmentation in JAX, to run on the accelerator inside a jitted step.

As in the original code, the host pipeline can stop after the random resized crop and the flip
(``pretrain_batches(..., host_colour_ops=False)``); :func:`colour_augment` then applies colour
jitter, grayscale, Gaussian blur and solarisation on the device, one key per image. The ops and
their distributions are those of ``byol_jax.data.augment`` (the TensorFlow version); see its
docstring for the exact semantics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from byol_jax.data.params import GRAY_WEIGHTS, SOLARIZE_THRESHOLD, AugmentParams, blur_radius

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(images: jax.Array) -> jax.Array:
  """Maps integer images to float32 in [0, 1]; floating-point images pass through unchanged."""
  if not jnp.issubdtype(images.dtype, jnp.floating):
    return images.astype(jnp.float32) / 255.0
  return images


def normalize(images: jax.Array) -> jax.Array:
  """Subtracts the ImageNet channel mean and divides by its standard deviation."""
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  return (images - mean) / std


# --------------------------------------------------------------------------------------------
# Colour ops with explicit magnitudes, on one [H, W, 3] image.


def rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Hue (in turns, [0, 1)), saturation and value of an [..., 3] RGB image."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  sat = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  hue = jnp.where(
    value == r,
    (g - b) / safe,
    jnp.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
  )
  hue = jnp.where(chroma > 0, hue / 6.0, 0.0)
  hue = jnp.where(hue < 0, hue + 1.0, hue)
  return hue, sat, value


def hsv_to_rgb(hue: jax.Array, sat: jax.Array, value: jax.Array) -> jax.Array:
  """Inverse of :func:`rgb_to_hsv`; returns an [..., 3] RGB image."""
  h6 = jnp.mod(hue, 1.0) * 6.0
  sector = jnp.floor(h6)
  frac = h6 - sector
  p = value * (1.0 - sat)
  q = value * (1.0 - sat * frac)
  t = value * (1.0 - sat * (1.0 - frac))
  sector = sector.astype(jnp.int32) % 6
  r = jnp.select([sector == i for i in range(6)], [value, q, p, p, t, value])
  g = jnp.select([sector == i for i in range(6)], [t, value, value, q, p, p])
  b = jnp.select([sector == i for i in range(6)], [p, p, t, value, value, q])
  return jnp.stack([r, g, b], axis=-1)


def adjust_brightness(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Adds ``delta`` to every value."""
  return image + delta


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each channel's distance to its spatial mean by ``factor``."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplies the HSV saturation by ``factor`` (clipped to [0, 1])."""
  hue, sat, value = rgb_to_hsv(image)
  return hsv_to_rgb(hue, jnp.clip(sat * factor, 0.0, 1.0), value)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotates the HSV hue by ``delta`` turns."""
  hue, sat, value = rgb_to_hsv(image)
  return hsv_to_rgb(jnp.mod(hue + delta, 1.0), sat, value)


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma of the original code, copied to the three channels."""
  gray = image @ jnp.asarray(GRAY_WEIGHTS, image.dtype)
  return jnp.repeat(gray[..., None], 3, axis=-1)


def solarize(image: jax.Array) -> jax.Array:
  """x -> x if x < 0.5 else 1 - x."""
  return jnp.where(image < SOLARIZE_THRESHOLD, image, 1.0 - image)


def _band_matrix(size: int, kernel: jax.Array, radius: int) -> jax.Array:
  """[size, size] matrix M with M[i, j] = kernel[j - i + radius]: a 'SAME' zero-padded conv."""
  offsets = jnp.arange(size)[None, :] - jnp.arange(size)[:, None] + radius
  inside = (offsets >= 0) & (offsets <= 2 * radius)
  return jnp.where(inside, kernel[jnp.clip(offsets, 0, 2 * radius)], 0.0)


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur of an [H, W, C] image with 'SAME' zero padding."""
  if radius <= 0:
    return image
  x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-(x**2) / (2.0 * jnp.asarray(sigma, jnp.float32) ** 2))
  kernel = kernel / jnp.sum(kernel)
  rows = _band_matrix(image.shape[0], kernel, radius)
  cols = _band_matrix(image.shape[1], kernel, radius)
  # Banded matrix products batch well under vmap (one kernel per image); full float32 precision
  # because accelerators may default to reduced-precision matmuls.
  highest = jax.lax.Precision.HIGHEST
  out = jnp.einsum("ij,jwc->iwc", rows, image, precision=highest)
  return jnp.einsum("kw,iwc->ikc", cols, out, precision=highest)


# --------------------------------------------------------------------------------------------
# Random colour augmentation.


# Jitter op kinds, in the order in which the random permutation is drawn.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


def _jitter_op(image: jax.Array, kind: jax.Array, magnitude: jax.Array) -> jax.Array:
  """One jitter op of a traced ``kind`` (a ``_BRIGHTNESS``... value), clipped to [0, 1].

  Under ``vmap`` a ``lax.switch`` over the four ops computes all four, two of them with an HSV
  round trip each. Here saturation and hue share one round trip (the other's parameter left
  neutral, which changes no bit: ``mod(h, 1) == h`` and ``clip(s, 0, 1) == s`` on HSV values),
  so each position costs about half as much and gives the same values.
  """
  hue, sat, value = rgb_to_hsv(image)
  hue = jnp.where(kind == _HUE, jnp.mod(hue + magnitude, 1.0), hue)
  sat = jnp.where(kind == _SATURATION, jnp.clip(sat * magnitude, 0.0, 1.0), sat)
  out = jnp.where(
    kind == _BRIGHTNESS,
    adjust_brightness(image, magnitude),
    jnp.where(kind == _CONTRAST, adjust_contrast(image, magnitude), hsv_to_rgb(hue, sat, value)),
  )
  return jnp.clip(out, 0.0, 1.0)


def _colour_jitter(image: jax.Array, key: jax.Array, params: AugmentParams) -> jax.Array:
  k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

  def uniform(k: jax.Array, lo: float, hi: float) -> jax.Array:
    return jax.random.uniform(k, (), jnp.float32, lo, hi)

  ops = []  # (kind, magnitude) of the ops with a non-zero strength
  if params.brightness > 0:
    ops.append((_BRIGHTNESS, uniform(k_b, -params.brightness, params.brightness)))
  if params.contrast > 0:
    ops.append((_CONTRAST, uniform(k_c, 1.0 - params.contrast, 1.0 + params.contrast)))
  if params.saturation > 0:
    ops.append((_SATURATION, uniform(k_s, 1.0 - params.saturation, 1.0 + params.saturation)))
  if params.hue > 0:
    ops.append((_HUE, uniform(k_h, -params.hue, params.hue)))
  if not ops:
    return image
  order = jnp.argsort(jax.random.uniform(k_order, (len(ops),)))
  kinds = jnp.asarray([kind for kind, _ in ops])[order]
  magnitudes = jnp.stack([magnitude for _, magnitude in ops])[order]
  for position in range(len(ops)):
    image = _jitter_op(image, kinds[position], magnitudes[position])
  return image


def _colour_augment_one(image: jax.Array, key: jax.Array, params: AugmentParams) -> jax.Array:
  keys = jax.random.split(key, 7)
  k_jitter, k_jitter_apply, k_gray, k_sigma, k_blur_apply, k_solar, _ = keys

  def bernoulli(k: jax.Array, prob: float) -> jax.Array:
    return jax.random.uniform(k, ()) < prob

  if params.jitter_prob > 0:
    jittered = _colour_jitter(image, k_jitter, params)
    image = jnp.where(bernoulli(k_jitter_apply, params.jitter_prob), jittered, image)
  if params.gray_prob > 0:
    image = jnp.where(bernoulli(k_gray, params.gray_prob), to_grayscale(image), image)
  image = jnp.clip(image, 0.0, 1.0)
  radius = blur_radius(image.shape[0], params.blur_kernel_fraction)
  if params.blur_prob > 0 and radius > 0 and params.blur_sigma_max > 0:
    sigma = jax.random.uniform(
      k_sigma, (), jnp.float32, params.blur_sigma_min, params.blur_sigma_max
    )
    blurred = gaussian_blur(image, sigma, radius)
    image = jnp.where(bernoulli(k_blur_apply, params.blur_prob), blurred, image)
  if params.solarize_prob > 0:
    image = jnp.where(bernoulli(k_solar, params.solarize_prob), solarize(image), image)
  return jnp.clip(image, 0.0, 1.0)


def colour_augment(images: jax.Array, rng: jax.Array, params: AugmentParams) -> jax.Array:
  """Colour jitter, grayscale, blur and solarisation of a batch, one random key per image.

  Args:
    images: float [N, H, W, 3] in [0, 1] (after crop and flip).
    rng: a JAX PRNG key.
    params: the view's augmentation parameters (a static Python value under jit).

  Returns:
    float32 [N, H, W, 3] in [0, 1], outside the gradient.
  """
  images = to_float(images)
  keys = jax.random.split(rng, images.shape[0])
  out = jax.vmap(lambda image, key: _colour_augment_one(image, key, params))(images, keys)
  return jax.lax.stop_gradient(out)
