"""Tests of the image sources: synthetic, arrays, folders (with corrupt files), hold-out splits and
TFDS (mocked; no network and no prepared data needed).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from byol_jax.data import pipeline, sources
from byol_jax.data.augment import PAPER_T, PAPER_T_PRIME
from byol_jax.errors import UserError


def _write_png(path, size=(12, 10), value=0) -> None:
  rng = np.random.default_rng(value)
  array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(array).save(path)


def _jpeg_bytes(size=(16, 16)) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def _all_examples(source) -> list[dict]:
  return list(source.dataset().as_numpy_iterator())


# --------------------------------------------------------------------------------------------
# Synthetic and arrays.


def test_synthetic_is_deterministic_balanced_and_varied():
  a = sources.synthetic_source(40, 10, 16, seed=3)
  b = sources.synthetic_source(40, 10, 16, seed=3)
  c = sources.synthetic_source(40, 10, 16, seed=4)
  assert a.images.shape == (40, 16, 16, 3)
  assert a.images.dtype == np.uint8
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert not np.array_equal(a.images, c.images)
  assert np.bincount(a.labels).tolist() == [4] * 10
  assert a.num_classes == 10
  assert a.has_labels
  # Random colours and positions: two images of one class differ a lot.
  first, second = np.flatnonzero(a.labels == 0)[:2]
  assert np.abs(a.images[first].astype(int) - a.images[second]).mean() > 20
  with pytest.raises(UserError, match="synthetic_classes"):
    sources.synthetic_source(10, 11, 16, 0)


def test_array_source_reads_and_unlabelled():
  images = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
  labelled = sources.array_source(images, np.arange(5) % 2)
  assert labelled.num_classes == 2
  assert labelled.num_examples == 5
  examples = _all_examples(labelled)
  np.testing.assert_array_equal(examples[3]["image"], images[3])
  assert [e["label"] for e in examples] == [0, 1, 0, 1, 0]
  unlabelled = sources.array_source(images)
  assert not unlabelled.has_labels
  assert unlabelled.num_classes == 0
  assert {int(e["label"]) for e in _all_examples(unlabelled)} == {-1}
  with pytest.raises(UserError):
    sources.array_source(images.astype(np.float32))


def test_shards_are_disjoint_and_cover():
  src = sources.array_source(np.zeros((11, 4, 4, 3), np.uint8))
  parts = [src.shard_indices(i, 3) for i in range(3)]
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(11))


# --------------------------------------------------------------------------------------------
# Hold-out split.


def test_stratified_holdout():
  labels = np.repeat(np.arange(4), [50, 30, 12, 8])
  train, held = sources.stratified_holdout(labels, 10, seed=0)
  assert len(held) == 10
  assert len(train) == 90
  assert not set(train) & set(held)
  assert np.bincount(labels[held], minlength=4).tolist() == [5, 3, 1, 1]
  _again, held_again = sources.stratified_holdout(labels, 10, seed=0)
  np.testing.assert_array_equal(held, held_again)
  _, other = sources.stratified_holdout(labels, 10, seed=1)
  assert not np.array_equal(held, other)
  with pytest.raises(UserError):
    sources.stratified_holdout(labels, 100, seed=0)


def test_array_source_holdout_subsets():
  images = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  labels = np.arange(20) % 2
  train = sources.array_source(images, labels, holdout=4, subset="train")
  held = sources.array_source(images, labels, holdout=4, subset="holdout")
  assert (train.num_examples, held.num_examples) == (16, 4)
  assert not set(train.images[:, 0, 0, 0]) & set(held.images[:, 0, 0, 0])
  assert np.bincount(held.labels).tolist() == [2, 2]
  assert held.num_classes == 2


# --------------------------------------------------------------------------------------------
# Folders.


@pytest.fixture
def class_folder(tmp_path):
  for c, name in enumerate(["cat", "ant", "bee"]):
    os.makedirs(tmp_path / name)
    for i in range(4):
      _write_png(tmp_path / name / f"{i}.png", size=(10 + i, 8 + c), value=10 * c + i)
  return tmp_path


def test_folder_with_classes(class_folder):
  src = sources.folder_source(str(class_folder))
  assert src.num_examples == 12
  assert src.num_classes == 3
  assert src.class_names == ["ant", "bee", "cat"]
  examples = _all_examples(src)
  assert [int(e["label"]) for e in examples] == [0] * 4 + [1] * 4 + [2] * 4
  # Any image size: "ant" images are 8 pixels high, "cat" ones 10.
  assert examples[0]["image"].shape == (9, 10, 3)
  assert examples[-1]["image"].shape == (8, 13, 3)
  want = np.asarray(Image.open(class_folder / "cat" / "3.png"))
  np.testing.assert_array_equal(examples[-1]["image"], want)


def test_folder_flat_is_unlabelled(tmp_path):
  for i in range(3):
    _write_png(tmp_path / f"{i}.png", value=i)
  with open(tmp_path / "x.jpeg", "wb") as f:
    f.write(_jpeg_bytes())
  (tmp_path / "notes.txt").write_text("not an image")
  src = sources.folder_source(str(tmp_path))
  assert src.num_examples == 4
  assert not src.has_labels
  assert {int(e["label"]) for e in _all_examples(src)} == {-1}


def test_folder_skips_corrupt_files_with_one_warning(class_folder):
  (class_folder / "ant" / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
  (class_folder / "bee" / "truncated.jpg").write_bytes(_jpeg_bytes((64, 64))[:200])
  (class_folder / "cat" / "empty.png").write_bytes(b"")
  with pytest.warns(UserWarning, match=r"Skipping 3 unreadable") as record:
    src = sources.folder_source(str(class_folder), full_check=True)
  assert len(record) == 1
  assert src.num_examples == 12
  assert len(_all_examples(src)) == 12


def test_truncated_file_past_header_check_is_left_out_at_run_time(class_folder):
  (class_folder / "bee" / "truncated.jpg").write_bytes(_jpeg_bytes((64, 64))[:200])
  # The header check alone can't see the truncation ...
  src = sources.folder_source(str(class_folder), full_check=False)
  assert src.num_examples == 13
  bad = src.paths.index(str(class_folder / "bee" / "truncated.jpg"))
  assert src.describe(bad).endswith("truncated.jpg (does not decode)")
  # ... so evaluation masks it and pre-training replaces it, instead of crashing.
  batches = list(pipeline.eval_batches(src, batch_size=8, image_size=8, resize_size=8))
  assert sum(int(b["mask"].sum()) for b in batches) == 12
  masked = np.concatenate([b["index"][~b["mask"]] for b in batches])
  assert masked.tolist() == [bad, -1, -1, -1]
  stream = pipeline.pretrain_batches(
    src, global_batch_size=13, image_size=8, view1=PAPER_T, view2=PAPER_T_PRIME, seed=0
  )
  for _ in range(3):
    assert next(stream)["view1"].shape == (13, 8, 8, 3)


def test_folder_user_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    sources.folder_source(str(tmp_path / "missing"))
  with pytest.raises(UserError, match=r"No \.jpg"):
    sources.folder_source(str(tmp_path))
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "readme.txt").write_text("hi")
  with pytest.raises(UserError, match=r"No \.jpg"):
    sources.folder_source(str(tmp_path))
  (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with (
    pytest.warns(UserWarning, match="Skipping 1"),
    pytest.raises(UserError, match="None of the images"),
  ):
    sources.folder_source(str(tmp_path))


def test_folder_holdout_is_stratified_and_stable(class_folder):
  train = sources.folder_source(str(class_folder), holdout=3, holdout_seed=5)
  held = sources.folder_source(str(class_folder), holdout=3, holdout_seed=5, subset="holdout")
  assert (train.num_examples, held.num_examples) == (9, 3)
  assert not set(train.paths) & set(held.paths)
  assert sorted(held.labels.tolist()) == [0, 1, 2]
  again = sources.folder_source(str(class_folder), holdout=3, holdout_seed=5, subset="holdout")
  assert again.paths == held.paths
  with pytest.raises(UserError, match="subset"):
    sources.folder_source(str(class_folder), holdout=3, subset="test")


def test_make_source_dispatch(class_folder):
  syn = sources.make_source("synthetic", synthetic_examples=8, synthetic_classes=4, image_size=16)
  test = sources.make_source(
    "synthetic", split="test", synthetic_examples=8, synthetic_classes=4, image_size=16
  )
  assert syn.num_examples == 8
  assert syn.num_classes == 4
  assert not np.array_equal(syn.images, test.images)
  assert sources.make_source("folder", path=str(class_folder)).num_examples == 12
  with pytest.raises(UserError, match="Unknown data source"):
    sources.make_source("imagenet")
  with pytest.raises(UserError, match="name"):
    sources.make_source("tfds")


# --------------------------------------------------------------------------------------------
# TFDS.


def test_tfds_missing_dataset_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="not prepared") as info:
    sources.tfds_source("cifar10", "train", data_dir=str(tmp_path))
  message = str(info.value)
  assert "'cifar10'" in message
  assert str(tmp_path) in message
  assert "tfds build" in message
  assert "\n" not in message
  with pytest.raises(UserError, match="Unknown TFDS dataset"):
    sources.tfds_source("no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_tfds_mocked_cifar10(tmp_path):
  with tfds.testing.mock_data(num_examples=10):
    src = sources.make_source("tfds", name="cifar10", split="train", data_dir=str(tmp_path))
    assert src.num_examples == 10
    assert src.num_classes == 10
    assert not src.random_access
    examples = _all_examples(src)
    assert len(examples) == 10
    assert examples[0]["image"].shape == (32, 32, 3)
    assert examples[0]["image"].dtype == np.uint8
    assert examples[0]["label"].dtype == np.int32

    def batches(**kw):
      return pipeline.pretrain_batches(
        src, global_batch_size=4, image_size=16, view1=PAPER_T, view2=PAPER_T_PRIME, **kw
      )

    run = batches(seed=0)
    first = [next(run) for _ in range(4)]  # crosses an epoch boundary (10 examples)
    assert first[0]["view1"].shape == (4, 16, 16, 3)
    assert first[0]["label"].dtype == np.int32
    again = next(batches(seed=0))
    np.testing.assert_array_equal(again["view2"], first[0]["view2"])
    resumed = next(batches(seed=0, start_step=3))
    np.testing.assert_array_equal(resumed["view1"], first[3]["view1"])
    np.testing.assert_array_equal(resumed["label"], first[3]["label"])
    assert not np.allclose(next(batches(seed=1))["view1"], first[0]["view1"])
    evals = list(pipeline.eval_batches(src, batch_size=4, image_size=16, resize_size=18))
    assert [int(b["mask"].sum()) for b in evals] == [4, 4, 2]
