"""The random resized crop draws its boxes as the original BYOL code does.

The reference (``crop_boxes.py``) is an independent numpy transcription of the original code's
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
from crop_boxes import STATISTICS, original_boxes, statistics
from scipy import stats

from byol_jax import config_base, train
from byol_jax.data import pipeline

NUM_PAIRS = 3000
# Square and 4:3 images, both orientations; CIFAR's 32x32, where the rounding of sides matters.
SHAPES = [(32, 32), (224, 224), (180, 240), (240, 180)]


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


def _p_values(monkeypatch, shape, scheme: str) -> dict[str, float]:
  config = config_base.get_base_config()
  if scheme is not None:
    config.augment.view1.crop_scheme = scheme
    config.augment.view2.crop_scheme = scheme
  view1, view2 = train.view_params(config)
  height, width = shape
  got = statistics(_pipeline_boxes(monkeypatch, height, width, view1, view2), height, width)
  rng = np.random.default_rng(height * 1000 + width)
  ref_pairs = np.stack([original_boxes(rng, height, width, NUM_PAIRS) for _ in range(2)])
  want = statistics(ref_pairs, height, width)
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
