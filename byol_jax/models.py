"""BYOL's networks as pure-functional Haiku modules: ResNet v1 encoders, projector and predictor.

Module and parameter names follow the original BYOL code (``res_net50/~/initial_conv``,
``block_group_0/~/block_0/~/conv_0``, ``projector/linear``...), so its released checkpoints map onto
these networks by name. The models know nothing of data or devices: the only link to the device
layout is the optional name of the axis over which BatchNorm averages its statistics.

``EncoderSpec.normalization = "group_ws"`` builds the same networks without batch statistics, as
in "BYOL works even without batch statistics" (Richemond et al. 2020): weight-standardised
convolutions (:class:`WSConv2D`, the same ``w`` parameter as ``hk.Conv2D``) followed by
``hk.GroupNorm`` wherever the BatchNorm path has a BatchNorm (``initial_group_norm``,
``group_norm_0``, ``shortcut_group_norm``, ``projector/group_norm``...). See
``config_base`` (``model.normalization``) for the choices and their sources.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax import config_base

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
# GroupNorm's groups (gcd(GN_GROUPS, C) for C channels) and the weight standardisation's eps
# (BiT's; the kernels' own variance, ~1/fan-in, is as small as 2e-4): see config_base.
GN_GROUPS = 16
WS_EPS = 1e-10


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
  # "batch" or "group_ws" (GroupNorm + weight standardisation), for the encoder and the heads.
  normalization: str = "batch"
  # "torchvision": projection shortcuts only where a block changes the shape; "original": in the
  # first block of every stage, as the original code's ResNet-18/34.
  resnet_layout: str = "torchvision"


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """Sizes of the projector and predictor MLPs."""

  projector_hidden: int = 4096
  projector_output: int = 256
  predictor_hidden: int = 4096
  # False: no predictor, the online projection is its own prediction (the BYOL paper's ablation).
  predictor: bool = True
  # Linear layers of the projector and of the predictor (1: one linear map; BYOL 2 and 2,
  # SimSiam 3 and 2), each but the last followed by the hidden norm and a ReLU.
  projector_layers: int = 2
  predictor_layers: int = 2
  # Where the heads normalise (``config_base.HEAD_BATCHNORMS``, SimSiam's Table 3): "hidden"
  # (BYOL), "none", "hidden+projector_output" (SimSiam), "all" (the predictor's output too).
  head_batchnorm: str = "hidden"


def group_count(channels: int) -> int:
  """GroupNorm's number of groups for ``channels`` channels: :data:`GN_GROUPS` where it divides."""
  return math.gcd(GN_GROUPS, channels)


def standardize_kernel(w: jax.Array, eps: float = WS_EPS) -> jax.Array:
  """Weight standardisation: each output channel's kernel (the last axis) to mean 0, variance 1
  over all its other axes, computed in at least float32."""
  w = w.astype(jnp.promote_types(w.dtype, jnp.float32))
  axes = tuple(range(w.ndim - 1))
  w = w - jnp.mean(w, axis=axes, keepdims=True)
  return w * jax.lax.rsqrt(jnp.mean(jnp.square(w), axis=axes, keepdims=True) + eps)


class WSConv2D(hk.Conv2D):
  """``hk.Conv2D`` computing with its kernel weight-standardised (:func:`standardize_kernel`).

  The parameter is ``hk.Conv2D``'s own ``w``, standardised where the convolution reads it (a
  custom getter), so the convolution itself stays Haiku's and whatever computes Haiku's
  convolutions (XLA, ``byol_jax.cpu_ops``) computes this one with the standardised kernel.
  """

  def __call__(self, inputs: jax.Array, **kwargs) -> jax.Array:
    def standardized(next_getter: Callable, value: jax.Array, context: hk.GetterContext):
      if context.module is self and context.name == "w":
        value = standardize_kernel(value)
      return next_getter(value)

    with hk.custom_getter(standardized):
      return super().__call__(inputs, **kwargs)


