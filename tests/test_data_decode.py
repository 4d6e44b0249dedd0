"""Tests of the crop-window JPEG decoding of file sources and of the colour-op placement switch.

Decoding only the crop window must give the pixels of a full decode, so that the fast path keeps
the batches (and their determinism) of the plain one exactly.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from byol_jax.data import augment, pipeline, sources


def _encode(image: np.ndarray, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, fmt, **kw)
  return buf.getvalue()


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  # Noise on a gradient: strong colour edges, where chroma upsampling differences would show.
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([yy * 255 / h, xx * 255 / w, (yy + xx) * 127 / (h + w)], -1)
  return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


ENCODINGS = {
  "jpeg_420": lambda im: _encode(im, "JPEG", quality=90, subsampling=2),
  "jpeg_422": lambda im: _encode(im, "JPEG", quality=90, subsampling=1),
  "jpeg_444": lambda im: _encode(im, "JPEG", quality=90, subsampling=0),
  "jpeg_progressive": lambda im: _encode(im, "JPEG", quality=80, progressive=True),
  "jpeg_gray": lambda im: _encode(im[..., 0], "JPEG", quality=90),
  "png": lambda im: _encode(im, "PNG"),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_encoded_crops_equal_full_decode_then_slice(encoding):
  rng = np.random.default_rng(0)
  params = [augment.PAPER_T, augment.PAPER_T_PRIME.replace(crop_area_min=0.01)]
  for trial in range(6):
    h, w = int(rng.integers(17, 90)), int(rng.integers(17, 90))
    data = tf.constant(ENCODINGS[encoding](_smooth_image(rng, h, w)))
    full = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    seeds = [tf.constant([trial, 2 * k], tf.int64) for k in range(2)]
    crops = pipeline.encoded_crops(data, seeds, params)
    for crop, s, p in zip(crops, seeds, params):
      oy, ox, bh, bw = (int(v) for v in augment.sample_crop_box(h, w, s, p))
      np.testing.assert_array_equal(crop.numpy(), full[oy : oy + bh, ox : ox + bw])


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  """Eight JPEGs and four PNGs of assorted sizes in two class folders."""
  root = tmp_path_factory.mktemp("mixed")
  rng = np.random.default_rng(1)
  for i in range(12):
    folder = root / f"class_{i % 2}"
    folder.mkdir(exist_ok=True)
    image = _smooth_image(rng, int(rng.integers(20, 70)), int(rng.integers(20, 70)))
    if i % 3 == 2:
      (folder / f"{i:02d}.png").write_bytes(_encode(image, "PNG"))
    else:
      (folder / f"{i:02d}.jpg").write_bytes(_encode(image, "JPEG", quality=85))
  return str(root)


def _decoding_source(path: str) -> sources.FileSource:
  source = sources.folder_source(path, full_check=False)
  # The plain path: every file fully decoded by read(), then cropped.
  source.encoded_reads = False
  return source


@pytest.mark.parametrize("host_colour_ops", [True, False])
def test_file_source_batches_equal_plain_decode(mixed_folder, host_colour_ops):
  fast = sources.folder_source(mixed_folder, full_check=False)
  assert fast.encoded_reads
  plain = _decoding_source(mixed_folder)
  args = dict(
    global_batch_size=6,
    image_size=16,
    view1=augment.PAPER_T,
    view2=augment.PAPER_T_PRIME,
    seed=3,
    host_colour_ops=host_colour_ops,
  )
  a = pipeline.pretrain_batches(fast, **args)
  b = pipeline.pretrain_batches(plain, **args)
  for _ in range(3):
    x, y = next(a), next(b)
    for key in ("view1", "view2", "label"):
      np.testing.assert_array_equal(x[key], y[key])
  assert x["view1"].dtype == (np.float32 if host_colour_ops else np.uint8)


def test_subset_and_single_view_batches_use_the_same_pixels(mixed_folder):
  fast = sources.subset_source(sources.folder_source(mixed_folder, full_check=False), [1, 4, 7, 9])
  plain = sources.subset_source(_decoding_source(mixed_folder), [1, 4, 7, 9])
  assert fast.encoded_reads
  assert not plain.encoded_reads
  args = dict(global_batch_size=4, image_size=16, params=augment.PAPER_T, seed=0)
  x = next(pipeline.train_batches(fast, **args))
  y = next(pipeline.train_batches(plain, **args))
  np.testing.assert_array_equal(x["image"], y["image"])
  np.testing.assert_array_equal(x["label"], y["label"])


def test_uint8_views_round_the_float_views():
  rng = np.random.default_rng(2)
  image = tf.constant(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
  seeds = augment.view_seeds(tf.constant([5, 6], tf.int64))
  crop = image[3:30, 2:25]
  as_float = augment.finish_view(crop, seeds[1], seeds[2], augment.PAPER_T, 24, colour_ops=False)
  as_uint8 = augment.finish_view_uint8(crop, seeds[1], augment.PAPER_T, 24)
  assert as_uint8.dtype == tf.uint8
  diff = np.abs(as_uint8.numpy().astype(int) - np.round(as_float.numpy() * 255).astype(int))
  # Equal but for float rounding at exact ties.
  assert diff.max() <= 1
  assert (diff > 0).mean() < 1e-3


def test_default_host_colour_ops():
  # Accelerators take the colour ops off the host, as the original code did.
  assert pipeline.default_host_colour_ops("gpu") is False
  assert pipeline.default_host_colour_ops("tpu") is False
  assert pipeline.default_host_colour_ops("cpu") is True
