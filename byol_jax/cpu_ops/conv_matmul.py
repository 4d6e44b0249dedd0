"""2-D convolutions as matrix products: im2col, per-tap products and dense tap matrices.

Part of the CPU lowering (:mod:`byol_jax.cpu_ops`), used for ``hk.Conv2D`` layers when
``config.model.conv_impl`` is "matmul" or "winograd": XLA:CPU runs large matrix products near its
peak, its direct convolutions at a few percent of it on a ResNet's small-spatial, many-channel
layers. The results equal XLA's convolution up to float rounding, values and gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from byol_jax.cpu_ops import winograd
from byol_jax.padding import same_padding

# Where Winograd beats im2col on XLA:CPU (3x3 stride-1 layers): output maps of at least this size
# (smaller maps have few multiplications to save, and 2x2 maps are already one dense product) ...
WINOGRAD_MIN_SIZE = 4
# ... and at least this many input channels (its 16 products contract over the input channels
# alone, im2col's over 9x as many: few channels make small, slow products).
WINOGRAD_MIN_CHANNELS = 16
# Below this many input channels, im2col gathers column taps before row taps (wider copies).
IM2COL_MIN_CHANNELS = 16


def _tap_windows(
  in_size: int, out_size: int, kernel: int, stride: int, pad_before: int
) -> list[tuple[int, int]]:
  """For each kernel tap along one axis, the output range [first, last] it meets the input in."""
  windows = []
  for tap in range(kernel):
    first = max(0, -(-(pad_before - tap) // stride))
    last = min(out_size - 1, (in_size - 1 + pad_before - tap) // stride)
    windows.append((first, last))
  return windows


def _pixel_pair_taps(
  h: int, w: int, oh: int, ow: int, kh: int, kw: int, sh: int, sw: int, top: int, left: int
) -> np.ndarray:
  """[H*W, OH*OW] index of the kernel tap joining each input and output pixel (kh*kw: none)."""
  taps = np.full((h * w, oh * ow), kh * kw)
  for oi in range(oh):
    for oj in range(ow):
      for ki in range(kh):
        for kj in range(kw):
          i, j = oi * sh + ki - top, oj * sw + kj - left
          if 0 <= i < h and 0 <= j < w:
            taps[i * w + j, oi * ow + oj] = ki * kw + kj
  return taps


def _tap_matrix(w: jax.Array, taps: np.ndarray) -> jax.Array:
  """The [P, Cin, Q, Cout] matrix whose block (p, q) is kernel tap ``taps[p, q]`` (none: zero).

  Stacked from static slices of ``w``, with a gradient that sums each tap's blocks: written as
  the gather ``w[taps]``, XLA:CPU made the transpose a scatter-add and the forward a slow strided
  copy (fwd + bwd of a 3x3 layer on 2x2 maps, 512 channels, batch 64: 32 ms, this way 18 ms).
  """
  kh, kw, cin, cout = w.shape
  pairs = [list(zip(*np.nonzero(taps == tap))) for tap in range(kh * kw)]

  def build(w: jax.Array) -> jax.Array:
    zero = jnp.zeros((cin, cout), w.dtype)
    blocks = [[zero if t == kh * kw else w[t // kw, t % kw] for t in row] for row in taps]
    return jnp.stack([jnp.stack(row, axis=1) for row in blocks])

  def tap_sums(g: jax.Array) -> jax.Array:
    sums = [
      functools.reduce(jnp.add, [g[p, :, q] for p, q in pq]) if pq else jnp.zeros_like(g[0, :, 0])
      for pq in pairs
    ]
    return jnp.stack(sums).reshape(kh, kw, cin, cout)

  matrix = jax.custom_vjp(build)
  matrix.defvjp(lambda w: (build(w), None), lambda _, g: (tap_sums(g),))
  return matrix(w)


def conv2d_as_matmul(
  x: jax.Array,
  w: jax.Array,
  stride: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  use_winograd: bool = False,
) -> jax.Array:
  """A 2-D NHWC convolution computed with matrix products.

  Equal to ``lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=("NHWC", "HWIO",
  "NHWC"))``. On large feature maps it is one product over gathered patches (im2col): ``kh * kw``
  strided slices of the padded input, concatenated along channels. On small ones (a ResNet's last
  stages: 4x4 and 2x2 at 64x64 inputs) most patch entries would be padding, so each kernel tap is
  instead its own product over the input window it meets, padded into place and summed, which
  wastes no work; on the smallest (3x3 on 2x2 maps: every input pixel meets every output pixel)
  the layer is one product with an [H*W*Cin, OH*OW*Cout] matrix of kernel taps. Either way
  forward and backward passes are large matrix products plus cheap slicing: XLA:CPU runs those
  near its matmul speed, while its direct convolutions reach only a few percent of it on a
  ResNet's small-spatial, many-channel layers. With ``use_winograd``, 3x3 stride-1 SAME layers on
  maps of at least ``WINOGRAD_MIN_SIZE`` with at least ``WINOGRAD_MIN_CHANNELS`` input channels
  use :func:`byol_jax.cpu_ops.winograd.conv3x3` instead (2.25x fewer multiplications).
  """
  kh, kw, cin, _ = w.shape
  _, h, wd, c = x.shape
  if c != cin:
    raise ValueError(f"Input has {c} channels, the kernel expects {cin}.")
  sh, sw = stride
  pads = _explicit_padding(padding, (h, wd), (kh, kw), (sh, sw))
  oh = (h + sum(pads[0]) - kh) // sh + 1
  ow = (wd + sum(pads[1]) - kw) // sw + 1
  if kh == kw == 1 and pads == [(0, 0), (0, 0)]:
    return _pixel_product(x[:, ::sh, ::sw, :], w[0, 0])
  if (
    use_winograd
    and (kh, kw, sh, sw) == (3, 3, 1, 1)
    and pads == [(1, 1), (1, 1)]
    and min(oh, ow) >= WINOGRAD_MIN_SIZE
    and cin >= WINOGRAD_MIN_CHANNELS
  ):
    return winograd.conv3x3(x, w)
  rows = _tap_windows(h, oh, kh, sh, pads[0][0])
  cols = _tap_windows(wd, ow, kw, sw, pads[1][0])
  useful = sum(max(0, r1 - r0 + 1) for r0, r1 in rows) * sum(max(0, c1 - c0 + 1) for c0, c1 in cols)
  if h * wd * oh * ow <= 1.3 * useful:  # (nearly) every input pixel meets every output pixel
    return _dense_tap_product(x, w, (oh, ow), (sh, sw), pads)
  if useful * 1.3 < kh * kw * oh * ow:  # im2col would spend over 30% on padding
    return _per_tap_products(x, w, (oh, ow), (sh, sw), pads, rows, cols)
  return _im2col_product(x, w, (oh, ow), (sh, sw), pads)


def _explicit_padding(
  padding: str | Sequence[tuple[int, int]],
  size: tuple[int, int],
  kernel: tuple[int, int],
  stride: tuple[int, int],
) -> list[tuple[int, int]]:
  """[(top, bottom), (left, right)] of "SAME", "VALID" or explicit pairs."""
  if not isinstance(padding, str):
    return [tuple(p) for p in padding]
  if padding == "SAME":
    return [same_padding(s, k, st) for s, k, st in zip(size, kernel, stride)]
  if padding == "VALID":
    return [(0, 0), (0, 0)]
  raise ValueError(f"Unsupported padding {padding!r}.")


def _dense_tap_product(x, w, out_size, stride, pads) -> jax.Array:
  """One product with a [H*W*Cin, OH*OW*Cout] matrix of kernel taps (zero where none)."""
  kh, kw, cin, cout = w.shape
  n, h, wd, _ = x.shape
  oh, ow = out_size
  taps = _pixel_pair_taps(h, wd, oh, ow, kh, kw, *stride, pads[0][0], pads[1][0])
  dense = _tap_matrix(w, taps).reshape(h * wd * cin, oh * ow * cout)
  return (x.reshape(n, h * wd * cin) @ dense).reshape(n, oh, ow, cout)


def _per_tap_products(x, w, out_size, stride, pads, rows, cols) -> jax.Array:
  """Each kernel tap's product over the input window it meets, padded into place and summed."""
  n, _, _, c = x.shape
  oh, ow = out_size
  sh, sw = stride
  out = jnp.zeros((n, oh, ow, w.shape[-1]), jnp.result_type(x, w))
  for i, (r0, r1) in enumerate(rows):
    for j, (c0, c1) in enumerate(cols):
      if r1 < r0 or c1 < c0:
        continue
      start = (0, r0 * sh + i - pads[0][0], c0 * sw + j - pads[1][0], 0)
      limit = (n, r1 * sh + i - pads[0][0] + 1, c1 * sw + j - pads[1][0] + 1, c)
      y = _pixel_product(lax.slice(x, start, limit, (1, sh, sw, 1)), w[i, j])
      out = out + jnp.pad(y, ((0, 0), (r0, oh - 1 - r1), (c0, ow - 1 - c1), (0, 0)))
  return out


