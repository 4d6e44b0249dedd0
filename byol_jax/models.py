"""BYOL's networks as pure-functional Haiku modules: ResNet v1 encoders, projector and predictor.

Module and parameter names follow the original BYOL code (``res_net50/~/initial_conv``,
``block_group_0/~/block_0/~/conv_0``, ``projector/linear``...), so its released checkpoints map onto
these networks by name. The models know nothing of data or devices: the only link to the device
layout is the optional name of the axis over which BatchNorm averages its statistics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
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
      # A module rather than hk.max_pool, so that byol_jax.cpu_ops can lower it on XLA:CPU.
      out = hk.MaxPool(window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")(out)
    for group in self._groups:
      out = group(out, is_training, False)
    return jnp.mean(out, axis=(1, 2))


def encoder_module_name(spec: EncoderSpec) -> str:
  """The encoder's top-level module name: "res_net50" etc., as in the original checkpoints."""
  return "res_net_tiny" if spec.name == "tiny" else "res_net" + spec.name.removeprefix("resnet")


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
      name=encoder_module_name(spec),
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
    name=encoder_module_name(spec),
  )


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
) -> hk.TransformedWithState:
  """Returns the transformed BYOL network.

  ``apply(params, state, None, images, is_training, with_predictor)`` returns a dict with the
  ``embedding`` (encoder output), the ``projection`` and, when ``with_predictor``, the
  ``prediction``. The online network calls it with the predictor; the target network without,
  so target parameters hold no predictor. ``axis_name`` names the device axis over which
  BatchNorm statistics are averaged (None on a single device or outside ``pmap``).
  ``num_classes > 0`` adds the online linear probe: ``logits`` of a linear classifier on the
  stop-gradient embedding (online network only), which cannot change the representation.
  """
  bn_config = dict(decay_rate=bn_decay, eps=bn_eps, cross_replica_axis=axis_name)

  def forward(images: jax.Array, is_training: bool, with_predictor: bool = True):
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
) -> hk.TransformedWithState:
  """The encoder alone, with the same parameter names as inside :func:`make_byol_network`.

  ``apply(params, state, images, is_training)`` returns the representation ``[N, D]``;
  ``axis_name`` as in :func:`make_byol_network` (for fine-tuning under ``pmap``).
  """
  bn_config = dict(decay_rate=bn_decay, eps=bn_eps, cross_replica_axis=axis_name)

  def forward(images: jax.Array, is_training: bool):
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
