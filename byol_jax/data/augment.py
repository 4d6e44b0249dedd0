"""The paper's image augmentations (Grill et al. 2020, Table 6), per image, in TensorFlow.

Every random choice uses stateless ops keyed by an explicit shape-[2] integer seed, so a view is a
pure function of (image, seed, params): the same seed gives the same view eagerly, inside
``tf.function`` and inside a parallel ``tf.data`` map, whatever the threading.

The semantics follow the original BYOL code:

* random resized crop: area fraction uniform in [crop_area_min, crop_area_max], aspect ratio
  log-uniform in [crop_aspect_min, crop_aspect_max]. ``crop_scheme="original"`` (the default, the
  original code's ``_decode_and_random_crop``) draws one area and one aspect, clamps the box's width
  and height to the image and places it uniformly; ``"rejection"`` redraws boxes that do not fit, up
  to 10 attempts, then takes a centre crop of the largest box whose aspect is in range (the
  Inception / torchvision scheme, which discards large crops more often). Bicubic resize without
  antialiasing, then clip to [0, 1].
* colour jitter, applied with probability ``jitter_prob``, the four ops in a random order, each
  followed by a clip to [0, 1]: brightness adds a delta uniform in [-b, b]; contrast scales the
  distance to each channel's spatial mean by a factor uniform in [1 - c, 1 + c]; saturation scales
  the HSV saturation by a factor uniform in [1 - s, 1 + s] (clipped to [0, 1]); hue shifts the HSV
  hue by a delta uniform in [-h, h] (cyclically).
* grayscale with probability ``gray_prob`` (luma weights 0.2989, 0.5870, 0.1140, copied to all
  three channels), drawn independently of the jitter.
* Gaussian blur with probability ``blur_prob``: radius ``int(side * blur_kernel_fraction / 2)``
  (kernel 23 at 224, 3 at 32), sigma uniform in [blur_sigma_min, blur_sigma_max], separable
  depthwise convolution with 'SAME' zero padding, as in the original.
* solarisation with probability ``solarize_prob``: x -> x if x < 0.5 else 1 - x.

``byol_jax.data.device_augment`` implements the colour, blur and solarisation part in JAX with the
same distribution, for running it on the accelerator.
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

from byol_jax.data.params import (  # noqa: F401  (re-exported: augment.AugmentParams etc.)
  GRAY_WEIGHTS,
  PAPER_T,
  PAPER_T_PRIME,
  PRESETS,
  SOLARIZE_THRESHOLD,
  AugmentParams,
  blur_radius,
  get_preset,
)

CROP_ATTEMPTS = 10


# --------------------------------------------------------------------------------------------
# Random draws.


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  seeds = tf.random.experimental.stateless_split(seed, num=num)
  return [seeds[i] for i in range(num)]


def _uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed=seed, minval=minval, maxval=maxval, dtype=tf.float32)


def _bernoulli(seed: tf.Tensor, prob: float) -> tf.Tensor:
  # Strict '<' so that prob 0 never and prob 1 always applies.
  return _uniform(seed) < prob


def _maybe_apply(fn, image: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
  if prob <= 0.0:
    return image
  if prob >= 1.0:
    return fn(image)
  return tf.cond(_bernoulli(seed, prob), lambda: fn(image), lambda: image)


# --------------------------------------------------------------------------------------------
# Crop and flip.


def sample_crop_box(
  height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, params: AugmentParams
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Samples a random-resized-crop box; returns int32 (offset_y, offset_x, crop_h, crop_w).

  ``params.crop_scheme`` chooses how (module docstring); both use the seed's four sub-seeds the
  same way: area, aspect, vertical and horizontal offset.
  """
  if params.crop_scheme == "original":
    return _clamped_crop_box(height, width, seed, params)
  return _rejection_crop_box(height, width, seed, params)


