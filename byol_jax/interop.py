"""Checkpoints in and out: the original BYOL release, and PyTorch (torchvision ResNet layout).

Import. The original code released ``pretrain_res50x1.pkl`` and friends: a (dill) pickle of
``dict(experiment_state=<named tuple (online_params, target_params, online_state, target_state,
opt_state)>, step, rng)`` with Haiku parameter trees of numpy arrays. Its module names are those of
``byol_jax.models`` (``res_net50/~/block_group_0/~/block_0/~/conv_0``, BN state ``.../~/mean_ema``
with ``average``/``hidden``/``counter``), so the mapping is by name, checked against the expected
shapes (the original code's ResNet-18/34, with a projection shortcut in every stage's first
block, read as ``model.resnet_layout="original"``). :func:`import_original` writes the weights as
a byol_jax checkpoint (with a config naming the architecture), which ``load_encoder``, linear
evaluation and fine-tuning then read. It refuses a workdir whose ``checkpoints`` folder holds
anything, so that no user checkpoint is ever replaced or rotated out. The pickle loads without dill or the original code: dill's helpers are
re-implemented here, and classes that cannot be imported become plain tuples or dicts.

Export. :func:`torch_state_dict` maps a standard-stem ResNet-18/34/50/101/152 (width 1) onto
torchvision's ``resnet*`` keys (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
...), without ``fc``: load it into ``torchvision.models.resnet50()`` after ``model.fc =
torch.nn.Identity()`` to get the 2048-d representation (a small-image-stem encoder also needs
``model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)`` and ``model.maxpool =
torch.nn.Identity()``). A GroupNorm + weight standardisation encoder (``model.normalization=
"group_ws"``) exports its standardised kernels for plain ``Conv2d`` layers and its GroupNorms
under the same keys: build the model with ``torchvision.models.resnet50(norm_layer=
torch_group_norm(eps))``. Only the torchvision layout exports; an encoder of the original code's
ResNet-18/34 layout (``model.resnet_layout="original"``) is refused.

On even input sizes Haiku's 'SAME' padding of stride-2 layers pads (top/left, bottom/right) =
(2, 3) for the 7x7 stem and (0, 1) for 3x3 convolutions and the max-pool, where torchvision pads
(3, 3) and (1, 1); weights cannot absorb that one-pixel shift (ignoring it cost users of the
original checkpoints about 4 points).
:func:`use_same_padding` therefore patches a torchvision-layout model in place: every stride-2
convolution and the stem max-pool compute TensorFlow's 'SAME' padding from the input size and
pad explicitly in a forward pre-hook. The state dict's keys and shapes are unchanged, so it works
before or after loading.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from byol_jax import checkpointing, config_base, models
from byol_jax import encoder as encoder_lib
from byol_jax.errors import UserError
from byol_jax.padding import same_padding

# Field order of the original code's experiment state named tuple.
ORIGINAL_STATE_FIELDS = (
  "online_params",
  "target_params",
  "online_state",
  "target_state",
  "opt_state",
)


# --------------------------------------------------------------------------------------------
# Reading the original pickles.


class _Unresolved(tuple):
  """Stands in for a class the pickle names but this process cannot import."""

  _qualname = "?"

  def __new__(cls, *args, **kwargs):
    return tuple.__new__(cls, args)

  def __setstate__(self, state):
    self.__dict__["_state"] = state


def _unresolved_class(module: str, name: str) -> type:
  return type(name, (_Unresolved,), {"_qualname": f"{module}.{name}"})


def _create_namedtuple(name, fieldnames, modulename=None, defaults=None):
  # dill pickles namedtuple classes by value through this function.
  return collections.namedtuple(name, fieldnames, defaults=defaults)


def _create_array(reconstruct, args, state, npdict=None):
  # dill pickles numpy arrays through this function: numpy's own reduction, wrapped.
  array = reconstruct(*args)
  array.__setstate__(state)
  if npdict:  # attributes of an ndarray subclass
    array.__dict__.update(npdict)
  return array


class _LenientUnpickler(pickle.Unpickler):
  """An Unpickler that maps classes it cannot import (old Haiku, the original code, dill) to
  stand-ins holding their constructor arguments and state."""

  def find_class(self, module: str, name: str) -> Any:
    # dill's helpers are served from here, so that the pickle loads without dill installed.
    if module.startswith("dill") and name in _DILL_HELPERS:
      return _DILL_HELPERS[name]
    try:
      return super().find_class(module, name)
    except (ImportError, AttributeError):
      return _unresolved_class(module, name)


def _load_type(name: str) -> type:
  import builtins
  import types

  return getattr(builtins, name, None) or getattr(types, name, None) or object


_DILL_HELPERS = {
  "_create_namedtuple": _create_namedtuple,
  "_create_array": _create_array,
  "_load_type": _load_type,
  "_get_attr": getattr,
}


def _plain(obj: Any) -> Any:
  """Converts stand-ins, named tuples and mappings to dicts/tuples of numpy arrays."""
  if isinstance(obj, _Unresolved):
    state = obj.__dict__.get("_state")
    if len(obj) == 1 and isinstance(obj[0], Mapping):  # Haiku's old FlatMapping(dict)
      return _plain(obj[0])
    if isinstance(state, Mapping) and not len(obj):
      return _plain(state)
    return tuple(_plain(x) for x in obj)
  if hasattr(obj, "_asdict") and isinstance(obj, tuple):
    return {k: _plain(v) for k, v in obj._asdict().items()}
  if isinstance(obj, Mapping):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return type(obj)(_plain(x) for x in obj)
  if hasattr(obj, "__array__") and not isinstance(obj, np.ndarray):
    return np.asarray(obj)
  return obj


def load_original_pickle(path: str) -> dict[str, Any]:
  """Reads an original BYOL checkpoint: {"online_params", ..., "opt_state", "step", "rng"}."""
  if not os.path.isfile(path):
    raise UserError(
      f"{path} is not a file: pass the original checkpoint, e.g. pretrain_res50x1.pkl."
    )
  try:
    with open(path, "rb") as f:
      raw = _LenientUnpickler(io.BufferedReader(f)).load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise UserError(
      f"{path} is not a readable checkpoint pickle ({str(e).splitlines()[0][:120]}): "
      "pass an original BYOL .pkl file."
    ) from e
  raw = _plain(raw)
  if not isinstance(raw, Mapping) or "experiment_state" not in raw:
    raise UserError(
      f"{path} holds no 'experiment_state': pass a checkpoint of the original BYOL code."
    )
  state = raw["experiment_state"]
  if isinstance(state, tuple):  # a class that could not be imported: fields are positional
    state = dict(zip(ORIGINAL_STATE_FIELDS, state))
  out = dict(state)
  out["step"] = int(np.asarray(raw.get("step", 0)))
  out["rng"] = raw.get("rng")
  return out


def infer_spec(params: Mapping[str, Any]) -> models.EncoderSpec:
  """The encoder spec of an original (or byol_jax) parameter dict, from module names and shapes."""
  roots = {k.split("/")[0] for k in params if k.startswith("res_net")}
  if len(roots) != 1:
    raise UserError(
      f"Expected the parameters of one ResNet (res_net50/...), found {sorted(roots) or 'none'}: "
      "pass a BYOL ResNet checkpoint."
    )
  root = roots.pop()
  depth = root.removeprefix("res_net").lstrip("_")
  name = "tiny" if depth == "tiny" else f"resnet{depth}"
  if name not in config_base.ARCHITECTURES:
    raise UserError(f"Unsupported encoder {root}: byol_jax knows {config_base.ARCHITECTURES}.")
  kernel = np.shape(params[f"{root}/~/initial_conv"]["w"])
  stem = kernel[3]
  small_image_stem = kernel[0] == 3
  norm = "group_ws" if f"{root}/~/initial_group_norm" in params else "batch"
  layout = _layout(params, root, stem)
  if name != "tiny":
    return models.EncoderSpec(
      name, max(1, stem // 64), small_image_stem, normalization=norm, resnet_layout=layout
    )
  blocks = [0] * 4
  widths = [0] * 4  # output channels of each stage present
  for key in params:
    match = re.match(rf"{root}/~/block_group_(\d)/~/block_(\d+)/~/conv_0$", key)
    if match:
      group, block = int(match.group(1)), int(match.group(2))
      blocks[group] = max(blocks[group], block + 1)
      widths[group] = int(np.shape(params[key]["w"])[3])
  # The stem has min(64, channels[0]) x multiplier channels: read the multiplier off it where
  # every stage divides by it, else take the widths as they are.
  multiplier = stem // 8 if stem % 8 == 0 else 1
  if any(w % multiplier for w in widths):
    multiplier = 1
  channels = [w // multiplier for w in widths]
  for i, width in enumerate(channels):
    if not width:  # a stage left out: only the first's width shows, in the stem
      channels[i] = stem // multiplier if i == 0 else config_base.TINY_CHANNELS[i]
  return models.EncoderSpec(
    name,
    multiplier,
    small_image_stem,
    tiny_blocks=tuple(blocks),
    tiny_channels=tuple(channels),
    normalization=norm,
    resnet_layout=layout,
  )


def _layout(params: Mapping[str, Any], root: str, stem: int) -> str:
  """ "original" where the first stage's first block has a projection shortcut that keeps the
  stem's width (only the original code's ResNet-18/34 layout has one there), else
  "torchvision"."""
  shortcut = params.get(f"{root}/~/block_group_0/~/block_0/~/shortcut_conv")
  keeps_width = shortcut is not None and np.shape(shortcut["w"])[3] == stem
  return "original" if keeps_width else "torchvision"


def _head_sizes(params: Mapping[str, Any]) -> dict[str, int]:
  sizes = {}
  if "projector/linear" in params and "projector/linear_1" in params:
    sizes["projector_hidden"] = int(np.shape(params["projector/linear"]["w"])[1])
    sizes["projector_output"] = int(np.shape(params["projector/linear_1"]["w"])[1])
  if "predictor/linear" in params:
    sizes["predictor_hidden"] = int(np.shape(params["predictor/linear"]["w"])[1])
  return sizes


def _require_empty(directory: str) -> None:
  """Raises UserError unless ``directory`` is missing or an empty folder.

  The import only ever writes into a folder of its own: next to a run's checkpoints it would
  become their latest step, and the checkpointer's rotation would delete the oldest of them.
  """
  if not os.path.lexists(directory):
    return
  if not os.path.isdir(directory):
    raise UserError(f"{directory} is not a folder: pass an empty or new --workdir to import into.")
  entries = sorted(os.listdir(directory))
  if entries:
    shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise UserError(
      f"{directory} already holds {shown}: the import writes only into an empty checkpoints "
      "folder, so pass an empty or new --workdir."
    )


def import_original(
  pkl_path: str, workdir: str, *, image_size: int = 224, eval_resize: int = 256
) -> str:
  """Converts an original BYOL checkpoint into a byol_jax checkpoint in ``workdir``.

  Returns the checkpoint folder. The saved config names the architecture and the ImageNet
  evaluation resolution (``image_size`` from ``eval_resize``). Raises UserError when
  ``<workdir>/checkpoints`` already holds anything.
  """
  directory = os.path.abspath(os.path.join(workdir, checkpointing.CHECKPOINT_SUBDIR))
  _require_empty(directory)
  original = load_original_pickle(pkl_path)
  online_params = {k: dict(v) for k, v in original["online_params"].items()}
  online_state = {k: dict(v) for k, v in original.get("online_state", {}).items()}
  spec = infer_spec(online_params)
  encoder_lib.check_fits(
    spec,
    encoder_lib.encoder_part(online_params, spec),
    encoder_lib.encoder_part(online_state, spec),
    pkl_path,
  )
  config = config_base.get_base_config()
  config.data.source = "tfds"
  config.data.name = "imagenet2012"
  config.data.eval_split = "validation"
  config.data.image_size = image_size
  config.data.eval_resize = eval_resize
  config.model.encoder = spec.name
  config.model.width_multiplier = spec.width_multiplier
  config.model.small_image_stem = spec.small_image_stem
  config.model.tiny_blocks = spec.tiny_blocks
  config.model.tiny_channels = spec.tiny_channels
  config.model.normalization = spec.normalization
  config.model.resnet_layout = spec.resnet_layout
  for key, value in _head_sizes(online_params).items():
    config.model[key] = value
  state = dict(
    step=np.asarray(original["step"], np.int32),
    online_params=online_params,
    online_state=online_state,
    target_params=original.get("target_params") or {},
    target_state=original.get("target_state") or {},
  )
  state = {k: v for k, v in state.items() if not (isinstance(v, dict) and not v)}
  checkpointer = checkpointing.Checkpointer(directory)
  try:
    checkpointer.save(int(original["step"]), state, config.to_dict())
    checkpointer.wait()
  finally:
    checkpointer.close()
  print(
    f"Imported {spec.name} x{spec.width_multiplier} (step {original['step']}) from {pkl_path} "
    f"into {directory}.",
    flush=True,
  )
  return directory


# --------------------------------------------------------------------------------------------
# PyTorch export.

_TORCH_DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def torch_state_dict(
  params: Mapping[str, Any], state: Mapping[str, Any], spec: models.EncoderSpec
) -> dict[str, np.ndarray]:
  """torchvision ``resnet*`` state dict (numpy arrays, no ``fc``) of a byol_jax encoder.

  Convolutions go from HWIO to OIHW; BatchNorm scale/offset/moving mean/var to weight/bias/
  running_mean/running_var, with ``num_batches_tracked`` from the moving-average counter. A
  GroupNorm + WS encoder exports its kernels standardised (torch has no WS convolution, and the
  standardised kernel is what the convolution computes with) and its GroupNorm scale/offset as
  weight/bias, for a torchvision ResNet built with ``norm_layer=torch_group_norm(eps)``. Only
  the torchvision layout exports (the original layout's extra shortcut has no torchvision key).
  """
  if spec.name not in _TORCH_DEPTHS or spec.width_multiplier != 1:
    raise UserError(
      f"torchvision has no {spec.name} x{spec.width_multiplier}: export supports width-1 "
      f"{', '.join(_TORCH_DEPTHS)}."
    )
  if spec.resnet_layout != "torchvision":
    raise UserError(
      f"This {spec.name} has the original code's layout (a projection shortcut in the first "
      "block of every stage), which torchvision's resnet has no keys for: export supports "
      "model.resnet_layout='torchvision' encoders."
    )
  root = models.encoder_module_name(spec)
  blocks, bottleneck = models.RESNET_DEPTHS[spec.name]
  group_ws = spec.normalization == "group_ws"
  out: dict[str, np.ndarray] = {}

  def conv(src: str, dst: str) -> None:
    w = np.asarray(params[f"{root}/~/{src}"]["w"])
    if group_ws:
      w = np.asarray(models.standardize_kernel(w))  # as the convolution computes it
    out[f"{dst}.weight"] = np.ascontiguousarray(w.transpose(3, 2, 0, 1))

  def bn(src: str, dst: str) -> None:
    p, s = params[f"{root}/~/{src}"], state[f"{root}/~/{src}/~/mean_ema"]
    v = state[f"{root}/~/{src}/~/var_ema"]
    out[f"{dst}.weight"] = np.asarray(p["scale"]).reshape(-1)
    out[f"{dst}.bias"] = np.asarray(p["offset"]).reshape(-1)
    out[f"{dst}.running_mean"] = np.asarray(s["average"]).reshape(-1)
    out[f"{dst}.running_var"] = np.asarray(v["average"]).reshape(-1)
    out[f"{dst}.num_batches_tracked"] = np.asarray(s["counter"], np.int64).reshape(())

  def gn(src: str, dst: str) -> None:
    p = params[f"{root}/~/{src}"]
    out[f"{dst}.weight"] = np.asarray(p["scale"]).reshape(-1)
    out[f"{dst}.bias"] = np.asarray(p["offset"]).reshape(-1)

  def norm(src: str, dst: str) -> None:
    if group_ws:
      gn(src.replace("batchnorm", "group_norm"), dst)
    else:
      bn(src, dst)

  conv("initial_conv", "conv1")
  norm("initial_batchnorm", "bn1")
  convs = 3 if bottleneck else 2
  for g, n in enumerate(blocks):
    for b in range(n):
      src = f"block_group_{g}/~/block_{b}/~/"
      dst = f"layer{g + 1}.{b}."
      for i in range(convs):
        conv(src + f"conv_{i}", dst + f"conv{i + 1}")
        norm(src + f"batchnorm_{i}", dst + f"bn{i + 1}")
      if f"{root}/~/{src}shortcut_conv" in params:
        conv(src + "shortcut_conv", dst + "downsample.0")
        norm(src + "shortcut_batchnorm", dst + "downsample.1")
  return out


def torch_group_norm(eps: float = 1e-5) -> Any:
  """``norm_layer`` for torchvision's ResNets that matches a GroupNorm + WS encoder's GroupNorm:
  ``channels -> torch.nn.GroupNorm(models.group_count(channels), channels, eps)``."""
  import torch

  def make(channels: int) -> Any:
    return torch.nn.GroupNorm(models.group_count(channels), channels, eps=eps)

  return make


def use_same_padding(model: Any) -> Any:
  """Makes a torchvision-layout ResNet pad like Haiku ('SAME'); returns the model.

  Every convolution with stride > 1 and kernel > 1, and every max-pool, gets padding 0 and a
  forward pre-hook that pads its input with TensorFlow's 'SAME' amounts for the input's size
  (zeros for convolutions, -inf for max-pools). Stride-1 convolutions with odd kernels already
  agree. Parameter names and shapes are untouched.
  """
  import torch
  import torch.nn.functional as F

  def pad_hook(kernel: int, stride: int, value: float):
    def hook(module, inputs):
      (x,) = inputs
      top, bottom = same_padding(x.shape[-2], kernel, stride)
      left, right = same_padding(x.shape[-1], kernel, stride)
      return (F.pad(x, (left, right, top, bottom), value=value),)

    return hook

  for module in model.modules():
    if isinstance(module, torch.nn.Conv2d):
      k, s = module.kernel_size[0], module.stride[0]
      if s > 1 and k > 1:
        module.padding = (0, 0)
        module.register_forward_pre_hook(pad_hook(k, s, 0.0))
    elif isinstance(module, torch.nn.MaxPool2d):
      k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
      s = module.stride if isinstance(module.stride, int) else module.stride[0]
      module.padding = 0
      module.register_forward_pre_hook(pad_hook(k, s, float("-inf")))
  return model


def export_torch(checkpoint: str, output: str) -> str:
  """Writes the encoder of a byol_jax checkpoint as a torchvision state dict (``torch.save``)."""
  try:
    import torch
  except ImportError:
    raise UserError(
      "Exporting to PyTorch needs torch: pip install 'byol_jax[torch]' (or pip install torch)."
    ) from None
  weights = encoder_lib.restore_encoder(checkpoint)
  arrays = torch_state_dict(weights.params, weights.state, weights.spec)
  state_dict = collections.OrderedDict(
    (k, torch.from_numpy(np.array(v))) for k, v in arrays.items()
  )
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  torch.save(state_dict, output)
  norm = ""
  if weights.spec.normalization == "group_ws":
    norm = f"norm_layer=byol_jax.interop.torch_group_norm({weights.bn_eps:g})"
  print(
    f"Wrote the {weights.spec.name} encoder of {weights.source} to {output}: load it into "
    f"torchvision.models.{weights.spec.name}({norm}) with fc = torch.nn.Identity(), then apply "
    "byol_jax.interop.use_same_padding(model) for Haiku's padding.",
    flush=True,
  )
  return output