class GroupWSBlock(hk.Module):
  """Haiku's ResNet v1 block (``hk.nets.ResNet.BlockV1``) with weight-standardised convolutions
  and GroupNorm: the same convolutions, names and zero-initialised last scale of bottleneck
  blocks, ``group_norm_i`` for ``batchnorm_i``."""

  def __init__(
    self,
    channels: int,
    stride: int,
    use_projection: bool,
    bottleneck: bool,
    eps: float,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self._shortcut = None
    if use_projection:
      self._shortcut = (
        WSConv2D(channels, 1, stride=stride, with_bias=False, name="shortcut_conv"),
        hk.GroupNorm(group_count(channels), eps=eps, name="shortcut_group_norm"),
      )
    if bottleneck:  # (output channels, kernel, stride) of each convolution, as in BlockV1
      shapes = [(channels // 4, 1, 1), (channels // 4, 3, stride), (channels, 1, 1)]
    else:
      shapes = [(channels, 3, stride), (channels, 3, 1)]
    self._layers = []
    for i, (out, kernel, s) in enumerate(shapes):
      zero = bottleneck and i == 2
      self._layers.append(
        (
          WSConv2D(out, kernel, stride=s, with_bias=False, name=f"conv_{i}"),
          hk.GroupNorm(
            group_count(out),
            eps=eps,
            scale_init=jnp.zeros if zero else None,
            name=f"group_norm_{i}",
          ),
        )
      )

  def __call__(self, inputs: jax.Array, is_training: bool, test_local_stats: bool) -> jax.Array:
    del is_training, test_local_stats  # GroupNorm computes the same in training and inference
    shortcut = inputs
    if self._shortcut is not None:
      conv, norm = self._shortcut
      shortcut = norm(conv(inputs))
    out = inputs
    for i, (conv, norm) in enumerate(self._layers):
      out = norm(conv(out))
      if i < len(self._layers) - 1:
        out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


class GroupWSBlockGroup(hk.Module):
  """A stage of :class:`GroupWSBlock` (as ``hk.nets.ResNet.BlockGroup``: ``blocks``, the stride
  and any projection in the first)."""

  def __init__(
    self,
    channels: int,
    num_blocks: int,
    stride: int,
    use_projection: bool,
    bottleneck: bool,
    eps: float,
    name: str | None = None,
  ):
    super().__init__(name=name)
    self.blocks = [
      GroupWSBlock(
        channels, stride if i == 0 else 1, i == 0 and use_projection, bottleneck, eps, f"block_{i}"
      )
      for i in range(num_blocks)
    ]


class ResNetEncoder(hk.Module):
  """ResNet v1 torso returning the global-average-pooled representation.

  The standard ImageNet stem is a 7x7 stride-2 convolution followed by a 3x3 stride-2 max-pool;
  the small-image stem (for 32x32 inputs, as in the CIFAR literature) is a 3x3 stride-1
  convolution without the max-pool. Residual blocks are Haiku's v1 blocks, whose last BatchNorm
  scale in bottleneck blocks starts at zero, as in the original BYOL encoder; with
  ``normalization="group_ws"``, :class:`GroupWSBlock` (weight-standardised convolutions and
  GroupNorm) and a weight-standardised stem with GroupNorm. ``projection_everywhere`` puts a
  projection shortcut in the first block of every stage, as the original code's ResNet-18/34,
  instead of only where the shape changes. ``remat`` recomputes each residual block's
  activations in the backward pass (``hk.remat``: ``jax.checkpoint``) instead of keeping them.
  """

  def __init__(
    self,
    blocks_per_group: Sequence[int],
    channels_per_group: Sequence[int],
    bottleneck: bool,
    width_multiplier: int = 1,
    small_image_stem: bool = False,
    bn_config: Mapping[str, Any] | None = None,
    normalization: str = "batch",
    projection_everywhere: bool = False,
    remat: bool = False,
    name: str | None = None,
  ):
    super().__init__(name=name)
    if normalization not in config_base.NORMALIZATIONS:
      raise ValueError(
        f"Unknown normalization {normalization!r}; expected one of {config_base.NORMALIZATIONS}."
      )
    group_ws = normalization == "group_ws"
    self._small_image_stem = small_image_stem
    self._remat = remat
    self._bn_config = dict(bn_config or {})
    self._bn_config.setdefault("decay_rate", 0.9)
    self._bn_config.setdefault("eps", 1e-5)
    self._bn_config.setdefault("create_scale", True)
    self._bn_config.setdefault("create_offset", True)
    eps = self._bn_config["eps"]
    stem_channels = min(64, channels_per_group[0]) * width_multiplier
    self._initial_conv = (WSConv2D if group_ws else hk.Conv2D)(
      output_channels=stem_channels,
      kernel_shape=3 if small_image_stem else 7,
      stride=1 if small_image_stem else 2,
      with_bias=False,
      padding="SAME",
      name="initial_conv",
    )
    if group_ws:
      norm = hk.GroupNorm(group_count(stem_channels), eps=eps, name="initial_group_norm")
      self._initial_norm = lambda x, is_training: norm(x)
    else:
      bn = hk.BatchNorm(name="initial_batchnorm", **self._bn_config)
      self._initial_norm = lambda x, is_training: bn(x, is_training=is_training)
    self._groups = []
    in_channels = stem_channels
    for i, (num_blocks, channels) in enumerate(zip(blocks_per_group, channels_per_group)):
      if num_blocks == 0:
        continue
      channels *= width_multiplier
      stride = 1 if i == 0 else 2
      # A projection shortcut where the shape changes (always, for bottleneck blocks), or in
      # every stage.
      use_projection = projection_everywhere or bottleneck or stride != 1 or in_channels != channels
      if group_ws:
        group = GroupWSBlockGroup(
          channels, num_blocks, stride, use_projection, bottleneck, eps, name=f"block_group_{i}"
        )
      else:
        group = hk.nets.ResNet.BlockGroup(
          channels=channels,
          num_blocks=num_blocks,
          stride=stride,
          bn_config=self._bn_config,
          resnet_v2=False,
          bottleneck=bottleneck,
          use_projection=use_projection,
          name=f"block_group_{i}",
        )
      self._groups.append(group)
      in_channels = channels
    self.output_dim = in_channels

  def __call__(self, images: jax.Array, is_training: bool) -> jax.Array:
    out = self._initial_conv(images)
    out = self._initial_norm(out, is_training)
    out = jax.nn.relu(out)
    if not self._small_image_stem:
      # A module rather than hk.max_pool, so that byol_jax.cpu_ops can lower it on XLA:CPU.
      out = hk.MaxPool(window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")(out)
    for group in self._groups:
      # Block by block (the modules and their names are the groups'), so each can be remat-ed.
      for block in group.blocks:

        def run(x: jax.Array, block: hk.Module = block) -> jax.Array:
          return block(x, is_training, False)

        out = hk.remat(run)(out) if self._remat else run(out)
    return jnp.mean(out, axis=(1, 2))


def encoder_module_name(spec: EncoderSpec) -> str:
  """The encoder's top-level module name: "res_net50" etc., as in the original checkpoints."""
  return "res_net_tiny" if spec.name == "tiny" else "res_net" + spec.name.removeprefix("resnet")


def make_encoder(
  spec: EncoderSpec, bn_config: Mapping[str, Any], remat: bool = False
) -> ResNetEncoder:
  """Builds the encoder module named by ``spec`` (call inside a Haiku transform); ``remat``
  recomputes each residual block's activations in the backward pass."""
  if spec.resnet_layout not in config_base.RESNET_LAYOUTS:
    raise ValueError(
      f"Unknown resnet_layout {spec.resnet_layout!r}; expected one of {config_base.RESNET_LAYOUTS}."
    )
  common = dict(
    width_multiplier=spec.width_multiplier,
    small_image_stem=spec.small_image_stem,
    bn_config=bn_config,
    normalization=spec.normalization,
    projection_everywhere=spec.resnet_layout == "original",
    remat=remat,
    name=encoder_module_name(spec),
  )
  if spec.name == "tiny":
    return ResNetEncoder(spec.tiny_blocks, spec.tiny_channels, bottleneck=False, **common)
  if spec.name not in RESNET_DEPTHS:
    raise ValueError(
      f"Unknown encoder {spec.name!r}; expected 'tiny' or one of {list(RESNET_DEPTHS)}."
    )
  blocks, bottleneck = RESNET_DEPTHS[spec.name]
  channels = _BOTTLENECK_CHANNELS if bottleneck else _BASIC_CHANNELS
  return ResNetEncoder(blocks, channels, bottleneck=bottleneck, **common)


class MLP(hk.Module):
  """``num_layers - 1`` times Linear(hidden, bias) -> norm -> ReLU, then Linear(output, no bias)
  and an optional BatchNorm of the output: the projector and the predictor.

  The default (2 layers, a norm on the hidden layer only) is BYOL's head. The norm is BatchNorm,
  or a GroupNorm (``group_norm``) with :func:`group_count` groups of the hidden features when
  ``normalization="group_ws"``; ``hidden_norm=False`` leaves it out. ``output_norm`` adds
  SimSiam's BatchNorm of the output, without scale and offset (its projector's last layer).
  """

  def __init__(
    self,
    hidden_size: int,
    output_size: int,
    bn_config: Mapping[str, Any],
    name: str,
    normalization: str = "batch",
    num_layers: int = 2,
    hidden_norm: bool = True,
    output_norm: bool = False,
  ):
    super().__init__(name=name)
    self._hidden_size = hidden_size
    self._output_size = output_size
    self._bn_config = bn_config
    self._normalization = normalization
    self._num_layers = num_layers
    self._hidden_norm = hidden_norm
    self._output_norm = output_norm

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    out = inputs
    for _ in range(self._num_layers - 1):
      out = hk.Linear(self._hidden_size, with_bias=True)(out)
      if self._hidden_norm:
        out = _head_norm(out, self._normalization, self._bn_config, is_training)
      out = jax.nn.relu(out)
    out = hk.Linear(self._output_size, with_bias=False)(out)
    if self._output_norm:
      out = _head_norm(out, self._normalization, self._bn_config, is_training, affine=False)
    return out


def _head_norm(x, normalization, bn_config, is_training, affine=True):
  # A function, not a method of MLP: Haiku names the modules of each method call afresh, so two
  # calls of one method would share one "batch_norm".
  if normalization == "group_ws":
    return hk.GroupNorm(group_count(x.shape[-1]), eps=bn_config["eps"])(x)
  return hk.BatchNorm(create_scale=affine, create_offset=affine, **bn_config)(
    x, is_training=is_training
  )


def head_norms(placement: str) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
  """((hidden, output) normalisation of the projector, the same of the predictor) for a
  placement of ``config_base.HEAD_BATCHNORMS``."""
  if placement not in config_base.HEAD_BATCHNORMS:
    raise ValueError(
      f"Unknown head_batchnorm {placement!r}; expected one of {config_base.HEAD_BATCHNORMS}."
    )
  hidden = placement != "none"
  projector = (hidden, placement in ("hidden+projector_output", "all"))
  return projector, (hidden, placement == "all")


def make_byol_network(
  encoder: EncoderSpec,
  heads: HeadSpec,
  *,
  bn_decay: float = 0.9,
  bn_eps: float = 1e-5,
  axis_name: str | None = None,
  num_classes: int = 0,
  remat: bool = False,
) -> hk.TransformedWithState:
  """Returns the transformed BYOL network.

  ``apply(params, state, None, images, is_training, with_predictor)`` returns a dict with the
  ``embedding`` (encoder output), the ``projection`` and, when ``with_predictor``, the
  ``prediction``. The online network calls it with the predictor; the target network without,
  so target parameters hold no predictor. ``axis_name`` names the device axis over which
  BatchNorm statistics are averaged (None on a single device or outside ``pmap``).
  ``num_classes > 0`` adds the online linear probe: ``logits`` of a linear classifier on the
  stop-gradient embedding (online network only), which cannot change the representation.
  ``encoder.normalization`` applies to the heads too; ``remat`` recomputes each residual block's
  activations in the backward pass (the same parameters and outputs, less memory).
  """
  bn_config = dict(decay_rate=bn_decay, eps=bn_eps, cross_replica_axis=axis_name)
  norm = encoder.normalization
  (proj_hidden_norm, proj_output_norm), (pred_hidden_norm, pred_output_norm) = head_norms(
    heads.head_batchnorm
  )

  def forward(images: jax.Array, is_training: bool, with_predictor: bool = True):
    embedding = make_encoder(encoder, bn_config, remat)(images, is_training=is_training)
    projector = MLP(
      heads.projector_hidden,
      heads.projector_output,
      bn_config,
      "projector",
      norm,
      num_layers=heads.projector_layers,
      hidden_norm=proj_hidden_norm,
      output_norm=proj_output_norm,
    )
    projection = projector(embedding, is_training)
    out = dict(embedding=embedding, projection=projection)
    if with_predictor:
      predictor = MLP(
        heads.predictor_hidden,
        heads.projector_output,
        bn_config,
        "predictor",
        norm,
        num_layers=heads.predictor_layers,
        hidden_norm=pred_hidden_norm,
        output_norm=pred_output_norm,
      )
      out["prediction"] = predictor(projection, is_training) if heads.predictor else projection
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
  remat: bool = False,
) -> hk.TransformedWithState:
  """The encoder alone, with the same parameter names as inside :func:`make_byol_network`.

  ``apply(params, state, images, is_training)`` returns the representation ``[N, D]``;
  ``axis_name`` and ``remat`` as in :func:`make_byol_network` (for fine-tuning under ``pmap``).
  """
  bn_config = dict(decay_rate=bn_decay, eps=bn_eps, cross_replica_axis=axis_name)

  def forward(images: jax.Array, is_training: bool):
    return make_encoder(encoder, bn_config, remat)(images, is_training=is_training)

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
