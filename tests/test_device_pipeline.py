"""The device pipeline (``data.pipeline="device"``): the whole augmentation inside the step.

Its views must be distributed as the tf.data pipeline's: the crop boxes against an independent
transcription of the original code's draw (``test_crop_distribution``), the resize pixel for pixel
against TensorFlow's inside the box, the flip rate, and the finished views' colour statistics
against the tf.data views of the same image. Then the run: exact resume, 1 device = several, each
process its own slots, and one clear line for data that does not fit.
"""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from crop_boxes import STATISTICS, original_boxes, statistics
from PIL import Image
from scipy import stats
from tiny import final_state, read_metrics, tiny_config

from byol_jax import byol, train
from byol_jax.data import augment, device_augment, device_crop, in_memory, pipeline, sources
from byol_jax.errors import UserError

NUM_PAIRS = 3000


def _jax_boxes(height: int, width: int, params, num: int, seed: int) -> np.ndarray:
  keys = jax.random.split(jax.random.key(seed, impl="threefry2x32"), num)
  boxes = jax.jit(
    jax.vmap(lambda k: jnp.stack(device_crop.sample_crop_box(k, height, width, params)))
  )(keys)
  return np.asarray(boxes, np.int64)


@pytest.mark.parametrize("shape", [(32, 32), (96, 96), (180, 240)], ids=str)
def test_crop_boxes_are_distributed_as_the_original_code_draws_them(shape):
  height, width = shape
  got = np.stack([_jax_boxes(height, width, augment.PAPER_T, NUM_PAIRS, s) for s in (1, 2)])
  rng = np.random.default_rng(7)
  want = np.stack([original_boxes(rng, height, width, NUM_PAIRS) for _ in range(2)])
  got_stats, want_stats = statistics(got, height, width), statistics(want, height, width)
  p_values = {k: stats.ks_2samp(got_stats[k], want_stats[k]).pvalue for k in STATISTICS}
  assert min(p_values.values()) > 1e-3, p_values
  y, x, h, w = got.reshape(-1, 4).T
  assert (y >= 0).all()
  assert (x >= 0).all()
  assert (y + h <= height).all()
  assert (x + w <= width).all()


def test_rejection_boxes_are_distributed_as_the_tf_pipeline_draws_them():
  params = augment.PAPER_T.replace(crop_scheme="rejection")
  height, width = 60, 200  # wide: about half of the draws do not fit
  got = _jax_boxes(height, width, params, NUM_PAIRS, 3)
  seeds = tf.stack(
    [tf.fill([NUM_PAIRS], tf.constant(5, tf.int64)), tf.range(NUM_PAIRS, dtype=tf.int64)], 1
  )
  want = tf.function(
    lambda seeds: tf.map_fn(
      lambda s: tf.stack(augment.sample_crop_box(height, width, s, params)),
      seeds,
      fn_output_signature=tf.TensorSpec([4], tf.int32),
    )
  )(seeds).numpy()
  for column in range(4):
    assert stats.ks_2samp(got[:, column], want[:, column]).pvalue > 1e-3, column
  # The centred fallback box appears in both, at the same rate.
  fallback = (got[:, 3] == round(height * 4 / 3)) & (got[:, 2] == height)
  tf_fallback = (want[:, 3] == round(height * 4 / 3)) & (want[:, 2] == height)
  assert abs(fallback.mean() - tf_fallback.mean()) < 4.5 * np.sqrt(0.25 * 2 / NUM_PAIRS)


@pytest.mark.parametrize("box", [(3, 5, 20, 17), (10, 2, 9, 30), (0, 0, 32, 32), (31, 0, 1, 32)])
def test_resize_equals_tensorflow_inside_the_box(box):
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  y, x, h, w = box
  # The host pipeline's resize, given only the box's pixels.
  want = tf.clip_by_value(
    tf.image.resize(tf.cast(image[y : y + h, x : x + w], tf.float32), [16, 16], "bicubic") / 255,
    0,
    1,
  ).numpy()
  got = np.asarray(device_crop.resized_crop(jnp.asarray(image), box, 16))
  assert got.dtype == np.float32
  assert got.min() >= 0
  assert got.max() <= 1
  # Output pixels whose kernel stays inside the box are the same; the edges read beyond it.
  margin_y = int(np.ceil(2 * 16 / h)) + 1 if h < 32 else 0
  margin_x = int(np.ceil(2 * 16 / w)) + 1 if w < 32 else 0
  inner = (slice(margin_y, 16 - margin_y), slice(margin_x, 16 - margin_x))
  np.testing.assert_allclose(got[inner], want[inner], atol=1e-5)