def _box_sides(
  fraction: tf.Tensor, log_aspect: tf.Tensor, h_f: tf.Tensor, w_f: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
  """(height, width) of a box of ``fraction`` of the image's area and aspect exp(log_aspect)."""
  target = fraction * (h_f * w_f)
  aspect = tf.exp(log_aspect)
  crop_w = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  return crop_h, crop_w


def _random_offsets(
  height: tf.Tensor, width: tf.Tensor, box_h: tf.Tensor, box_w: tf.Tensor, seeds: list
) -> tuple[tf.Tensor, tf.Tensor]:
  """Offsets uniform over the positions where the box fits."""
  y_seed, x_seed = seeds
  off_y = tf.random.stateless_uniform([], y_seed, 0, height - box_h + 1, dtype=tf.int32)
  off_x = tf.random.stateless_uniform([], x_seed, 0, width - box_w + 1, dtype=tf.int32)
  return off_y, off_x


def _clamped_crop_box(
  height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, params: AugmentParams
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """The original code's box: one draw, each side clamped to the image, a uniform position."""
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  area_seed, aspect_seed, y_seed, x_seed = _split(seed, 4)
  fraction = _uniform(area_seed, params.crop_area_min, params.crop_area_max)
  log_aspect = _uniform(
    aspect_seed, math.log(params.crop_aspect_min), math.log(params.crop_aspect_max)
  )
  crop_h, crop_w = _box_sides(
    fraction, log_aspect, tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  )
  # At least one pixel: only images a few pixels wide can round a side to 0.
  box_h = tf.clip_by_value(crop_h, 1, height)
  box_w = tf.clip_by_value(crop_w, 1, width)
  off_y, off_x = _random_offsets(height, width, box_h, box_w, [y_seed, x_seed])
  return off_y, off_x, box_h, box_w


def _rejection_crop_box(
  height: tf.Tensor, width: tf.Tensor, seed: tf.Tensor, params: AugmentParams
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """The Inception box: the first of 10 draws that fits, else the largest centred box in range."""
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  shape_seed, aspect_seed, y_seed, x_seed = _split(seed, 4)
  h_f = tf.cast(height, tf.float32)
  w_f = tf.cast(width, tf.float32)
  # All attempts are drawn at once; the first valid one wins.
  fraction = tf.random.stateless_uniform(
    [CROP_ATTEMPTS], shape_seed, params.crop_area_min, params.crop_area_max
  )
  log_aspect = tf.random.stateless_uniform(
    [CROP_ATTEMPTS],
    aspect_seed,
    math.log(params.crop_aspect_min),
    math.log(params.crop_aspect_max),
  )
  crop_h, crop_w = _box_sides(fraction, log_aspect, h_f, w_f)
  valid = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
  first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
  any_valid = tf.reduce_any(valid)

  # Fallback: the largest centred box whose aspect ratio lies in range.
  image_aspect = w_f / h_f
  fb_w = tf.where(
    image_aspect > params.crop_aspect_max,
    tf.cast(tf.round(h_f * params.crop_aspect_max), tf.int32),
    width,
  )
  fb_h = tf.where(
    image_aspect < params.crop_aspect_min,
    tf.cast(tf.round(w_f / params.crop_aspect_min), tf.int32),
    height,
  )
  fb_w = tf.clip_by_value(fb_w, 1, width)
  fb_h = tf.clip_by_value(fb_h, 1, height)

  box_h = tf.where(any_valid, crop_h[first], fb_h)
  box_w = tf.where(any_valid, crop_w[first], fb_w)
  rand_y, rand_x = _random_offsets(height, width, box_h, box_w, [y_seed, x_seed])
  off_y = tf.where(any_valid, rand_y, (height - box_h) // 2)
  off_x = tf.where(any_valid, rand_x, (width - box_w) // 2)
  return off_y, off_x, box_h, box_w


def _resize(image: tf.Tensor, output_size: int) -> tf.Tensor:
  """Bicubic resize to a square; returns float32 in [0, 1] whatever the input dtype."""
  scale = 255.0 if image.dtype == tf.uint8 else 1.0
  resized = tf.image.resize(
    tf.cast(image, tf.float32), [output_size, output_size], method="bicubic", antialias=False
  )
  # Bicubic overshoots; the original clips after scaling.
  return tf.clip_by_value(resized / scale, 0.0, 1.0)


def random_resized_crop(
  image: tf.Tensor, seed: tf.Tensor, params: AugmentParams, output_size: int
) -> tf.Tensor:
  """Random resized crop of an [H, W, 3] image to float32 [S, S, 3] in [0, 1]."""
  shape = tf.shape(image)
  off_y, off_x, box_h, box_w = sample_crop_box(shape[0], shape[1], seed, params)
  crop = tf.slice(image, tf.stack([off_y, off_x, 0]), tf.stack([box_h, box_w, 3]))
  return _resize(crop, output_size)


def random_flip(image: tf.Tensor, seed: tf.Tensor, prob: float) -> tf.Tensor:
  """Flips left-right with probability ``prob``."""
  return _maybe_apply(lambda x: tf.reverse(x, axis=[1]), image, seed, prob)


# --------------------------------------------------------------------------------------------
# Colour ops with explicit magnitudes; device_augment mirrors each one.


def adjust_brightness(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Adds ``delta`` to every value."""
  return image + delta


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Scales each channel's distance to its spatial mean by ``factor``."""
  mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
  return (image - mean) * factor + mean


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Multiplies the HSV saturation by ``factor`` (clipped to [0, 1])."""
  return tf.image.adjust_saturation(image, factor)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Rotates the HSV hue by ``delta`` (in turns, cyclically)."""
  return tf.image.adjust_hue(image, delta)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma of the original code, copied to the three channels."""
  gray = tf.tensordot(image, tf.constant(GRAY_WEIGHTS, tf.float32), axes=[[-1], [0]])
  return tf.tile(gray[..., None], [1, 1, 3])


def solarize(image: tf.Tensor) -> tf.Tensor:
  """x -> x if x < 0.5 else 1 - x."""
  return tf.where(image < SOLARIZE_THRESHOLD, image, 1.0 - image)


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Separable Gaussian blur of an [H, W, C] image with 'SAME' zero padding."""
  if radius <= 0:
    return image
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  kernel = kernel / tf.reduce_sum(kernel)
  channels = image.shape[-1] or 3
  size = 2 * radius + 1
  kernel_h = tf.tile(tf.reshape(kernel, [1, size, 1, 1]), [1, 1, channels, 1])
  kernel_v = tf.tile(tf.reshape(kernel, [size, 1, 1, 1]), [1, 1, channels, 1])
  out = image[None]
  out = tf.nn.depthwise_conv2d(out, kernel_h, strides=[1, 1, 1, 1], padding="SAME")
  out = tf.nn.depthwise_conv2d(out, kernel_v, strides=[1, 1, 1, 1], padding="SAME")
  return out[0]


# --------------------------------------------------------------------------------------------
# Random colour ops.


def colour_jitter(image: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
  """Brightness, contrast, saturation and hue jitter in a random order (always applied)."""
  order_seed, b_seed, c_seed, s_seed, h_seed = _split(seed, 5)
  ops = []
  if params.brightness > 0:
    delta = _uniform(b_seed, -params.brightness, params.brightness)
    ops.append(lambda x: adjust_brightness(x, delta))
  if params.contrast > 0:
    factor_c = _uniform(c_seed, 1.0 - params.contrast, 1.0 + params.contrast)
    ops.append(lambda x: adjust_contrast(x, factor_c))
  if params.saturation > 0:
    factor_s = _uniform(s_seed, 1.0 - params.saturation, 1.0 + params.saturation)
    ops.append(lambda x: adjust_saturation(x, factor_s))
  if params.hue > 0:
    delta_h = _uniform(h_seed, -params.hue, params.hue)
    ops.append(lambda x: adjust_hue(x, delta_h))
  if not ops:
    return image
  # A uniformly random permutation: the ranks of i.i.d. uniform keys.
  order = tf.argsort(tf.random.stateless_uniform([len(ops)], order_seed))
  branches = [lambda x, op=op: tf.clip_by_value(op(x), 0.0, 1.0) for op in ops]
  for position in range(len(ops)):
    image = tf.switch_case(order[position], [functools.partial(op, image) for op in branches])
  return image


def colour_augment_image(image: tf.Tensor, seed: tf.Tensor, params: AugmentParams) -> tf.Tensor:
  """Jitter, grayscale, blur and solarisation of a float [H, W, 3] image in [0, 1]."""
  jitter_seed, jitter_apply, gray_seed, blur_seed, blur_apply, solar_seed = _split(seed, 6)
  image = tf.cast(image, tf.float32)
  image = _maybe_apply(
    lambda x: colour_jitter(x, jitter_seed, params), image, jitter_apply, params.jitter_prob
  )
  image = _maybe_apply(to_grayscale, image, gray_seed, params.gray_prob)
  image = tf.clip_by_value(image, 0.0, 1.0)
  side = image.shape[0]
  if side is None:
    raise ValueError("colour_augment_image needs a static image height for the blur kernel.")
  radius = blur_radius(side, params.blur_kernel_fraction)
  if radius > 0 and params.blur_sigma_max > 0:
    sigma = _uniform(blur_seed, params.blur_sigma_min, params.blur_sigma_max)
    image = _maybe_apply(
      lambda x: gaussian_blur(x, sigma, radius), image, blur_apply, params.blur_prob
    )
  image = _maybe_apply(solarize, image, solar_seed, params.solarize_prob)
  return tf.clip_by_value(image, 0.0, 1.0)


def view_seeds(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """The (crop, flip, colour) seeds of one view from its shape-[2] seed."""
  crop_seed, flip_seed, colour_seed = _split(tf.convert_to_tensor(seed), 3)
  return crop_seed, flip_seed, colour_seed


def finish_view(
  crop: tf.Tensor,
  flip_seed: tf.Tensor,
  colour_seed: tf.Tensor,
  params: AugmentParams,
  output_size: int,
  colour_ops: bool = True,
) -> tf.Tensor:
  """Resize, flip and (optionally) colour ops of a crop: the rest of :func:`augment_view`."""
  view = _resize(crop, output_size)
  view = random_flip(view, flip_seed, params.flip_prob)
  view = tf.ensure_shape(view, [output_size, output_size, 3])
  if colour_ops:
    view = colour_augment_image(view, colour_seed, params)
  return view


def finish_view_uint8(
  crop: tf.Tensor, flip_seed: tf.Tensor, params: AugmentParams, output_size: int
) -> tf.Tensor:
  """Resize and flip of a uint8 crop to uint8 [S, S, 3], for colour ops on the device.

  Equals ``round(255 * finish_view(..., colour_ops=False))`` (up to float rounding at exact
  ties) in fewer, cheaper ops: rounding before the flip moves a quarter of the bytes.
  """
  resized = tf.image.resize(
    tf.cast(crop, tf.float32), [output_size, output_size], method="bicubic", antialias=False
  )
  view = tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)
  view = random_flip(view, flip_seed, params.flip_prob)
  return tf.ensure_shape(view, [output_size, output_size, 3])


def augment_view(
  image: tf.Tensor,
  seed: tf.Tensor,
  params: AugmentParams,
  output_size: int,
  colour_ops: bool = True,
) -> tf.Tensor:
  """One augmented view of a uint8 or float [H, W, 3] image as float32 [S, S, 3] in [0, 1].

  Args:
    image: decoded image of any size; uint8 in [0, 255] or float in [0, 1].
    seed: shape-[2] integer seed; the view is a deterministic function of it.
    params: the view's augmentation parameters.
    output_size: side S of the square output.
    colour_ops: if False only crop and flip are applied (colour, blur and solarisation then run
      on the device, see ``device_augment.colour_augment``).
  """
  crop_seed, flip_seed, colour_seed = view_seeds(seed)
  shape = tf.shape(image)
  off_y, off_x, box_h, box_w = sample_crop_box(shape[0], shape[1], crop_seed, params)
  crop = tf.slice(image, tf.stack([off_y, off_x, 0]), tf.stack([box_h, box_w, 3]))
  return finish_view(crop, flip_seed, colour_seed, params, output_size, colour_ops)


def centre_crop(image: tf.Tensor, image_size: int, resize_size: int) -> tf.Tensor:
  """Evaluation view: resize the short side to ``resize_size`` (bicubic), centre-crop a square.

  Returns float32 [image_size, image_size, 3] in [0, 1].
  """
  scale = 255.0 if image.dtype == tf.uint8 else 1.0
  shape = tf.shape(image)
  h = tf.cast(shape[0], tf.float32)
  w = tf.cast(shape[1], tf.float32)
  ratio = resize_size / tf.minimum(h, w)
  new_h = tf.maximum(tf.cast(tf.round(h * ratio), tf.int32), image_size)
  new_w = tf.maximum(tf.cast(tf.round(w * ratio), tf.int32), image_size)
  resized = tf.image.resize(
    tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bicubic", antialias=False
  )
  off_y = (new_h - image_size) // 2
  off_x = (new_w - image_size) // 2
  crop = tf.slice(resized, tf.stack([off_y, off_x, 0]), [image_size, image_size, 3])
  return tf.clip_by_value(crop / scale, 0.0, 1.0)
