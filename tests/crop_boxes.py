"""The original BYOL code's random-crop boxes, transcribed independently in numpy, and the
statistics by which the crop tests compare two sets of boxes."""

from __future__ import annotations

import numpy as np

STATISTICS = ("area", "log_aspect", "centre_y", "centre_x", "iou")


def original_boxes(rng: np.random.Generator, height: int, width: int, num: int) -> np.ndarray:
  """(y, x, h, w) rows drawn as the original code draws them."""
  target = rng.uniform(0.08, 1.0, num) * height * width
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), num))
  w = np.minimum(np.round(np.sqrt(target * aspect)), width).astype(np.int64)
  h = np.minimum(np.round(np.sqrt(target / aspect)), height).astype(np.int64)
  y = rng.integers(0, height - h + 1)
  x = rng.integers(0, width - w + 1)
  return np.stack([y, x, h, w], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  top = np.maximum(a[:, 0], b[:, 0])
  left = np.maximum(a[:, 1], b[:, 1])
  bottom = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
  right = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
  inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
  return inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter)


def statistics(pairs: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
  """Each statistic over both views' boxes (the IoU over pairs)."""
  y, x, h, w = np.concatenate(pairs).T
  return {
    "area": h * w / (height * width),
    "log_aspect": np.log(w / h),
    "centre_y": (y + h / 2) / height,
    "centre_x": (x + w / 2) / width,
    "iou": _iou(pairs[0], pairs[1]),
  }