def _im2col_product(x, w, out_size, stride, pads) -> jax.Array:
  """One product over gathered patches: ``kh * kw`` strided slices of the padded input."""
  kh, kw, cin, cout = w.shape
  n, _, _, c = x.shape
  oh, ow = out_size
  sh, sw = stride
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  if c < IM2COL_MIN_CHANNELS:
    # Few channels (an RGB stem): gathering kh * kw slices of a few floats each is slow; the
    # kw column taps first, then kh row taps of those, move kw times wider pieces (gathering the
    # 7x7 stem's patches at 64x64, batch 64: 8.8 -> 5.1 ms).
    xp = jnp.concatenate(
      [lax.slice_in_dim(xp, j, j + (ow - 1) * sw + 1, sw, axis=2) for j in range(kw)], axis=-1
    )
    col_taps, col_stride, width = 1, 1, kw * c
  else:
    col_taps, col_stride, width = kw, sw, c
  patches = jnp.concatenate(
    [
      lax.slice(
        xp,
        (0, i, j, 0),
        (n, i + (oh - 1) * sh + 1, j + (ow - 1) * col_stride + 1, width),
        (1, sh, col_stride, 1),
      )
      for i in range(kh)
      for j in range(col_taps)
    ],
    axis=-1,
  )
  return _pixel_product(patches, w.reshape(kh * kw * cin, cout))


def _pixel_product(x: jax.Array, w: jax.Array) -> jax.Array:
  """``x @ w`` for an NHWC ``x``, as one 2-D product over all pixels.

  The same product on the 4-D array differentiates into a weight gradient that contracts three
  axes, for which XLA:CPU first copies the output gradient into a transposed layout: the 7x7
  stem's forward and weight gradient (batch 64 at 64x64) took 49 ms that way, 32 ms in 2-D.
  """
  return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])
