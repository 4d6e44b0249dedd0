"""Trained encoders read back from checkpoints, and the ``load_encoder`` API.

A byol_jax checkpoint carries the config it was trained with, so the encoder's architecture and
its evaluation preprocessing (short side resized to ``data.eval_resize``, centre crop of
``data.image_size``, ImageNet normalisation) are known without the config file::

  encoder = byol_jax.load_encoder("runs/cifar10")  # a workdir or one checkpoint step folder
  features = encoder(images)  # numpy uint8 [N, H, W, 3] (or float in [0, 1]) -> [N, D]

Only the online network's encoder is read: the representation the paper evaluates.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from byol_jax import checkpointing, config_base, config_diff, console, cpu_ops, models
from byol_jax.data import device_augment, device_crop
from byol_jax.errors import UserError


@dataclasses.dataclass
class EncoderWeights:
  """An encoder's architecture, parameters and BatchNorm state (empty for GroupNorm), with the
  run's saved config."""

  spec: models.EncoderSpec
  params: hk.Params
  state: hk.State
  config: ml_collections.ConfigDict
  step: int
  source: str  # where it was read from, for messages

  @property
  def bn_decay(self) -> float:
    return float(self.config.model.bn_decay)

  @property
  def bn_eps(self) -> float:
    return float(self.config.model.bn_eps)


def spec_from_config(model: Mapping[str, Any]) -> models.EncoderSpec:
  """The encoder spec of a config's ``model`` section (a dict or ConfigDict)."""
  # Only the tiny encoder's stages are configurable; the ResNets' come with their names.
  tiny = model["encoder"] == "tiny"

  def stages(field: str, default: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(n) for n in model.get(field, default)) if tiny else default

  return models.EncoderSpec(
    name=model["encoder"],
    width_multiplier=int(model["width_multiplier"]),
    small_image_stem=bool(model["small_image_stem"]),
    tiny_blocks=stages("tiny_blocks", config_base.TINY_BLOCKS),
    tiny_channels=stages("tiny_channels", config_base.TINY_CHANNELS),
    # Configs saved before these fields existed are BatchNorm, torchvision-layout runs.
    normalization=str(model.get("normalization", "batch")),
    resnet_layout=str(model.get("resnet_layout", "torchvision")),
  )


def encoder_part(tree: Mapping[str, Any], spec: models.EncoderSpec) -> dict[str, Any]:
  """The encoder's modules of a full parameter (or state) dict of the BYOL network."""
  name = models.encoder_module_name(spec)
  return {k: v for k, v in tree.items() if k == name or k.startswith(name + "/")}


def _describe(spec: models.EncoderSpec) -> str:
  stem = ", small-image stem" if spec.small_image_stem else ""
  blocks = f", blocks {spec.tiny_blocks}" if spec.tiny_blocks != config_base.TINY_BLOCKS else ""
  channels = (
    f", channels {spec.tiny_channels}" if spec.tiny_channels != config_base.TINY_CHANNELS else ""
  )
  norm = ", GroupNorm + weight standardisation" if spec.normalization == "group_ws" else ""
  layout = ", original layout" if spec.resnet_layout == "original" else ""
  return f"{spec.name} x{spec.width_multiplier}{stem}{blocks}{channels}{norm}{layout}"


def check_architecture(spec: models.EncoderSpec, model: Mapping[str, Any], where: str) -> None:
  """Raises UserError when a config's ``model`` section names another encoder than ``spec``.

  ``model.encoder == "checkpoint"`` (evaluation configs) accepts any encoder.
  """
  if model["encoder"] == config_base.FROM_CHECKPOINT:
    return
  wanted = spec_from_config(model)
  if wanted != spec:
    raise UserError(
      f"The checkpoint {where} holds a {_describe(spec)} encoder but the config asks for "
      f"{_describe(wanted)}: pass the matching checkpoint, or --config.model.encoder=checkpoint "
      "to take the architecture from the checkpoint."
    )


def expected_shapes(spec: models.EncoderSpec, image_size: int = 32) -> tuple[Any, Any]:
  """Shapes of the encoder's parameters and state, without computing anything."""
  net = models.make_encoder_network(spec)
  return jax.eval_shape(
    lambda k, x: net.init(k, x, is_training=True),
    jax.random.PRNGKey(0),
    jnp.zeros((1, image_size, image_size, 3)),
  )