def test_flip_rate():
  n = 4000
  image = np.zeros((16, 16, 3), np.uint8)
  image[:, 8:] = 255  # dark left half, bright right half
  whole = augment.PAPER_T.replace(crop_area_min=1.0, crop_aspect_min=1.0, crop_aspect_max=1.0)
  keys = jax.random.split(jax.random.key(0, impl="threefry2x32"), n)
  views = device_crop.crop_and_flip_batch(jnp.asarray(np.stack([image] * n)), keys, whole, 16)
  flipped = np.asarray(views[:, :, :8].mean((1, 2, 3)) > views[:, :, 8:].mean((1, 2, 3)))
  assert abs(flipped.mean() - 0.5) < 4.5 * np.sqrt(0.25 / n), flipped.mean()
  unflipped = device_crop.crop_and_flip_batch(
    jnp.asarray(image[None]), keys[:1], whole.replace(flip_prob=0.0), 16
  )
  np.testing.assert_allclose(np.asarray(unflipped[0]), image / 255.0, atol=1e-6)


def _photo(size: int = 32) -> np.ndarray:
  """A colourful, textured uint8 image (a synthetic dataset's)."""
  return sources.synthetic_images(1, 10, size, seed=3)[0][0]


def _tf_views(image: np.ndarray, view1, view2, n: int) -> np.ndarray:
  """[n, 2, 16, 16, 3] views of the tf.data pipeline, positions 0..n-1."""
  return tf.function(
    lambda positions: tf.map_fn(
      lambda p: tf.stack(
        pipeline.two_views(tf.constant(image), pipeline.example_seed(11, p), view1, view2, 16)
      ),
      positions,
      fn_output_signature=tf.TensorSpec([2, 16, 16, 3], tf.float32),
    )
  )(tf.range(n, dtype=tf.int64)).numpy()


def _device_views(image: np.ndarray, view1, view2, n: int) -> np.ndarray:
  """[n, 2, 16, 16, 3] views of the device pipeline (in [0, 1], before the normalisation)."""
  prepare = jax.jit(
    lambda images, key: byol.prepare_views(
      (images, images), key, (view1, view2), axis_name=None, crop_size=16
    )
  )
  views = prepare(jnp.asarray(np.stack([image] * n)), jax.random.key(4))
  return np.stack([_unnormalize(np.asarray(v)) for v in views], 1)


def test_device_views_cut_the_boxes_of_the_tfdata_views():
  # Each pixel holds its coordinates (red: row, green: column), so the difference between two
  # interior pixels of a view measures its box's height or width, their mean its centre, the
  # sign its flip; interior pixels, whose kernel stays inside the box, are the same in both
  # pipelines. The paper's views without colour ops.
  n = 2000
  ys, xs = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
  image = np.stack([ys * 8, xs * 8, np.full_like(ys, 128)], -1).astype(np.uint8)
  params = [
    p.replace(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
    for p in (augment.PAPER_T, augment.PAPER_T_PRIME)
  ]
  host, device = _tf_views(image, *params, n), _device_views(image, *params, n)
  for v in range(2):
    for name, statistic in (
      ("height", lambda x: np.abs(x[:, 10, 8, 0] - x[:, 5, 8, 0])),
      ("width", lambda x: np.abs(x[:, 8, 10, 1] - x[:, 8, 5, 1])),
      ("centre_y", lambda x: x[:, 7, 8, 0] + x[:, 8, 8, 0]),
      ("centre_x", lambda x: x[:, 8, 7, 1] + x[:, 8, 8, 1]),
      ("flipped", lambda x: (x[:, 8, 10, 1] < x[:, 8, 5, 1]).astype(np.float64)),
    ):
      # Rounded: the boxes' sides are integers, so the statistics take few values, and float
      # rounding must not split them.
      got, want = (np.round(statistic(x[:, v].astype(np.float64)), 3) for x in (device, host))
      p = stats.ks_2samp(got, want).pvalue
      assert p > 1e-3, (v, name, p)


def test_device_views_match_the_tfdata_views_in_distribution():
  n = 1500
  image = _photo()
  view1, view2 = augment.PAPER_T, augment.PAPER_T_PRIME
  host, device = _tf_views(image, view1, view2, n), _device_views(image, view1, view2, n)
  for v in range(2):
    tf_stats, dev_stats = _view_statistics(host[:, v]), _view_statistics(device[:, v])
    se = np.sqrt(tf_stats.var(0) / n + dev_stats.var(0) / n)
    gap = np.abs(tf_stats.mean(0) - dev_stats.mean(0))
    assert (gap < 4.5 * se).all(), (v, tf_stats.mean(0), dev_stats.mean(0))
    np.testing.assert_allclose(tf_stats.std(0), dev_stats.std(0), rtol=0.12)


def _unnormalize(views: np.ndarray) -> np.ndarray:
  return views * np.asarray(device_augment.IMAGENET_STD) + np.asarray(device_augment.IMAGENET_MEAN)


def _view_statistics(views: np.ndarray) -> np.ndarray:
  """Per view: mean, std, red mean, mean chroma, left-right brightness difference, and the mean
  absolute difference of neighbouring pixels (the crop's scale: small crops are magnified)."""
  chroma = (views.max(axis=-1) - views.min(axis=-1)).mean(axis=(1, 2))
  half = views.shape[2] // 2
  return np.stack(
    [
      views.mean(axis=(1, 2, 3)),
      views.std(axis=(1, 2, 3)),
      views[..., 0].mean(axis=(1, 2)),
      chroma,
      views[:, :, :half].mean(axis=(1, 2, 3)) - views[:, :, half:].mean(axis=(1, 2, 3)),
      np.abs(np.diff(views, axis=2)).mean(axis=(1, 2, 3)),
    ],
    1,
  )


def test_views_do_not_depend_on_the_device_split():
  images = jnp.asarray(sources.synthetic_images(8, 10, 16, seed=1)[0])
  ops = (augment.PAPER_T, augment.PAPER_T_PRIME)
  key = jax.random.key(9)
  whole = byol.prepare_views((images, images), key, ops, axis_name=None, crop_size=12)
  split = jax.pmap(
    lambda x, k: byol.prepare_views((x, x), k, ops, axis_name="d", crop_size=12),
    axis_name="d",
    in_axes=(0, None),
    devices=jax.local_devices()[:4],
  )(images.reshape(4, 2, 16, 16, 3), key)
  for a, b in zip(whole, split):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b).reshape(a.shape), atol=1e-4)


