"""BYOL's networks as pure-functional Haiku modules: ResNet v1 encoders, projector and predictor.

Module and parameter names follow the original BYOL code (``res_net50/~/initial_conv``,
``block_group_0/~/block_0/~/conv_0``, ``projector/linear``...), so its released checkpoints map onto
these networks by name. The models know nothing of data or devices: the only link to the device
layout is the optional name of the axis over which BatchNorm averages its statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from byol_jax import config_base, winograd

# depth -> (blocks per group, bottleneck blocks)
RESNET_DEPTHS: dict[str, tuple[tuple[int, ...], bool]] = {
  "resnet18": ((2, 2, 2, 2), False),
  "resnet34": ((3, 4, 6, 3), False),
  "resnet50": ((3, 4, 6, 3), True),
  "resnet101": ((3, 4, 23, 3), True),
  "resnet152": ((3, 8, 36, 3), True),
  "resnet200": ((3, 24, 36, 3), True),
}
_BASIC_CHANNELS = (64, 128, 256, 512)
_BOTTLENECK_CHANNELS = (256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """What defines an encoder's architecture (and so its parameter shapes)."""

  name: str = "resnet50"  # "tiny" or a key of RESNET_DEPTHS
  width_multiplier: int = 1
  small_image_stem: bool = False
  # Residual blocks and output channels (before width_multiplier) of the four stages of the
  # "tiny" encoder (the ResNets' come with their names); a stage of 0 blocks is left out, its
  # stride with it.
  tiny_blocks: tuple[int, ...] = config_base.TINY_BLOCKS
  tiny_channels: tuple[int, ...] = config_base.TINY_CHANNELS


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """Sizes of the projector and predictor MLPs."""

  projector_hidden: int = 4096
  projector_output: int = 256
  predictor_hidden: int = 4096


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow/Haiku SAME padding: the extra pixel, if any, goes after (bottom/right)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _max_pool_axis(x: jax.Array, axis: int, window: int, stride: int) -> jax.Array:
  """Max-pooling along one axis with SAME padding: the maximum of ``window`` strided slices."""
  size = x.shape[axis]
  out = -(-size // stride)
  pads = [(0, 0)] * x.ndim
  pads[axis] = _same_padding(size, window, stride)
  x = jnp.pad(x, pads, constant_values=-jnp.inf)
  views = [
    lax.slice_in_dim(x, tap, tap + (out - 1) * stride + 1, stride, axis) for tap in range(window)
  ]
  return functools.reduce(jnp.maximum, views)


def max_pool_same(x: jax.Array, window: int, stride: int) -> jax.Array:
  """NHWC max-pooling with SAME padding, pooled along height and then along width.

  Equal to ``hk.max_pool`` (forward, and backward wherever the maximum is unique). Separable
  slices and maxima make a forward and backward pass of elementwise selects, ~1.7x faster on
  XLA:CPU than the reduce-window form, whose gradient becomes index bookkeeping and a scatter.
  """
  return _max_pool_axis(_max_pool_axis(x, 1, window, stride), 2, window, stride)


class ResNetEncoder(hk.Module):
  """ResNet v1 torso returning the global-average-pooled representation.

  The standard ImageNet stem is a 7x7 stride-2 convolution followed by a 3x3 stride-2 max-pool;
  the small-image stem (for 32x32 inputs, as in the CIFAR literature) is a 3x3 stride-1
  convolution without the max-pool. Residual blocks are Haiku's v1 blocks, whose last BatchNorm
  scale in bottleneck blocks starts at zero, as in the original BYOL encoder.
  """

  def __init__(
    self,
    blocks_per_group: Sequence[int],
    channels_per_group: Sequence[int],
    bottleneck: bool,
    width_multiplier: int = 1,
    small_image_stem: bool = False,
    bn_config: Mapping[str, Any] | None = None,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self._small_image_stem = small_image_stem
    self._bn_config = dict(bn_config or {})
    self._bn_config.setdefault("decay_rate", 0.9)
    self._bn_config.setdefault("eps", 1e-5)
    self._bn_config.setdefault("create_scale", True)
    self._bn_config.setdefault("create_offset", True)
    stem_channels = min(64, channels_per_group[0]) * width_multiplier
    self._initial_conv = hk.Conv2D(
      output_channels=stem_channels,
      kernel_shape=3 if small_image_stem else 7,
      stride=1 if small_image_stem else 2,
      with_bias=False,
      padding="SAME",
      name="initial_conv",
    )
    self._initial_batchnorm = hk.BatchNorm(name="initial_batchnorm", **self._bn_config)
    self._groups = []
    in_channels = stem_channels
    for i, (num_blocks, channels) in enumerate(zip(blocks_per_group, channels_per_group)):
      if num_blocks == 0:
        continue
      channels *= width_multiplier
      stride = 1 if i == 0 else 2
      self._groups.append(
        hk.nets.ResNet.BlockGroup(
          channels=channels,
          num_blocks=num_blocks,
          stride=stride,
          bn_config=self._bn_config,
          resnet_v2=False,
          bottleneck=bottleneck,
          # A projection shortcut only where the shape changes (always, for bottleneck blocks).
          use_projection=bottleneck or stride != 1 or in_channels != channels,
          name=f"block_group_{i}",
        )
      )
      in_channels = channels
    self.output_dim = in_channels

  def __call__(self, images: jax.Array, is_training: bool) -> jax.Array:
    out = self._initial_conv(images)
    out = self._initial_batchnorm(out, is_training=is_training)
    out = jax.nn.relu(out)
    if not self._small_image_stem:
      out = max_pool_same(out, window=3, stride=2)
    for group in self._groups:
      out = group(out, is_training, False)
    return jnp.mean(out, axis=(1, 2))


def make_encoder(spec: EncoderSpec, bn_config: Mapping[str, Any]) -> ResNetEncoder:
  """Builds the encoder module named by ``spec`` (call inside a Haiku transform)."""
  if spec.name == "tiny":
    return ResNetEncoder(
      blocks_per_group=spec.tiny_blocks,
      channels_per_group=spec.tiny_channels,
      bottleneck=False,
      width_multiplier=spec.width_multiplier,
      small_image_stem=spec.small_image_stem,
      bn_config=bn_config,
      name="res_net_tiny",
    )
  if spec.name not in RESNET_DEPTHS:
    raise ValueError(
      f"Unknown encoder {spec.name!r}; expected 'tiny' or one of {list(RESNET_DEPTHS)}."
    )
  blocks, bottleneck = RESNET_DEPTHS[spec.name]
  return ResNetEncoder(
    blocks_per_group=blocks,
    channels_per_group=_BOTTLENECK_CHANNELS if bottleneck else _BASIC_CHANNELS,
    bottleneck=bottleneck,
    width_multiplier=spec.width_multiplier,
    small_image_stem=spec.small_image_stem,
    bn_config=bn_config,
    # "res_net50" etc., the module names of the original code's checkpoints.
    name="res_net" + spec.name.removeprefix("resnet"),
  )


CONV_IMPLS = tuple(impl for impl in config_base.CONV_IMPLS if impl != "auto")
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
  ResNet's small-spatial, many-channel layers. With ``use_winograd``, 3x3
  stride-1 SAME layers on maps of at least ``WINOGRAD_MIN_SIZE`` with at least
  ``WINOGRAD_MIN_CHANNELS`` input channels use :func:`byol_jax.winograd.conv3x3` instead (2.25x
  fewer multiplications).
  """
  kh, kw, cin, cout = w.shape
  n, h, wd, c = x.shape
  if c != cin:
    raise ValueError(f"Input has {c} channels, the kernel expects {cin}.")
  sh, sw = stride
  if isinstance(padding, str):
    if padding == "SAME":
      pads = [_same_padding(h, kh, sh), _same_padding(wd, kw, sw)]
    elif padding == "VALID":
      pads = [(0, 0), (0, 0)]
    else:
      raise ValueError(f"Unsupported padding {padding!r}.")
  else:
    pads = [tuple(p) for p in padding]
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
    taps = _pixel_pair_taps(h, wd, oh, ow, kh, kw, sh, sw, pads[0][0], pads[1][0])
    # One product with a [H*W*Cin, OH*OW*Cout] matrix of kernel taps (zero where none).
    dense = _tap_matrix(w, taps).reshape(h * wd * cin, oh * ow * cout)
    return (x.reshape(n, h * wd * c) @ dense).reshape(n, oh, ow, cout)
  if useful * 1.3 < kh * kw * oh * ow:  # im2col would spend over 30% on padding
    out = jnp.zeros((n, oh, ow, cout), jnp.result_type(x, w))
    for i, (r0, r1) in enumerate(rows):
      for j, (c0, c1) in enumerate(cols):
        if r1 < r0 or c1 < c0:
          continue
        start = (0, r0 * sh + i - pads[0][0], c0 * sw + j - pads[1][0], 0)
        limit = (n, r1 * sh + i - pads[0][0] + 1, c1 * sw + j - pads[1][0] + 1, c)
        y = _pixel_product(lax.slice(x, start, limit, (1, sh, sw, 1)), w[i, j])
        out = out + jnp.pad(y, ((0, 0), (r0, oh - 1 - r1), (c0, ow - 1 - c1), (0, 0)))
    return out
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


def _matmul_conv_interceptor(
  next_f: Callable, args, kwargs, context: hk.MethodContext, use_winograd: bool
):
  """Runs ``hk.Conv2D`` layers through :func:`conv2d_as_matmul`, with the same parameters."""
  module = context.module
  if (
    context.method_name != "__call__"
    or type(module) is not hk.Conv2D
    or hk.running_init()  # let Haiku create (and initialise) the parameters itself
    or module.channel_index != -1
    or module.feature_group_count != 1
    or module.mask is not None
    or any(d != 1 for d in module.kernel_dilation)
    or kwargs.get("precision") is not None
    or args[0].ndim != 4
  ):
    return next_f(*args, **kwargs)
  x = args[0]
  w = hk.get_parameter("w", (*module.kernel_shape, x.shape[-1], module.output_channels), x.dtype)
  out = conv2d_as_matmul(x, w, module.stride, module.padding, use_winograd)
  if module.with_bias:
    out = out + hk.get_parameter("b", (module.output_channels,), x.dtype)
  return out


@contextlib.contextmanager
def conv_implementation(impl: str) -> Iterator[None]:
  """Context (inside a Haiku transform) choosing how ``hk.Conv2D`` layers compute.

  ``"xla"``: XLA's convolution (best on GPU/TPU). ``"matmul"``: :func:`conv2d_as_matmul`, several
  times faster on XLA:CPU. ``"winograd"``: the same, with Winograd F(2x2, 3x3) for the 3x3 layers
  where it is faster (the CPU default). Parameters, their names and the results (up to float
  rounding) are the same either way.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}.")
  if impl == "xla":
    yield
    return
  interceptor = functools.partial(_matmul_conv_interceptor, use_winograd=impl == "winograd")
  with hk.intercept_methods(interceptor):
    yield


def resolve_conv_impl(impl: str, backend: str) -> str:
  """``"auto"`` -> ``"winograd"`` on CPU, ``"xla"`` on accelerators; other values unchanged."""
  if impl == "auto":
    return "winograd" if backend == "cpu" else "xla"
  return impl


class MLP(hk.Module):
  """Linear(hidden, bias) -> BatchNorm -> ReLU -> Linear(output, no bias): projector/predictor."""

  def __init__(self, hidden_size: int, output_size: int, bn_config: Mapping[str, Any], name: str):
    super().__init__(name=name)
    self._hidden_size = hidden_size
    self._output_size = output_size
    self._bn_config = bn_config

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    out = hk.Linear(self._hidden_size, with_bias=True)(inputs)
    out = hk.BatchNorm(create_scale=True, create_offset=True, **self._bn_config)(
      out, is_training=is_training
    )
    out = jax.nn.relu(out)
    return hk.Linear(self._output_size, with_bias=False)(out)


def make_byol_network(
  encoder: EncoderSpec,
  heads: HeadSpec,
  *,
  bn_decay: float = 0.9,
  bn_eps: float = 1e-5,
  axis_name: str | None = None,
  num_classes: int = 0,
  conv_impl: str = "xla",
) -> hk.TransformedWithState:
  """Returns the transformed BYOL network.

  ``apply(params, state, None, images, is_training, with_predictor)`` returns a dict with the
  ``embedding`` (encoder output), the ``projection`` and, when ``with_predictor``, the
  ``prediction``. The online network calls it with the predictor; the target network without,
  so target parameters hold no predictor. ``axis_name`` names the device axis over which
  BatchNorm statistics are averaged (None on a single device or outside ``pmap``).
  ``num_classes > 0`` adds the online linear probe: ``logits`` of a linear classifier on the
  stop-gradient embedding (online network only), which cannot change the representation.
  ``conv_impl`` picks how convolutions compute (:func:`conv_implementation`).
  """
  bn_config = dict(decay_rate=bn_decay, eps=bn_eps, cross_replica_axis=axis_name)

  def forward(images: jax.Array, is_training: bool, with_predictor: bool = True):
    with conv_implementation(conv_impl):
      embedding = make_encoder(encoder, bn_config)(images, is_training=is_training)
    projection = MLP(heads.projector_hidden, heads.projector_output, bn_config, "projector")(
      embedding, is_training
    )
    out = dict(embedding=embedding, projection=projection)
    if with_predictor:
      out["prediction"] = MLP(
        heads.predictor_hidden, heads.projector_output, bn_config, "predictor"
      )(projection, is_training)
      if num_classes > 0:
        out["logits"] = hk.Linear(num_classes, name="linear_probe")(
          jax.lax.stop_gradient(embedding)
        )
    return out

  return hk.without_apply_rng(hk.transform_with_state(forward))


def make_encoder_network(
  encoder: EncoderSpec,
  *,
  bn_decay: float = 0.9,
  bn_eps: float = 1e-5,
  axis_name: str | None = None,
  conv_impl: str = "xla",
) -> hk.TransformedWithState:
  """The encoder alone, with the same parameter names as inside :func:`make_byol_network`.

  ``apply(params, state, images, is_training)`` returns the representation ``[N, D]``;
  ``axis_name`` and ``conv_impl`` as in :func:`make_byol_network` (``axis_name`` for
  fine-tuning under ``pmap``).
  """
  bn_config = dict(decay_rate=bn_decay, eps=bn_eps, cross_replica_axis=axis_name)

  def forward(images: jax.Array, is_training: bool):
    with conv_implementation(conv_impl):
      return make_encoder(encoder, bn_config)(images, is_training=is_training)

  return hk.without_apply_rng(hk.transform_with_state(forward))


# Modules of the online network only: the target network has no predictor and no probe.
ONLINE_ONLY_MODULES = ("predictor", "linear_probe")


def split_predictor(params: hk.Params) -> tuple[hk.Params, hk.Params]:
  """Splits parameters (or state) into (online-only part: predictor and probe, everything else)."""
  return hk.data_structures.partition(
    lambda module, name, value: module.startswith(ONLINE_ONLY_MODULES), params
  )


def count_params(params: hk.Params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