def feature_dim(spec: models.EncoderSpec) -> int:
  """Size of the encoder's representation, traced from its shapes without computing anything."""
  net = models.make_encoder_network(spec)

  def features(key: jax.Array, images: jax.Array) -> jax.Array:
    params, state = net.init(key, images, is_training=True)
    return net.apply(params, state, images, is_training=False)[0]

  return int(jax.eval_shape(features, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))).shape[-1])


def check_fits(spec: models.EncoderSpec, params: hk.Params, state: hk.State, where: str) -> None:
  """Raises UserError unless params/state have exactly the module names and shapes of ``spec``."""
  want_params, want_state = expected_shapes(spec)
  for kind, want, got in (("parameters", want_params, params), ("state", want_state, state)):
    want_flat = {(m, n): tuple(v.shape) for m, d in want.items() for n, v in d.items()}
    got_flat = {(m, n): tuple(np.shape(v)) for m, d in got.items() for n, v in d.items()}
    missing = sorted(set(want_flat) - set(got_flat))
    extra = sorted(set(got_flat) - set(want_flat))
    wrong = sorted(k for k in set(want_flat) & set(got_flat) if want_flat[k] != got_flat[k])
    problem = (
      f"missing {'/'.join(missing[0])}"
      if missing
      else f"unexpected {'/'.join(extra[0])}"
      if extra
      else f"{'/'.join(wrong[0])} has shape {got_flat[wrong[0]]}, expected {want_flat[wrong[0]]}"
      if wrong
      else ""
    )
    if problem:
      raise UserError(
        f"The encoder {kind} in {where} do not fit a {_describe(spec)} encoder ({problem}): "
        "the checkpoint and its saved config disagree; pass an intact checkpoint."
      )


def _restore_arrays(directory: str, step: int, keys: tuple[str, ...]) -> dict[str, Any]:
  """Reads only the top-level ``keys`` of a checkpoint's state, as host numpy arrays."""
  import orbax.checkpoint as ocp

  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    with console.without_missing_metadata_warning():
      metadata = checkpointer.metadata(path)
      tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
      wanted = {k: tree[k] for k in keys}
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
      restored = checkpointer.restore(
        path,
        args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True),
      )
  except (KeyError, ValueError, FileNotFoundError, OSError) as e:
    raise UserError(
      f"Cannot read the checkpoint {path} ({str(e).splitlines()[0][:160]}): "
      "pass an intact checkpoint or another step folder."
    ) from e
  return {k: jax.tree.map(np.asarray, restored[k]) for k in keys}


def restore_encoder(path: str) -> EncoderWeights:
  """Reads the online encoder of the checkpoint at ``path`` (workdir, checkpoints dir, or step).

  Raises UserError when ``path`` holds no checkpoint or the arrays do not fit the saved config.
  """
  directory, step = checkpointing.resolve_checkpoint_dir(path)
  checkpointer = checkpointing.Checkpointer(directory)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise UserError(
        f"No checkpoint in {directory}: pass a training workdir or a checkpoint step folder."
      )
    saved = checkpointer.restore_config(step)
  finally:
    checkpointer.close()
  config = config_base.get_base_config()
  config.unlock()
  config.update_from_flattened_dict(_flatten(saved, config))
  spec = spec_from_config(config.model)
  where = os.path.join(directory, str(step))
  arrays = _restore_arrays(directory, step, ("online_params", "online_state"))
  params = encoder_part(arrays["online_params"], spec)
  state = encoder_part(arrays["online_state"], spec)
  check_fits(spec, params, state, where)
  return EncoderWeights(spec, params, state, config, int(step), where)


def _flatten(saved: Mapping[str, Any], base: ml_collections.ConfigDict) -> dict[str, Any]:
  """Flattens a saved config to dotted keys the base config knows (newer or older fields drop)."""
  known = set(config_diff.flat_dict(base.to_dict()))
  return {
    k: (tuple(v) if isinstance(v, list) else v)
    for k, v in config_diff.flat_dict(saved).items()
    if k in known
  }


def encoder_network(
  spec: models.EncoderSpec,
  *,
  bn_decay: float = 0.9,
  bn_eps: float = 1e-5,
  axis_name: str | None = None,
  conv_impl: str = "auto",
  remat: bool = False,
) -> hk.TransformedWithState:
  """:func:`byol_jax.models.make_encoder_network`, computing as ``conv_impl`` says.

  ``conv_impl`` as ``config.model.conv_impl`` ("auto": the fastest on the default backend),
  ``remat`` as ``config.model.remat``.
  """
  network = models.make_encoder_network(
    spec, bn_decay=bn_decay, bn_eps=bn_eps, axis_name=axis_name, remat=remat
  )
  return cpu_ops.lowered(network, cpu_ops.resolve_conv_impl(conv_impl, jax.default_backend()))


