"""Tests of the pre-training and evaluation batch pipelines: shapes, determinism, resumption,
per-process sharding, epoch coverage and evaluation padding.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from byol_jax.data import augment, pipeline, sources
from byol_jax.errors import UserError

N = 12


@pytest.fixture(scope="module")
def indexed():
  """N small images whose label is their index, so batches reveal which examples they hold."""
  images = np.random.default_rng(0).integers(0, 256, (N, 12, 10, 3), dtype=np.uint8)
  return sources.array_source(images, np.arange(N), num_classes=N)


def _batches(source, num, **kw):
  args = dict(
    global_batch_size=4,
    image_size=8,
    view1=augment.PAPER_T,
    view2=augment.PAPER_T_PRIME,
    seed=0,
  )
  args.update(kw)
  stream = pipeline.pretrain_batches(source, **args)
  return [next(stream) for _ in range(num)]


def test_batch_layout(indexed):
  (b,) = _batches(indexed, 1)
  assert set(b) == {"view1", "view2", "label"}
  for key in ("view1", "view2"):
    assert b[key].shape == (4, 8, 8, 3)
    assert b[key].dtype == np.float32
    assert b[key].min() >= 0.0
    assert b[key].max() <= 1.0
  assert b["label"].shape == (4,)
  assert b["label"].dtype == np.int32
  assert not np.allclose(b["view1"], b["view2"])


def test_same_seed_same_batches_other_seed_differs(indexed):
  a = _batches(indexed, 2)
  b = _batches(indexed, 2)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  c = _batches(indexed, 2, seed=1)
  assert not np.array_equal(a[0]["label"], c[0]["label"]) or not np.allclose(
    a[0]["view1"], c[0]["view1"]
  )
  assert not np.allclose(a[1]["view1"], c[1]["view1"])


def test_each_epoch_is_a_fresh_permutation(indexed):
  labels = np.concatenate([b["label"] for b in _batches(indexed, 6)])
  first, second = labels[:N], labels[N:]
  assert sorted(first) == list(range(N))
  assert sorted(second) == list(range(N))
  assert not np.array_equal(first, second)


def test_resume_equals_uninterrupted(indexed):
  # Batches of 5 wrap across the 12-example epochs.
  run = _batches(indexed, 7, global_batch_size=5)
  for k in (1, 2, 6):
    (resumed,) = _batches(indexed, 1, global_batch_size=5, start_step=k)
    for key in resumed:
      np.testing.assert_array_equal(resumed[key], run[k][key])


def test_finite_stream_is_the_prefix_of_the_endless_one(indexed):
  args = dict(global_batch_size=4, image_size=8, view1=augment.PAPER_T, view2=augment.PAPER_T_PRIME)
  stream = pipeline.pretrain_batches(indexed, seed=0, start_step=2, num_batches=3, **args)
  finite = list(itertools.islice(stream, 4))  # a 4th batch would mean the stream is endless
  endless = pipeline.pretrain_batches(indexed, seed=0, start_step=2, **args)
  assert len(finite) == 3
  for got in finite:
    np.testing.assert_array_equal(got["view1"], next(endless)["view1"])


def test_processes_split_the_global_batch(indexed):
  whole = _batches(indexed, 3)
  parts = [_batches(indexed, 3, process_index=i, process_count=2) for i in range(2)]
  for step in range(3):
    p0, p1 = parts[0][step], parts[1][step]
    assert p0["view1"].shape[0] == 2
    assert not set(p0["label"]) & set(p1["label"])
    for key in whole[step]:
      np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), whole[step][key])
  with pytest.raises(UserError, match="multiple"):
    _batches(indexed, 1, global_batch_size=5, process_count=2)


def test_device_colour_ops_leave_uint8_crops(indexed):
  no_colour = augment.PAPER_T.replace(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)
  host = _batches(indexed, 1, view1=no_colour, view2=no_colour)[0]
  device = _batches(indexed, 1, view1=augment.PAPER_T, view2=no_colour, host_colour_ops=False)[0]
  assert device["view1"].dtype == np.uint8
  # Crop and flip use the same seeds whether or not the colour ops follow.
  np.testing.assert_allclose(device["view2"] / 255.0, host["view2"], atol=0.5 / 255 + 1e-6)
  np.testing.assert_allclose(device["view1"] / 255.0, host["view1"], atol=0.5 / 255 + 1e-6)


def test_synthetic_source_feeds_pipeline():
  src = sources.synthetic_source(16, 4, 16, seed=0)
  (b,) = _batches(src, 1, global_batch_size=8, image_size=16)
  assert b["view1"].shape == (8, 16, 16, 3)
  assert set(b["label"]) <= set(range(4))


def test_eval_batches_pad_and_mask(indexed):
  batches = list(pipeline.eval_batches(indexed, batch_size=5, image_size=8, resize_size=10))
  assert len(batches) == pipeline.num_eval_batches(N, 5) == 3
  assert [b["mask"].tolist() for b in batches][-1] == [True, True, False, False, False]
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(N))
  # Each slot names its example (the label here); padding has index -1.
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index, np.concatenate([np.arange(N), [-1, -1, -1]]))
  assert batches[-1]["label"][-1] == -1
  assert not batches[-1]["image"][-1].any()
  assert batches[0]["image"].shape == (5, 8, 8, 3)
  assert batches[0]["image"].dtype == np.float32
  # Two processes: same number of batches each, every example once.
  parts = [
    list(
      pipeline.eval_batches(
        indexed, batch_size=4, image_size=8, resize_size=8, process_index=i, process_count=2
      )
    )
    for i in range(2)
  ]
  assert len(parts[0]) == len(parts[1]) == 3
  seen = np.concatenate([b["label"][b["mask"]] for part in parts for b in part])
  np.testing.assert_array_equal(np.sort(seen), np.arange(N))


def test_eval_centre_crop_geometry():
  # A 12x8 image: short side 8 -> 8 (no resize), centre 8x8 crop = rows 2..9.
  image = np.random.default_rng(1).integers(0, 256, (1, 12, 8, 3), dtype=np.uint8)
  src = sources.array_source(image)
  (b,) = pipeline.eval_batches(src, batch_size=1, image_size=8, resize_size=8)
  np.testing.assert_allclose(b["image"][0], image[0, 2:10] / 255.0, atol=1e-5)
  with pytest.raises(UserError, match="eval_resize"):
    next(pipeline.eval_batches(src, batch_size=1, image_size=8, resize_size=6))


def test_augment_batch_numpy():
  images = np.random.default_rng(2).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
  out = pipeline.augment_batch_numpy(images, 0, augment.PAPER_T, 16)
  assert out.shape == (3, 16, 16, 3)
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, pipeline.augment_batch_numpy(images, 0, augment.PAPER_T, 16))
