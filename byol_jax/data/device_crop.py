"""The random resized crop, the flip and the evaluation view in JAX (``data.pipeline="device"``).

The boxes are drawn as ``byol_jax.data.augment.sample_crop_box`` draws them (see that module's
docstring): area fraction uniform in [crop_area_min, crop_area_max], aspect log-uniform in
[crop_aspect_min, crop_aspect_max], sides rounded; ``crop_scheme="original"`` clamps the sides to
the image (one draw), ``"rejection"`` takes the first of 10 draws that fits, else the largest
centred box whose aspect is in range. Offsets are uniform over the positions where the box fits.

The box is resized by ``jax.image.scale_and_translate`` (bicubic, Keys a = -0.5, half-pixel
centres, no antialiasing: the kernel of ``tf.image.resize(..., "bicubic", antialias=False)``)
straight from the whole image, so boxes of every size are one static-shape op. The pixels
equal TensorFlow's resize of the cut-out box except within two pixels of the box's edge, where
the kernel reads the image's pixels beyond the box (TensorFlow, given only the box, reweights
its edge pixels instead); at the image's own edge both reweight alike.

The evaluation view (:func:`centre_view`: short side resized, then a centre square) is the same
kernel over the whole image, so it equals ``byol_jax.data.augment.centre_crop`` (TensorFlow):
to float rounding where the resize factor puts the samples on quarter pixels (e.g. 32 -> 64
or 40 -> 16), within 1e-3 elsewhere (TensorFlow tabulates the kernel at 1/1024 pixel). It serves
the evaluation of in-memory images and ``load_encoder``, without TensorFlow.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax.data.params import AugmentParams

CROP_ATTEMPTS = 10


def _box_sides(fraction, log_aspect, h_f, w_f):
  """Rounded (height, width) of a box of ``fraction`` of the area and aspect exp(log_aspect)."""
  target = fraction * h_f * w_f
  aspect = jnp.exp(log_aspect)
  crop_w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  return crop_h, crop_w


def _draw_sides(key: jax.Array, params: AugmentParams, num: int, h_f, w_f):
  area_key, aspect_key = jax.random.split(key)
  fraction = jax.random.uniform(
    area_key, (num,), jnp.float32, params.crop_area_min, params.crop_area_max
  )
  log_aspect = jax.random.uniform(
    aspect_key,
    (num,),
    jnp.float32,
    math.log(params.crop_aspect_min),
    math.log(params.crop_aspect_max),
  )
  return _box_sides(fraction, log_aspect, h_f, w_f)


def _rejection_sides(crop_h, crop_w, height: int, width: int, params: AugmentParams):
  """The first draw that fits, else the largest box in the aspect range; and whether one fit."""
  valid = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
  first = jnp.argmax(valid)
  fits = jnp.any(valid)
  aspect = width / height
  fb_w = round(height * params.crop_aspect_max) if aspect > params.crop_aspect_max else width
  fb_h = round(width / params.crop_aspect_min) if aspect < params.crop_aspect_min else height
  fb_h, fb_w = min(max(fb_h, 1), height), min(max(fb_w, 1), width)
  return jnp.where(fits, crop_h[first], fb_h), jnp.where(fits, crop_w[first], fb_w), fits


def sample_crop_box(
  key: jax.Array, height: int, width: int, params: AugmentParams
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """One random-resized-crop box of an image of static size; int32 (offset_y, offset_x, h, w)."""
  sides_key, y_key, x_key = jax.random.split(key, 3)
  rejection = params.crop_scheme == "rejection"
  crop_h, crop_w = _draw_sides(sides_key, params, CROP_ATTEMPTS if rejection else 1, height, width)
  if rejection:
    box_h, box_w, fits = _rejection_sides(crop_h, crop_w, height, width, params)
  else:
    # At least one pixel: only images a few pixels wide can round a side to 0.
    box_h, box_w, fits = jnp.clip(crop_h[0], 1, height), jnp.clip(crop_w[0], 1, width), True
  off_y = jax.random.randint(y_key, (), 0, height - box_h + 1)
  off_x = jax.random.randint(x_key, (), 0, width - box_w + 1)
  off_y = jnp.where(fits, off_y, (height - box_h) // 2)
  off_x = jnp.where(fits, off_x, (width - box_w) // 2)
  return off_y, off_x, box_h, box_w


def resized_crop(image: jax.Array, box, size: int) -> jax.Array:
  """The ``box`` (offset_y, offset_x, h, w) of an [H, W, 3] image, bicubic-resized to float32
  [size, size, 3] in [0, 1] (uint8 images are scaled by 1/255)."""
  off_y, off_x, box_h, box_w = (jnp.asarray(v, jnp.float32) for v in box)
  scale = jnp.stack([size / box_h, size / box_w])
  # scale_and_translate samples output pixel i at input coordinate (i + 0.5 - t) / s - 0.5:
  # t = -offset * s puts output pixel 0's footprint at the box's first pixel.
  translation = -jnp.stack([off_y, off_x]) * scale
  pixels = image.astype(jnp.float32)
  resized = jax.image.scale_and_translate(
    pixels, (size, size, 3), (0, 1), scale, translation, method="cubic", antialias=False
  )
  peak = 255.0 if jnp.issubdtype(image.dtype, jnp.integer) else 1.0
  # Bicubic overshoots; clipped after scaling, as in the host pipeline.
  return jnp.clip(resized / peak, 0.0, 1.0)


def crop_and_flip(image: jax.Array, key: jax.Array, params: AugmentParams, size: int) -> jax.Array:
  """Random resized crop then random left-right flip of one [H, W, 3] image (float32 [0, 1])."""
  crop_key, flip_key = jax.random.split(key)
  height, width = image.shape[:2]
  view = resized_crop(image, sample_crop_box(crop_key, height, width, params), size)
  flip = jax.random.uniform(flip_key, ()) < params.flip_prob
  return jnp.where(flip, view[:, ::-1], view)


def crop_and_flip_batch(
  images: jax.Array, keys: jax.Array, params: AugmentParams, size: int
) -> jax.Array:
  """:func:`crop_and_flip` of each image of [N, H, W, 3] with its own key, outside the gradient."""
  views = jax.vmap(lambda image, key: crop_and_flip(image, key, params, size))(images, keys)
  return jax.lax.stop_gradient(views)


def centre_view_geometry(height: int, width: int, image_size: int, resize_size: int):
  """(resized height, resized width, crop offset y, crop offset x) of the evaluation view.

  As ``augment.centre_crop`` computes them (float32 ratio, round half to even), so that both
  paths cut the same square.
  """
  ratio = np.float32(resize_size) / np.float32(min(height, width))
  new_h = max(int(np.round(np.float32(height) * ratio)), image_size)
  new_w = max(int(np.round(np.float32(width) * ratio)), image_size)
  return new_h, new_w, (new_h - image_size) // 2, (new_w - image_size) // 2


@functools.partial(jax.jit, static_argnums=(1, 2))
def centre_view(images: jax.Array, image_size: int, resize_size: int) -> jax.Array:
  """Evaluation views of [N, H, W, 3] images (uint8, or float in [0, 1]): the short side
  resized to ``resize_size`` (bicubic, as :func:`resized_crop`), the centre ``image_size``
  square cut out; float32 [N, image_size, image_size, 3] in [0, 1]."""
  height, width = images.shape[1:3]
  new_h, new_w, off_y, off_x = centre_view_geometry(height, width, image_size, resize_size)
  # Output pixel i samples the resized image's pixel i + offset: translation -offset.
  scale = jnp.array([new_h / height, new_w / width], jnp.float32)
  translation = -jnp.array([off_y, off_x], jnp.float32)
  pixels = images.astype(jnp.float32)
  views = jax.vmap(
    lambda im: jax.image.scale_and_translate(
      im, (image_size, image_size, 3), (0, 1), scale, translation, method="cubic", antialias=False
    )
  )(pixels)
  peak = 255.0 if jnp.issubdtype(images.dtype, jnp.integer) else 1.0
  return jnp.clip(views / peak, 0.0, 1.0)