def encode_fn(
  spec: models.EncoderSpec,
  *,
  bn_decay: float = 0.9,
  bn_eps: float = 1e-5,
  conv_impl: str = "auto",
) -> Callable[[hk.Params, hk.State, jax.Array], jax.Array]:
  """``f(params, state, images) -> features``: images in [0, 1] (or uint8), inference-mode BN
  (GroupNorm computes the same in training and inference).

  Pure and unmapped: ``jax.jit`` or ``jax.pmap`` it. Applies the model's normalisation.
  ``conv_impl`` as in :func:`encoder_network`.
  """
  net = encoder_network(spec, bn_decay=bn_decay, bn_eps=bn_eps, conv_impl=conv_impl)

  def encode(params: hk.Params, state: hk.State, images: jax.Array) -> jax.Array:
    images = device_augment.normalize(device_augment.to_float(images))
    features, _ = net.apply(params, state, images, is_training=False)
    return features

  return encode


def eval_preprocess(images: np.ndarray, image_size: int, resize_size: int) -> np.ndarray:
  """The evaluation view of each image (as ``pipeline.eval_batches``): float32 [N, S, S, 3]."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise UserError(
      f"Images must be an array [N, H, W, 3], got shape {images.shape}: add a batch axis "
      "or convert grayscale/RGBA images to RGB."
    )
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise UserError(f"Images must be uint8 (0-255) or float in [0, 1], got {images.dtype}.")
    images = images.astype(np.float32)
  if len(images) == 0:
    return np.zeros((0, image_size, image_size, 3), np.float32)
  return np.asarray(device_crop.centre_view(images, image_size, resize_size))


class Encoder:
  """A frozen encoder (inference-mode BatchNorm): ``encoder(images) -> features`` as numpy.

  Attributes:
    spec: the architecture. dim: feature size. image_size / resize_size: the evaluation view
    (short side resized to ``resize_size``, centre crop ``image_size``). step: the checkpoint step.
  """

  def __init__(
    self,
    weights: EncoderWeights,
    image_size: int | None = None,
    resize_size: int | None = None,
    batch_size: int = 256,
  ):
    self.weights = weights
    self.spec = weights.spec
    self.step = weights.step
    self.image_size = int(image_size or config_base.eval_image_size(weights.config.data))
    self.resize_size = int(resize_size or weights.config.data.eval_resize)
    self.batch_size = batch_size
    self._params = jax.device_put(weights.params)
    self._state = jax.device_put(weights.state)
    self._encode = jax.jit(encode_fn(self.spec, bn_decay=weights.bn_decay, bn_eps=weights.bn_eps))
    self.dim = feature_dim(self.spec)

  def embed_views(self, views: np.ndarray) -> np.ndarray:
    """Features of already preprocessed views (float [N, S, S, 3] in [0, 1]), in batches."""
    views = np.asarray(views, np.float32)
    n = len(views)
    if n == 0:
      return np.zeros((0, self.dim), np.float32)
    size = min(self.batch_size, n)  # one compiled shape: the last batch is padded
    out = []
    for start in range(0, n, size):
      chunk = views[start : start + size]
      if len(chunk) < size:
        chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
      out.append(np.asarray(self._encode(self._params, self._state, chunk)))
    return np.concatenate(out)[:n]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Features [N, D] of uint8 [N, H, W, 3] images, or float ones in [0, 1]."""
    out = []
    images = np.asarray(images)
    # Preprocess in slices so that a large N never holds all resized copies at once.
    step = max(self.batch_size, 1) * 16
    for start in range(0, max(len(images), 1), step):
      views = eval_preprocess(images[start : start + step], self.image_size, self.resize_size)
      out.append(self.embed_views(views))
    return np.concatenate(out)


def load_encoder(path: str, batch_size: int = 256) -> Encoder:
  """The frozen online encoder of a training workdir or checkpoint step folder.

  ``load_encoder(path)(images)`` returns features [N, D] of uint8 [N, H, W, 3] images (or float
  in [0, 1]) after the training run's evaluation preprocessing. Raises UserError for a path that
  holds no byol_jax checkpoint.
  """
  return Encoder(restore_encoder(path), batch_size=batch_size)
