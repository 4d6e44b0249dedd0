"""TensorFlow's (and Haiku's) 'SAME' padding, shared by the CPU lowering and the PyTorch export."""

from __future__ import annotations


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """'SAME' padding (before, after) of one spatial axis: the extra pixel, if any, goes after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2