# --------------------------------------------------------------------------------------------
# The host side: the in-memory batches.


def _data(n: int = 10) -> in_memory.InMemoryImages:
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  return in_memory.InMemoryImages(images, np.arange(n, dtype=np.int32))


def test_each_process_reads_its_slots_and_each_epoch_every_example_once():
  data = _data(10)
  one = list(in_memory.batches(data, global_batch_size=4, seed=3, num_batches=10))
  two = [
    list(
      in_memory.batches(
        data, global_batch_size=4, seed=3, process_index=i, process_count=2, num_batches=10
      )
    )
    for i in range(2)
  ]
  for step, batch in enumerate(one):
    joined = np.concatenate([two[0][step]["label"], two[1][step]["label"]])
    np.testing.assert_array_equal(batch["label"], joined)
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["label"])
  stream = np.concatenate([b["label"] for b in one])
  for epoch in range(4):
    assert sorted(stream[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
  assert not np.array_equal(stream[:10], stream[10:20])  # a fresh order each epoch
  resumed = list(in_memory.batches(data, global_batch_size=4, seed=3, start_step=7, num_batches=3))
  for a, b in zip(one[7:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("device_pipeline"))


def _config(**overrides):
  return tiny_config(**{"data.pipeline": "device", **overrides})


def test_resumed_run_continues_exactly(tmp_root):
  config = _config()
  full = os.path.join(tmp_root, "full")
  train.pretrain(config, full)
  workdir = os.path.join(tmp_root, "resumed")
  shutil.copytree(full, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  train.pretrain(config, workdir)
  a, b = read_metrics(full), read_metrics(workdir)
  assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-6)
  states = [final_state(w, config) for w in (full, workdir)]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), *states)
  # The device pipeline trains on other views than tf.data's: its own run, not a copy.
  tfdata = os.path.join(tmp_root, "tfdata")
  train.pretrain(tiny_config(**{"num_steps": 1}), tfdata)
  assert abs(read_metrics(tfdata)[0]["loss"] - a[0]["loss"]) > 1e-4


def test_data_that_does_not_fit_is_one_clear_error(tmp_root, monkeypatch):
  monkeypatch.setattr(in_memory, "available_memory_bytes", lambda: 1000)
  with pytest.raises(UserError, match=r"data.pipeline=tfdata") as e:
    train.pretrain(_config(), os.path.join(tmp_root, "too_big"))
  assert "\n" not in str(e.value)


def test_images_of_several_sizes_are_one_clear_error(tmp_root):
  folder = os.path.join(tmp_root, "mixed")
  for i, size in enumerate([(20, 20), (20, 20), (24, 18)]):
    os.makedirs(os.path.join(folder, "a"), exist_ok=True)
    Image.new("RGB", size, (i * 40, 50, 60)).save(os.path.join(folder, "a", f"{i}.png"))
  source = sources.folder_source(folder)
  with pytest.raises(UserError, match=r"one size.*pipeline=tfdata"):
    in_memory.decode_source(source)
