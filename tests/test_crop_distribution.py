"""The random resized crop draws its boxes as the original BYOL code does.

The reference is an independent numpy transcription of the original code's
``_decode_and_random_crop`` (deepmind-research ``byol/utils/dataset.py``) with the paper's numbers
(Appendix B): one area fraction uniform in [0.08, 1] and one aspect ratio log-uniform in
[3/4, 4/3]; each side rounded, then clamped to the image; offsets uniform over the valid positions.
The boxes under test are the pipeline's own: two views of PNG files whose pixels hold their own
coordinates, cropped by ``pipeline.two_views_encoded`` with the default config's parameters, so a
crop's first pixel is its offset and its shape its size.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from byol_jax import config_base, train
from byol_jax.data import pipeline

NUM_PAIRS = 3000
# Square and 4:3 images, both orientations; CIFAR's 32x32, where the rounding of sides matters.
SHAPES = [(32, 32), (224, 224), (180, 240), (240, 180)]
STATISTICS = ("area", "log_aspect", "centre_y", "centre_x", "iou")


def _original_boxes(rng: np.random.Generator, height: int, width: int, num: int) -> np.ndarray:
  """(y, x, h, w) rows drawn as the original code draws them."""
  target = rng.uniform(0.08, 1.0, num) * height * width
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), num))
  w = np.minimum(np.round(np.sqrt(target * aspect)), width).astype(np.int64)
  h = np.minimum(np.round(np.sqrt(target / aspect)), height).astype(np.int64)
  y = rng.integers(0, height - h + 1)
  x = rng.integers(0, width - w + 1)
  return np.stack([y, x, h, w], axis=1)


def _coordinate_png(height: int, width: int) -> bytes:
  """A PNG whose red channel is each pixel's row and green its column."""
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  image = np.stack([ys, xs, np.zeros_like(ys)], axis=-1).astype(np.uint8)
  return tf.io.encode_png(image).numpy()


def _pipeline_boxes(monkeypatch, height: int, width: int, view1, view2) -> np.ndarray:
  """[2, NUM_PAIRS, 4] boxes of the pipeline's two views of one coordinate PNG."""

  def box_of(crop, *_):
    first = tf.cast(crop[0, 0, :2], tf.int32)
    return tf.concat([first, tf.shape(crop)[:2]], axis=0)

  # The crops are read before the resize: the boxes are what the pipeline cropped.
  monkeypatch.setattr(pipeline, "_finish", box_of)
  data = tf.constant(_coordinate_png(height, width))
  seeds = tf.stack(
    [tf.fill([NUM_PAIRS], tf.constant(3, tf.int64)), tf.range(NUM_PAIRS, dtype=tf.int64)], 1
  )

  @tf.function
  def draw(seeds):
    return tf.map_fn(
      lambda s: tf.stack(pipeline.two_views_encoded(data, s, view1, view2, 16, colour_ops=False)),
      seeds,
      fn_output_signature=tf.TensorSpec([2, 4], tf.int32),
    )

  return np.moveaxis(draw(seeds).numpy(), 1, 0)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  top = np.maximum(a[:, 0], b[:, 0])
  left = np.maximum(a[:, 1], b[:, 1])
  bottom = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
  right = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
  inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
  return inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)


def _statistics(pairs: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
  """Each statistic over both views' boxes (the IoU over pairs)."""
  y, x, h, w = np.concatenate(pairs).T
  return {
    "area": h * w / (height * width),
    "log_aspect": np.log(w / h),
    "centre_y": (y + h / 2) / height,
    "centre_x": (x + w / 2) / width,
    "iou": _iou(pairs[0], pairs[1]),
  }


def _p_values(monkeypatch, shape, scheme: str) -> dict[str, float]:
  config = config_base.get_base_config()
  if scheme is not None:
    config.augment.view1.crop_scheme = scheme
    config.augment.view2.crop_scheme = scheme
  view1, view2 = train.view_params(config)
  height, width = shape
  got = _statistics(_pipeline_boxes(monkeypatch, height, width, view1, view2), height, width)
  rng = np.random.default_rng(height * 1000 + width)
  ref_pairs = np.stack([_original_boxes(rng, height, width, NUM_PAIRS) for _ in range(2)])
  want = _statistics(ref_pairs, height, width)
  return {k: stats.ks_2samp(got[k], want[k]).pvalue for k in STATISTICS}


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_default_crops_are_distributed_as_the_original_code_draws_them(monkeypatch, shape):
  p_values = _p_values(monkeypatch, shape, scheme=None)
  assert min(p_values.values()) > 1e-3, p_values


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_rejection_crops_are_not(monkeypatch, shape):
  # Redrawing the boxes that do not fit discards large crops: the area differs most.
  p_values = _p_values(monkeypatch, shape, scheme="rejection")
  assert p_values["area"] < 1e-6, p_values
