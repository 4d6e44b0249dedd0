"""Input faults at run time: files that vanish or fail to decode after the start-up check.

A run whose files all become unreadable stops with a UserError instead of spinning; a file that
fails to decode keeps every position's example in place (exact resume), and evaluation and
``embed`` keep each feature row paired with its own file.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tiny
from PIL import Image

import byol_jax
from byol_jax import evaluate, train
from byol_jax.data import augment, pipeline, sources
from byol_jax.errors import UserError

# Pass the header check of folder_source(full_check=False), fail every decoder.
CORRUPT = {
  "jpg": b"\xff\xd8\xff\xe0" + b"no jpeg body" * 8,
  "png": b"\x89PNG\r\n\x1a\n" + b"junk" * 8,
}


def _encode(rng: np.random.Generator, fmt: str, size=(14, 18)) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, fmt)
  return buf.getvalue()


def _class_folder(root, classes: int, per_class: int, corrupt=None, ext: str = "jpg") -> str:
  """``classes`` folders of ``per_class`` images; the file (class, i) ``corrupt`` is garbage."""
  rng = np.random.default_rng(0)
  for c in range(classes):
    os.makedirs(root / f"c{c:02d}", exist_ok=True)
    for i in range(per_class):
      data = CORRUPT[ext] if (c, i) == corrupt else _encode(rng, "PNG" if ext == "png" else "JPEG")
      (root / f"c{c:02d}" / f"{i}.{ext}").write_bytes(data)
  return str(root)


# The command line, with the image folder deleted right after the start-up check (a mount gone).
LOSE_THE_FOLDER = """
import shutil, sys
from byol_jax import main, run_data

make_source = run_data.make_source
folder = sys.argv[1]

def make_then_lose_the_folder(*args, **kwargs):
  source = make_source(*args, **kwargs)
  shutil.rmtree(folder)
  return source

run_data.make_source = make_then_lose_the_folder
sys.argv = ["byol_jax.main", *sys.argv[2:]]
main.entry_point()
"""


def test_pretrain_stops_with_a_user_error_when_the_folder_is_gone(tmp_path):
  folder = _class_folder(tmp_path / "images", classes=2, per_class=8)
  flags = tiny.tiny_flags(**{"data.source": "folder", "data.path": folder})
  # A subprocess, so that a regression (reading forever) fails at the timeout instead of hanging.
  result = subprocess.run(
    [sys.executable, "-c", LOSE_THE_FOLDER, folder, *flags, f"--workdir={tmp_path / 'run'}"],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=240,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("error: ")
  assert f"examples of folder:{folder} could not be read or decoded" in message
  assert "(missing)" in message
  assert "folder is gone" in message
  assert "rerun the same command" in message


def _stream(source, **kw):
  args = dict(
    global_batch_size=4, image_size=8, view1=augment.PAPER_T, view2=augment.PAPER_T_PRIME, seed=0
  )
  return pipeline.pretrain_batches(source, **args, **kw)


def test_resume_is_exact_when_a_file_fails_to_decode(tmp_path, capsys):
  # One image per class: the label of a batch row says which file it holds.
  folder = _class_folder(tmp_path, classes=12, per_class=1, corrupt=(5, 0))
  source = sources.folder_source(folder, full_check=False)
  assert source.num_examples == 12  # the corrupt file passed the start-up check
  run = list(_stream(source, num_batches=9))  # 3 epochs: the bad file comes up 3 times
  printed = capsys.readouterr().out
  for k in (3, 7):
    resumed = list(_stream(source, start_step=k, num_batches=9 - k))
    assert len(resumed) == 9 - k
    for got, want in zip(resumed, run[k:]):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  # Warned about once, with its path, although every epoch meets it.
  bad = os.path.join(folder, "c05", "0.jpg")
  warnings = [line for line in printed.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1
  assert f"{bad} (does not decode)" in warnings[0]
  labels = np.stack([b["label"] for b in run])
  assert 5 not in labels  # replaced by another example of its batch ...
  assert sum(len(set(row.tolist())) < 4 for row in labels) == 3  # ... once per epoch
  # The raw batches flag the replaced slots: exactly the bad file's positions.
  ds = pipeline.pretrain_dataset(
    source, global_batch_size=4, image_size=8, view1=augment.PAPER_T, view2=None, seed=0
  )
  bad_index = source.paths.index(bad)
  for batch in ds.take(9).as_numpy_iterator():
    np.testing.assert_array_equal(batch["ok"], batch["index"] != bad_index)


def test_eval_batches_keep_failed_slots_on_every_process(tmp_path):
  folder = _class_folder(tmp_path, classes=2, per_class=3, corrupt=(0, 1))
  source = sources.folder_source(folder, full_check=False)
  parts = [
    list(
      pipeline.eval_batches(
        source, batch_size=4, image_size=8, resize_size=8, process_index=i, process_count=2
      )
    )
    for i in range(2)
  ]
  # Same number of batches on every process; the failed example keeps its slot, masked.
  assert len(parts[0]) == len(parts[1]) == pipeline.num_eval_batches(6, 4, 2) == 2
  assert [b["mask"].tolist() for b in parts[0]] == [[True, False], [True, False]]
  assert [b["index"].tolist() for b in parts[0]] == [[0, 1], [2, -1]]
  assert [b["label"].tolist() for b in parts[0]] == [[0, -1], [0, -1]]
  assert [b["index"].tolist() for b in parts[1]] == [[3, 4], [5, -1]]
  assert not parts[0][0]["image"][1].any()
  for path in source.paths:
    with open(path, "wb") as f:
      f.write(CORRUPT["jpg"])
  with pytest.raises(UserError, match="None of the 6 examples"):
    list(pipeline.eval_batches(source, batch_size=4, image_size=8, resize_size=8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  # The run of test_multihost_eval, compiled once for this module.
  overrides = {"num_steps": 2, "checkpoint_every_steps": 2, "log_every_steps": 2}
  train.pretrain(tiny.tiny_config(**overrides), workdir)
  return workdir


def test_embed_pairs_each_row_with_its_own_file(checkpoint, tmp_path, monkeypatch, capsys):
  # PNGs: lossless, so that any decoder gives the pixels the features are checked against.
  folder = _class_folder(tmp_path / "images", classes=2, per_class=3, corrupt=(0, 1), ext="png")
  monkeypatch.setattr(sources, "FULL_CHECK_MAX_FILES", 0)  # a big folder: header checks only
  config = tiny.tiny_config(
    mode="embed",
    checkpoint=checkpoint,
    **{"model.encoder": "checkpoint", "data.source": "folder", "data.path": folder},
  )
  data = np.load(evaluate.embed(config, str(tmp_path / "out")))
  names = [os.path.relpath(str(f), folder) for f in data["filenames"]]
  assert names == ["c00/0.png", "c00/2.png", "c01/0.png", "c01/1.png", "c01/2.png"]
  assert data["labels"].tolist() == [0, 0, 1, 1, 1]
  encoder = byol_jax.load_encoder(checkpoint)
  for name, features in zip(data["filenames"], data["features"]):
    alone = encoder(np.asarray(Image.open(str(name)))[None])[0]
    # The folder's views come from tf.data, load_encoder's from JAX: pixels differ by < 1e-3
    # (TensorFlow tabulates its bicubic kernel), features by a few 1e-3; other files by far more.
    np.testing.assert_allclose(features, alone, rtol=1e-2, atol=1e-2)
  warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1
  assert "1 example(s)" in warnings[0]
  assert os.path.join(folder, "c00", "1.png (does not decode)") in warnings[0]
