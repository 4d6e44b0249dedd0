"""Scalar metrics to ``metrics.jsonl`` and TensorBoard, and a progress line with an ETA.

Only process 0 writes; the other processes get writers that do nothing, so calling code needs no
``if jax.process_index() == 0`` of its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

import numpy as np

from byol_jax import config_diff
from byol_jax.errors import UserError


class MetricWriter:
  """Appends ``{"step": k, name: value, ...}`` lines to a JSONL file and to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self._enabled = enabled
    self._tb = None
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      try:
        import tensorflow as tf
      except ImportError:  # accelerator hosts with JAX only: metrics.jsonl has every value
        print(
          f"TensorBoard logs off: TensorFlow is not installed (every logged value is in "
          f"{self.jsonl_path}).",
          flush=True,
        )
        return
      self._tb = tf.summary.create_file_writer(self.tensorboard_dir)

  @property
  def tensorboard_on(self) -> bool:
    """Whether the scalars also go to TensorBoard event files."""
    return self._tb is not None

  def truncate_after(self, step: int) -> None:
    """Drops the JSONL records of steps after ``step`` (they are about to be recomputed), and a
    line cut short by a kill during its write."""
    if not self._enabled or not os.path.exists(self.jsonl_path):
      return
    with open(self.jsonl_path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except ValueError:  # a partial line
        continue
      if record["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
      tmp = self.jsonl_path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.jsonl_path)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    try:
      with open(self.jsonl_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    except OSError as e:
      raise UserError(
        f"Writing {self.jsonl_path} failed ({e.strerror or e}): free space or fix the folder, "
        "then run the same command to resume from the last checkpoint."
      ) from e
    if self._tb is not None:
      import tensorflow as tf
      from tensorflow.core.framework import summary_pb2

      # What tf.summary.scalar writes, without needing the tensorboard package installed.
      metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
      ).SerializeToString()
      with self._tb.as_default(step=int(step)):
        for k, v in record.items():
          if k != "step":
            tf.summary.write(k, tf.constant(v, tf.float32), metadata=metadata)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def record_config(workdir: str, config_json: str, start_step: int) -> tuple[str, list[str]] | None:
  """Writes the run's config to ``<workdir>/config.json``.

  A resume with another config keeps the previous start's file as
  ``config.before_step_<start_step>[-k].json``, so every start's config stays on disk, and
  returns (that path, the dotted names of the fields that changed); None when nothing changed.
  """
  path = os.path.join(workdir, "config.json")
  change = None
  if os.path.exists(path):
    with open(path) as f:
      previous = f.read()
    if previous == config_json:
      return None
    kept = os.path.join(workdir, f"config.before_step_{start_step}.json")
    k = 1
    while os.path.exists(kept):
      k += 1
      kept = os.path.join(workdir, f"config.before_step_{start_step}-{k}.json")
    os.replace(path, kept)
    change = (kept, config_diff.changed_fields(previous, config_json))
  with open(path, "w") as f:
    f.write(config_json)
  return change


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Prints ``step k/K | images/s | metrics | ETA`` lines; throughput excludes the first step
  (compilation)."""

  def __init__(
    self, total_steps: int, batch_size: int, enabled: bool = True, stream: TextIO | None = None
  ):
    self._total = total_steps
    self._batch = batch_size
    self._enabled = enabled
    self._stream = stream or sys.stdout
    self._last_time: float | None = None
    self._last_step: int | None = None

  def start(self, step: int) -> None:
    """Marks the time at which ``step`` was reached (call after the first, compiling step)."""
    self._last_time, self._last_step = time.perf_counter(), step

  def images_per_second(self, step: int) -> float:
    if self._last_time is None or self._last_step is None or step <= self._last_step:
      return float("nan")
    return (step - self._last_step) * self._batch / (time.perf_counter() - self._last_time)

  def update(self, step: int, scalars: Mapping[str, float]) -> float:
    """Prints one line and returns the images/s since the last call."""
    rate = self.images_per_second(step)
    if self._enabled:
      eta = (self._total - step) * self._batch / rate if rate == rate and rate > 0 else float("nan")
      parts = [f"step {step}/{self._total}", f"{rate:8.1f} img/s"]
      parts += [f"{k} {float(v):.4g}" for k, v in scalars.items()]
      parts.append(f"ETA {_duration(eta)}" if eta == eta else "ETA --")
      print(" | ".join(parts), file=self._stream, flush=True)
    self.start(step)
    return rate
