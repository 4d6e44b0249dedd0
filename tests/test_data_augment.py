"""Tests of the augmentations: each op against a numpy/colorsys reference or its defining property,
the random choices' frequencies, and agreement of the TensorFlow (host) and JAX (device) versions.
"""

from __future__ import annotations

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from byol_jax.config_base import PAPER_VIEW1, PAPER_VIEW2
from byol_jax.data import augment as A
from byol_jax.data import device_augment as D
from byol_jax.errors import UserError

# Everything off: the starting point for testing one random op at a time.
NOTHING = A.AugmentParams(
  flip_prob=0.0, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0
)


def _image(size: int = 8, seed: int = 0, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(lo, hi, (size, size, 3)).astype(np.float32)


def _tf_draws(image: np.ndarray, params: A.AugmentParams, num: int) -> np.ndarray:
  """``num`` colour augmentations of one image with seeds (0, i), in one graph."""
  seeds = tf.stack([tf.zeros([num], tf.int64), tf.range(num, dtype=tf.int64)], axis=1)
  x = tf.constant(image)

  @tf.function
  def run(seeds):
    return tf.map_fn(
      lambda s: A.colour_augment_image(x, s, params),
      seeds,
      fn_output_signature=tf.TensorSpec(image.shape, tf.float32),
    )

  return run(seeds).numpy()


def _jax_draws(image: np.ndarray, params: A.AugmentParams, num: int) -> np.ndarray:
  images = jnp.broadcast_to(jnp.asarray(image), (num, *image.shape))
  fn = jax.jit(lambda x, k: D.colour_augment(x, k, params))
  return np.asarray(fn(images, jax.random.key(1)))


def _changed(draws: np.ndarray, image: np.ndarray) -> np.ndarray:
  return np.abs(draws - image[None]).max(axis=(1, 2, 3)) > 1e-4


def _within(fraction: float, p: float, n: int, sigmas: float = 4.5) -> bool:
  return abs(fraction - p) <= sigmas * np.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------
# Parameters.


def test_params_are_the_paper_table():
  assert {f.name for f in dataclasses.fields(A.AugmentParams)} == set(PAPER_VIEW1)
  assert A.AugmentParams.from_mapping(PAPER_VIEW1) == A.PAPER_T
  assert A.AugmentParams.from_mapping(PAPER_VIEW2) == A.PAPER_T_PRIME
  assert (A.PAPER_T.blur_prob, A.PAPER_T.solarize_prob) == (1.0, 0.0)
  assert (A.PAPER_T_PRIME.blur_prob, A.PAPER_T_PRIME.solarize_prob) == (0.1, 0.2)
  assert A.blur_radius(224, 0.1) * 2 + 1 == 23
  assert A.blur_radius(32, 0.1) * 2 + 1 == 3


def test_unknown_param_and_preset_are_user_errors():
  with pytest.raises(UserError, match="blur_sigma"):
    A.AugmentParams.from_mapping({"blur_sigma": 1.0})
  with pytest.raises(UserError, match="paper"):
    A.get_preset("nope")
  for v1, v2 in A.PRESETS.values():
    assert isinstance(v1, A.AugmentParams)
    assert isinstance(v2, A.AugmentParams)
  v1, v2 = A.get_preset("no_colour")
  assert v1.jitter_prob == v2.jitter_prob == v1.gray_prob == 0.0
  assert A.get_preset("crop_only")[1].solarize_prob == 0.0


# --------------------------------------------------------------------------------------------
# Ops with fixed magnitudes, TF and JAX against references.


def test_solarize():
  x = np.linspace(0, 1, 8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
  want = np.where(x < 0.5, x, 1 - x)
  np.testing.assert_allclose(A.solarize(tf.constant(x)).numpy(), want)
  np.testing.assert_allclose(np.asarray(D.solarize(jnp.asarray(x))), want)


def test_grayscale_is_luma_on_all_channels():
  x = _image()
  want = x @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  for out in (A.to_grayscale(tf.constant(x)).numpy(), np.asarray(D.to_grayscale(jnp.asarray(x)))):
    np.testing.assert_allclose(out[..., 0], out[..., 1])
    np.testing.assert_allclose(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[..., 0], want, atol=1e-6)


def _numpy_blur(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
  k = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
  k /= k.sum()
  padded = np.pad(x, ((radius, radius), (radius, radius), (0, 0)))
  h, w = x.shape[:2]
  rows = sum(k[i] * padded[:, i : i + w] for i in range(2 * radius + 1))
  return sum(k[i] * rows[i : i + h] for i in range(2 * radius + 1))


def test_blur_matches_numpy_gaussian():
  x = _image(16)
  want = _numpy_blur(x, 1.3, 3)
  np.testing.assert_allclose(A.gaussian_blur(tf.constant(x), 1.3, 3).numpy(), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(D.gaussian_blur(jnp.asarray(x), 1.3, 3)), want, atol=1e-5)


def test_blur_preserves_constant_interior_and_mean():
  x = np.full((16, 16, 3), 0.6, np.float32)
  r = 3
  for out in (
    A.gaussian_blur(tf.constant(x), 2.0, r).numpy(),
    np.asarray(D.gaussian_blur(x, 2.0, r)),
  ):
    # 'SAME' zero padding (as in the original) only darkens a border of width r.
    np.testing.assert_allclose(out[r:-r, r:-r], 0.6, atol=1e-6)
  # A zero-bordered periodic pattern keeps its total mass: the kernel sums to one.
  stripes = np.zeros((16, 16, 3), np.float32)
  stripes[4:12, 4:12] = np.tile([0.0, 1.0], 4)[None, :, None]
  for out in (
    A.gaussian_blur(tf.constant(stripes), 1.0, r).numpy(),
    np.asarray(D.gaussian_blur(stripes, 1.0, r)),
  ):
    np.testing.assert_allclose(out.mean(), stripes.mean(), atol=1e-6)
    assert out[6:10, 6:10].std() < stripes[6:10, 6:10].std()


def test_brightness_and_contrast_match_reference():
  x = _image()
  mean = x.mean(axis=(0, 1), keepdims=True)
  for fn_tf, fn_jax, arg, want in [
    (A.adjust_brightness, D.adjust_brightness, 0.3, x + 0.3),
    (A.adjust_contrast, D.adjust_contrast, 1.3, (x - mean) * 1.3 + mean),
  ]:
    np.testing.assert_allclose(fn_tf(tf.constant(x), arg).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fn_jax(jnp.asarray(x), arg)), want, atol=1e-6)


@pytest.mark.parametrize(
  ("kind", "amount"), [("saturation", 0.7), ("saturation", 1.6), ("hue", 0.08), ("hue", -0.1)]
)
def test_saturation_and_hue_match_colorsys(kind, amount):
  x = _image(6)
  x[0, 0] = [0.5, 0.5, 0.5]  # grey: no hue
  x[0, 1] = [0.0, 0.0, 0.0]
  want = np.empty_like(x)
  for i, j in np.ndindex(6, 6):
    h, s, v = colorsys.rgb_to_hsv(*x[i, j])
    if kind == "saturation":
      s = min(max(s * amount, 0.0), 1.0)
    else:
      h = (h + amount) % 1.0
    want[i, j] = colorsys.hsv_to_rgb(h, s, v)
  fn_tf, fn_jax = {
    "saturation": (A.adjust_saturation, D.adjust_saturation),
    "hue": (A.adjust_hue, D.adjust_hue),
  }[kind]
  np.testing.assert_allclose(fn_tf(tf.constant(x), amount).numpy(), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(fn_jax(jnp.asarray(x), amount)), want, atol=1e-5)


def test_hsv_round_trip():
  x = _image(8, seed=3)
  np.testing.assert_allclose(np.asarray(D.hsv_to_rgb(*D.rgb_to_hsv(jnp.asarray(x)))), x, atol=1e-6)


def test_batched_jitter_applies_the_four_ops_one_after_another_in_the_drawn_order():
  """The vmapped jitter (one HSV round trip per position) equals the ops applied in turn."""
  params = A.PAPER_T
  images = jnp.asarray(np.stack([_image(8, seed=s) for s in range(6)]))
  # threefry: its bits are the same with and without vmap (those of the suite's "rbg" are not).
  keys = jax.random.split(jax.random.key(5, impl="threefry2x32"), len(images))
  got = np.asarray(jax.vmap(lambda x, k: D._colour_jitter(x, k, params))(images, keys))
  for image, key, out in zip(images, keys, got, strict=True):
    k_order, k_b, k_c, k_s, k_h = jax.random.split(key, 5)

    def draw(k, amount, centre=0.0):
      return float(jax.random.uniform(k, (), jnp.float32, centre - amount, centre + amount))

    ops = [
      (D.adjust_brightness, draw(k_b, params.brightness)),
      (D.adjust_contrast, draw(k_c, params.contrast, 1.0)),
      (D.adjust_saturation, draw(k_s, params.saturation, 1.0)),
      (D.adjust_hue, draw(k_h, params.hue)),
    ]
    want = image
    for i in np.argsort(np.asarray(jax.random.uniform(k_order, (4,)))):
      op, magnitude = ops[i]
      want = jnp.clip(op(want, magnitude), 0.0, 1.0)
    np.testing.assert_allclose(out, np.asarray(want), atol=1e-6)


def test_normalize_and_to_float():
  u8 = np.array([[[[0, 128, 255]]]], np.uint8)
  f = np.asarray(D.to_float(jnp.asarray(u8)))
  assert f.dtype == np.float32
  np.testing.assert_allclose(f, u8 / 255.0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(D.to_float(jnp.asarray(f))), f)
  n = np.asarray(D.normalize(jnp.asarray(f)))
  want = (f - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(n, want, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Crop and flip.


def _boxes(height: int, width: int, params: A.AugmentParams, num: int, stream: int = 7):
  """``num`` boxes (y, x, h, w) from seeds (stream, i), drawn in one graph."""
  seeds = tf.stack(
    [tf.fill([num], tf.constant(stream, tf.int64)), tf.range(num, dtype=tf.int64)], 1
  )

  @tf.function
  def draw(seeds):
    return tf.map_fn(
      lambda s: tf.stack(A.sample_crop_box(height, width, s, params)),
      seeds,
      fn_output_signature=tf.TensorSpec([4], tf.int32),
    )

  return draw(seeds).numpy().T


@pytest.mark.parametrize("scheme", ["original", "rejection"])
def test_crop_boxes_stay_in_range(scheme):
  params = A.PAPER_T.replace(crop_scheme=scheme)
  height, width = 160, 200
  y, x, h, w = _boxes(height, width, params, 2000)
  assert (y >= 0).all()
  assert (x >= 0).all()
  assert (y + h <= height).all()
  assert (x + w <= width).all()
  area = h * w / (height * width)
  # Integer rounding of the box sides moves area and aspect by at most ~1/side; the original
  # scheme's clamping to the image lowers the area and moves the aspect towards the image's.
  slack = 2.0 / np.minimum(h, w)
  assert (area >= params.crop_area_min * (1 - slack)).all()
  assert (area <= 1.0).all()
  aspect = w / h
  assert (aspect >= params.crop_aspect_min * (1 - slack)).all()
  assert (aspect <= params.crop_aspect_max * (1 + slack)).all()
  # Log-uniform aspect and uniform area, truncated by the image: both ranges are well covered.
  assert area.min() < 0.1
  assert area.max() > 0.95
  assert aspect.min() < 0.77
  assert aspect.max() > 1.3
  assert len(np.unique(np.stack([y, x, h, w], 1), axis=0)) > 1900


def test_rejection_crop_falls_back_to_centre_crop():
  # A 2:1 image can't hold a full-area box of aspect <= 4/3: all attempts fail.
  params = A.PAPER_T.replace(crop_area_min=1.0, crop_area_max=1.0, crop_scheme="rejection")
  box = [int(v) for v in A.sample_crop_box(50, 100, tf.constant([1, 2], tf.int64), params)]
  assert box == [0, (100 - 67) // 2, 50, 67]


def test_unknown_crop_scheme_is_refused():
  with pytest.raises(UserError, match="crop scheme 'inception'"):
    A.PAPER_T.replace(crop_scheme="inception")


def test_crop_of_whole_image_is_identity_and_flip_flips():
  whole = NOTHING.replace(
    crop_area_min=1.0, crop_area_max=1.0, crop_aspect_min=1.0, crop_aspect_max=1.0
  )
  x = (_image(12) * 255).astype(np.uint8)
  out = A.augment_view(tf.constant(x), tf.constant([0, 1], tf.int64), whole, 12).numpy()
  np.testing.assert_allclose(out, x / 255.0, atol=1e-5)
  flipped = A.augment_view(
    tf.constant(x), tf.constant([0, 1], tf.int64), whole.replace(flip_prob=1.0), 12
  ).numpy()
  np.testing.assert_allclose(flipped, x[:, ::-1] / 255.0, atol=1e-5)


def test_augment_view_shapes_dtypes_and_graph_equals_eager():
  seed = tf.constant([3, 4], tf.int64)
  for image in [
    tf.constant((_image(20) * 255).astype(np.uint8)),
    tf.constant(np.random.default_rng(1).uniform(0, 1, (17, 29, 3)).astype(np.float32)),
  ]:
    for params in (A.PAPER_T, A.PAPER_T_PRIME):
      eager = A.augment_view(image, seed, params, 16).numpy()
      graph = tf.function(lambda im, s, p=params: A.augment_view(im, s, p, 16))(image, seed).numpy()
      assert eager.shape == (16, 16, 3)
      assert eager.dtype == np.float32
      assert eager.min() >= 0.0
      assert eager.max() <= 1.0
      np.testing.assert_allclose(graph, eager, atol=1e-6)
  other = A.augment_view(image, tf.constant([3, 5], tf.int64), A.PAPER_T, 16).numpy()
  assert not np.allclose(other, eager)


# --------------------------------------------------------------------------------------------
# Frequencies of the random choices (4.5-sigma bounds: a false failure is ~1e-5 likely).


def test_probabilities_tf_and_jax():
  n = 2000
  mid = _image(8, seed=5, lo=0.3, hi=0.7)
  cases = [
    (NOTHING.replace(jitter_prob=0.8), 0.8),
    (NOTHING.replace(gray_prob=0.2), 0.2),
    # Sigma >= 1 so that every applied blur is visible.
    (NOTHING.replace(blur_prob=0.1, blur_sigma_min=1.0, blur_kernel_fraction=0.25), 0.1),
  ]
  for params, p in cases:
    for draws in (_tf_draws(mid, params, n), _jax_draws(mid, params, n)):
      assert _within(_changed(draws, mid).mean(), p, n), (params, _changed(draws, mid).mean())


def test_view_asymmetry_solarize():
  n = 2000
  bright = np.full((8, 8, 3), 0.8, np.float32)
  colourless = dict(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)
  t, t_prime = A.PAPER_T.replace(**colourless), A.PAPER_T_PRIME.replace(**colourless)
  for draw in (_tf_draws, _jax_draws):
    assert not _changed(draw(bright, t, n), bright).any()
    solarized = np.isclose(draw(bright, t_prime, n)[:, 0, 0, 0], 0.2)
    assert _within(solarized.mean(), 0.2, n)


def test_deterministic_settings_agree_exactly():
  x = _image(24, seed=2)
  cases = {
    "nothing": (NOTHING, x),
    "gray": (NOTHING.replace(gray_prob=1.0), A.to_grayscale(tf.constant(x)).numpy()),
    "solarize": (NOTHING.replace(solarize_prob=1.0), np.where(x < 0.5, x, 1 - x)),
    "blur": (
      NOTHING.replace(blur_prob=1.0, blur_sigma_min=1.5, blur_sigma_max=1.5),
      np.clip(_numpy_blur(x, 1.5, A.blur_radius(24, 0.1)), 0, 1),
    ),
  }
  for name, (params, want) in cases.items():
    np.testing.assert_allclose(_tf_draws(x, params, 2)[1], want, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(_jax_draws(x, params, 2)[1], want, atol=1e-5, err_msg=name)


def test_tf_and_jax_colour_augment_agree_in_distribution():
  n = 1500
  x = _image(24, seed=9)
  stats = []
  for draws in (_tf_draws(x, A.PAPER_T_PRIME, n), _jax_draws(x, A.PAPER_T_PRIME, n)):
    assert draws.min() >= 0.0
    assert draws.max() <= 1.0
    chroma = (draws.max(axis=-1) - draws.min(axis=-1)).mean(axis=(1, 2))
    per_image = np.stack(
      [
        draws.mean(axis=(1, 2, 3)),
        draws.std(axis=(1, 2, 3)),
        draws[..., 0].mean(axis=(1, 2)),
        chroma,
      ],
      1,
    )
    stats.append(per_image)
  tf_stats, jax_stats = stats
  se = np.sqrt(tf_stats.var(0) / n + jax_stats.var(0) / n)
  assert (np.abs(tf_stats.mean(0) - jax_stats.mean(0)) < 4.5 * se).all()
  # The spread of the per-image statistics agrees too.
  np.testing.assert_allclose(tf_stats.std(0), jax_stats.std(0), rtol=0.1)
