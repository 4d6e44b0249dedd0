"""Winograd F(2x2, 3x3) convolution: 3x3 stride-1 convolutions with 2.25x fewer multiplications.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016). The padded input
is cut into overlapping 4x4 tiles (stride 2); each tile ``d`` and the kernel ``g`` are mapped into
the Winograd domain (``B^T d B`` and ``G g G^T``, 4x4 each), where the convolution becomes 16
independent matrix products over channels, one per position of the 4x4 domain, and each tile's
2x2 output is read back with ``A^T m A``. A direct 3x3 convolution multiplies 36 times per 2x2
outputs and channel pair, this one 16 times; the transforms are additions (and halvings of the
kernel), exact up to float rounding (relative error ~1e-7 in float32).

Part of the CPU lowering (:mod:`byol_jax.cpu_ops`, ``config.model.conv_impl="winograd"``). On
XLA:CPU the 16 products run near matmul speed and, unlike im2col patches (9x the input), the
tiles are only 4x the input, so forward and backward passes of a ResNet's 3x3 layers are faster
this way on feature maps of 4x4 and larger with enough channels (see
:func:`byol_jax.cpu_ops.conv_matmul.conv2d_as_matmul`, which picks it). The image transforms
have custom gradients that XLA:CPU runs as a few large passes rather than per-element selections
among strided slices: the input transform's transpose is one product with the transposed 16x16
transform, then adds the overlapping tiles back by phase (even and odd rows and columns), with
no strided scatter; the output transform's is one product with the transposed 16x4 transform
over the image's four phases. The kernel transform and its transpose are additions and halvings.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# The 2D output transform's transpose: [16 = (i, j), 4 = (u, v)], entry AT[u, i] * AT[v, j].
_AAT = np.kron(_AT, _AT).T
# The 2D input transform's transpose: [16 = (a, b), 16 = (i, j)], entry BT[i, a] * BT[j, b].
_BBT = np.kron(_BT, _BT).T


def _combine(matrix: np.ndarray, terms: Sequence[jax.Array]) -> list[jax.Array]:
  """``[sum_j matrix[i, j] * terms[j] for i]``, written as additions where coefficients are ±1."""
  out = []
  for row in matrix:
    acc = None
    for coef, term in zip(row, terms):
      if coef == 0:
        continue
      if coef == -1:
        acc = -term if acc is None else acc - term
        continue
      term = term if coef == 1 else term * coef.astype(term.dtype)
      acc = term if acc is None else acc + term
    out.append(acc)
  return out


def _num_tiles(x_shape: Sequence[int]) -> tuple[int, int]:
  return -(-x_shape[1] // 2), -(-x_shape[2] // 2)


def _transform_tiles_1d(a: jax.Array, axis: int, tiles: int) -> jax.Array:
  """``B^T d`` of every tile ``d`` (4 entries at stride 2) along ``axis``, as a new leading axis."""
  d = [lax.slice_in_dim(a, k, k + 2 * tiles - 1, 2, axis) for k in range(4)]
  return jnp.stack(_combine(_BT, d))


def _tiles(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  th, tw = _num_tiles(x.shape)
  # SAME padding (1 each side), plus one row/column more where the size is odd.
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  # Separably, columns then rows: two passes that each write one stacked array. Sixteen sums of
  # slices stacked at the end cost XLA:CPU a pass more (1.7x as long at 64x16x16x64).
  cols = _transform_tiles_1d(xp, 2, tw)  # [4 (j), N, H + 2, TW, C]
  v = _transform_tiles_1d(cols, 2, th)  # [4 (i), 4 (j), N, TH, TW, C]
  return v.reshape(16, n * th * tw, c)


def _overlap_add(parts: Sequence[jax.Array], axis: int) -> jax.Array:
  """Adds tiles at offsets 0..3 along ``axis`` (stride 2) back into one array of 2t + 2 entries."""

  def shifted(v: jax.Array, before: int) -> jax.Array:
    pads = [(0, 0)] * v.ndim
    pads[axis] = (before, 1 - before)
    return jnp.pad(v, pads)

  even = shifted(parts[0], 0) + shifted(parts[2], 1)
  odd = shifted(parts[1], 0) + shifted(parts[3], 1)
  shape = list(even.shape)
  shape[axis] *= 2
  return jnp.stack([even, odd], axis + 1).reshape(shape)


@jax.custom_vjp
def input_tiles(x: jax.Array) -> jax.Array:
  """Winograd-domain input tiles ``B^T d B`` of NHWC ``x``, as [16, N * ceil(H/2) * ceil(W/2), C]."""
  return _tiles(x)


def _input_tiles_fwd(x: jax.Array):
  # Residuals must be arrays: an empty one carries the input's shape and dtype.
  return _tiles(x), jnp.zeros((*x.shape[:3], 0), x.dtype)


def _input_tiles_bwd(like: jax.Array, g: jax.Array):
  n, h, w, _ = like.shape
  c = g.shape[-1]
  th, tw = _num_tiles(like.shape)
  d = (_BBT.astype(g.dtype) @ g.reshape(16, -1)).reshape(4, 4, n, th, tw, c)  # d[a, b]
  rows = [_overlap_add([d[a, b] for a in range(4)], axis=1) for b in range(4)]
  xp = _overlap_add(rows, axis=2)
  return (xp[:, 1 : 1 + h, 1 : 1 + w].astype(like.dtype),)


input_tiles.defvjp(_input_tiles_fwd, _input_tiles_bwd)


def _output_image(m: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
  n, h, wd, cout = shape
  th, tw = _num_tiles(shape)
  m = m.reshape(4, 4, n, th, tw, cout)
  s = [_combine(_AT, [m[i, j] for i in range(4)]) for j in range(4)]  # s[j][u]
  y = [_combine(_AT, [s[j][u] for j in range(4)]) for u in range(2)]  # y[u][v]
  y = jnp.stack([jnp.stack(y[0], axis=3), jnp.stack(y[1], axis=3)], axis=2)  # n, th, 2, tw, 2, k
  return y.reshape(n, 2 * th, 2 * tw, cout)[:, :h, :wd]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def output_image(m: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
  """The NHWC image ``A^T m A`` of Winograd-domain products m [16, N * tiles, Cout]."""
  return _output_image(m, shape)


def _output_image_fwd(m: jax.Array, shape: tuple[int, int, int, int]):
  return _output_image(m, shape), None


def _output_image_bwd(shape: tuple[int, int, int, int], _, g: jax.Array):
  # One product with the 16x4 transposed transform over the image's four phases (even and odd
  # rows and columns): as autodiff writes it (16 outputs each selecting among strided slices of
  # g) the transpose took ~10x as long on XLA:CPU (10.5 against 1.1 ms at 64x16x16x64).
  n, h, wd, cout = shape
  th, tw = _num_tiles(shape)
  g = jnp.pad(g, ((0, 0), (0, 2 * th - h), (0, 2 * tw - wd), (0, 0)))
  phases = g.reshape(n, th, 2, tw, 2, cout).transpose(2, 4, 0, 1, 3, 5).reshape(4, -1)
  return ((_AAT.astype(g.dtype) @ phases).reshape(16, n * th * tw, cout),)


output_image.defvjp(_output_image_fwd, _output_image_bwd)


def _two_sided(matrix: np.ndarray, k: jax.Array) -> jax.Array:
  """``matrix k matrix^T`` over the two leading axes of ``k``, as [rows * rows, ...]."""
  cols = matrix.shape[1]
  rows = _combine(matrix, [k[i] for i in range(cols)])  # rows[a]: [cols, ...]
  out = [_combine(matrix, [row[j] for j in range(cols)]) for row in rows]  # out[a][b]
  return jnp.stack([b for a in out for b in a])


@jax.custom_vjp
def kernel_transform(w: jax.Array) -> jax.Array:
  """Winograd-domain kernel ``G g G^T`` of a 3x3 HWIO kernel, as [16, Cin, Cout].

  Additions and halvings of the nine taps; its gradient ``G^T dU G`` is written the same way
  (autodiff pads each of the taps' slices to the kernel's full size before adding). As an einsum
  with G, XLA:CPU ran the transform as products that contract over 3 entries, ~6x slower (3.5
  against 0.6 ms at 256x256 channels, forward and backward).
  """
  return _two_sided(_G, w)


def _kernel_transform_fwd(w: jax.Array):
  return _two_sided(_G, w), None


def _kernel_transform_bwd(_, du: jax.Array):
  cin, cout = du.shape[1:]
  return (_two_sided(_G.T, du.reshape(4, 4, cin, cout)).reshape(3, 3, cin, cout),)


kernel_transform.defvjp(_kernel_transform_fwd, _kernel_transform_bwd)


def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
  """``lax.conv_general_dilated(x, w, (1, 1), "SAME")`` for NHWC ``x`` and a 3x3 HWIO kernel."""
  n, h, wd, _ = x.shape
  if w.shape[:2] != (3, 3):
    raise ValueError(f"Winograd F(2x2, 3x3) needs a 3x3 kernel, got {w.shape[:2]}.")
  cout = w.shape[3]
  m = jnp.einsum("tpc,tck->tpk", input_tiles(x), kernel_transform(w))
  return output_image(m, (n, h, wd, cout))
