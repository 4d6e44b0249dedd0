"""The base configuration every config file starts from, and its validation.

Config files in ``configs/`` are Python files whose ``get_config()`` returns an
``ml_collections.ConfigDict``; they start from :func:`get_base_config` and override fields. The
structure is locked, so a misspelt key given on the command line is an error instead of a silently
ignored override. :func:`validate_config` turns impossible values into one-line errors before any
work starts.
"""

from __future__ import annotations

import ast
import importlib.util
import types
from collections.abc import Mapping
from typing import Any

import ml_collections

from byol_jax.errors import UserError

# The augmentation table of the paper (Table 6; the original code's values). View 1 uses T, view 2
# uses T'. They differ only in the blur and solarisation probabilities.
PAPER_VIEW1 = dict(
  crop_area_min=0.08,
  crop_area_max=1.0,
  crop_aspect_min=3 / 4,
  crop_aspect_max=4 / 3,
  flip_prob=0.5,
  jitter_prob=0.8,
  brightness=0.4,
  contrast=0.4,
  saturation=0.2,
  hue=0.1,
  gray_prob=0.2,
  blur_prob=1.0,
  blur_sigma_min=0.1,
  blur_sigma_max=2.0,
  blur_kernel_fraction=0.1,
  solarize_prob=0.0,
)
PAPER_VIEW2 = dict(PAPER_VIEW1, blur_prob=0.1, solarize_prob=0.2)

ARCHITECTURES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")
# The tiny encoder's default stages: residual blocks and output channels (x width_multiplier).
TINY_BLOCKS = (1, 1, 1, 1)
TINY_CHANNELS = (8, 16, 32, 64)
MODES = ("pretrain", "linear_eval", "finetune", "embed", "export_torch", "import_original")
# Modes that read a trained encoder from config.checkpoint.
CHECKPOINT_MODES = ("linear_eval", "finetune", "embed", "export_torch")
# config.model.encoder value of evaluation configs: take the architecture from the checkpoint.
FROM_CHECKPOINT = "checkpoint"
SOURCES = ("synthetic", "tfds", "folder")
OPTIMIZERS = ("lars", "sgd", "adamw")  # see config.optim.optimizer
HOST_MEMORY_POLICIES = ("auto", "on", "off")  # see config.host_memory
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")  # see config.model.compute_dtype
CONV_IMPLS = ("auto", "winograd", "matmul", "xla")  # see config.model.conv_impl


def get_base_config() -> ml_collections.ConfigDict:
  """Returns the full default config: the paper's recipe on a tiny synthetic problem."""
  c = ml_collections.ConfigDict()
  c.mode = "pretrain"
  c.seed = 0
  # "rbg" compiles far faster than "threefry2x32" on CPU and runs faster on TPU; runs are
  # reproducible on the same platform with either.
  c.prng_impl = "rbg"
  # "auto": when JAX computes on the CPU, keep freed host memory in the process (glibc) with
  # synchronous CPU dispatch, so that steps do not page-fault their buffers back in (~1.3x faster
  # steps on the CPU; see byol_jax/host_memory.py); "on": always; "off": never.
  c.host_memory = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" | "tfds" | "folder"
  c.data.name = ""  # TFDS name, e.g. "imagenet2012", "cifar10", "stl10"
  c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default)
  c.data.path = ""  # image folder: <path>/<class>/*.jpg|png, or a flat folder of images
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32  # training resolution of the views
  c.data.eval_resize = 32  # eval: resize the short side to this, then centre-crop image_size
  # Centre crop of a pretraining run's evaluation views (kNN monitor, load_encoder); 0: image_size.
  # Training on small random crops and evaluating at full size is cheap and works well
  # (configs/byol_cifar10_cpu.py trains at 16 px and evaluates at 64 px).
  c.data.eval_image_size = 0
  c.data.synthetic_examples = 2048
  c.data.synthetic_classes = 10
  c.data.host_colour_ops = True  # False: colour, blur and solarise run on the device
  c.data.shuffle_buffer = 10_000
  # Image folders: hold out this many images (stratified by class, fixed seed) for evaluation.
  c.data.holdout = 0
  c.data.holdout_seed = 0

  c.augment = ml_collections.ConfigDict()
  c.augment.view1 = ml_collections.ConfigDict(PAPER_VIEW1)
  c.augment.view2 = ml_collections.ConfigDict(PAPER_VIEW2)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "resnet50"
  c.model.width_multiplier = 1
  c.model.small_image_stem = False  # 3x3 stride-1 first conv and no max-pool, for 32x32 data
  # Residual blocks per stage of the "tiny" encoder; a 0 leaves that stage out, e.g.
  # (0, 1, 1, 1) goes from the stem straight to the stride-2 stage.
  c.model.tiny_blocks = TINY_BLOCKS
  # Output channels of the tiny encoder's stages, times width_multiplier; the last is the
  # representation's size. The stem has min(64, first) x width_multiplier channels.
  c.model.tiny_channels = TINY_CHANNELS
  c.model.projector_hidden = 4096
  c.model.projector_output = 256
  c.model.predictor_hidden = 4096
  c.model.bn_decay = 0.9
  c.model.bn_eps = 1e-5
  # Dtype of convolutions and matrix products: "float32", "bfloat16" or "auto" (bfloat16 on
  # GPU/TPU, float32 on CPU). Parameters, BatchNorm statistics, the loss and the optimiser state
  # stay float32 either way; changing it does not change the architecture (a run may resume with
  # another value).
  c.model.compute_dtype = "auto"
  # How convolutions compute: "matmul" (patches x kernel, several times faster on XLA:CPU),
  # "winograd" (the same, with Winograd F(2x2, 3x3) for the 3x3 layers where it is faster), "xla"
  # (XLA's own convolutions, best on GPU/TPU) or "auto" (winograd on CPU, xla elsewhere). The same
  # parameters and results (up to float rounding) either way.
  c.model.conv_impl = "auto"

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 0.2  # lr = base_lr * batch_size / 256
  c.optim.weight_decay = 1.5e-6
  c.optim.momentum = 0.9
  c.optim.trust_coefficient = 1e-3
  c.optim.warmup_epochs = 10.0
  c.optim.warmup_steps = -1  # >= 0 overrides warmup_epochs
  c.optim.tau_base = 0.996
  # "lars" (the paper's), "sgd" (heavy-ball momentum, L2 weight decay added to the gradient) or
  # "adamw"; all use the warm-up + cosine schedule and exclude biases and norms from weight decay.
  c.optim.optimizer = "lars"
  # The predictor's learning rate is base_lr times this (SimSiam/DirectPred: a faster predictor).
  c.optim.predictor_lr_multiplier = 1.0
  # Gradient accumulation: each device runs its share of config.batch_size in this many
  # micro-batches, one after the other, and the optimiser and target network are updated once.
  # The batch (and so the learning rate) is unchanged and memory is that of one micro-batch.
  # BatchNorm normalises with each micro-batch's statistics (over all devices) and updates its
  # moving averages once per micro-batch, so they move this many times per step.
  c.optim.grad_accum_steps = 1

  # A workdir or checkpoint whose online encoder initialises a fresh run (the heads start anew).
  c.init_encoder_from = ""

  c.batch_size = 4096  # global batch, across all devices and hosts
  c.num_epochs = 1000.0
  c.num_steps = -1  # > 0 overrides num_epochs

  # > 0: drop updates with a non-finite loss, gradient or update, and stop once more than this
  # many were dropped; 0: the first non-finite loss stops the run.
  c.max_skipped_steps = 0

  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3

  # Evaluation modes read the encoder from here: a training workdir or one checkpoint step folder
  # (import_original: the original code's .pkl file).
  c.checkpoint = ""
  c.eval = ml_collections.ConfigDict()
  # Linear evaluation and fine-tuning (the paper: SGD + Nesterov 0.9, batch 1024, 80 epochs,
  # cosine decay, lr = base_lr * batch / 256, no weight decay, lr chosen on a validation split).
  c.eval.batch_size = 1024
  c.eval.num_epochs = 80.0
  c.eval.num_steps = -1  # > 0 overrides eval.num_epochs
  c.eval.base_lrs = (0.4,)  # several: each is trained, the best on eval.val_examples is tested
  c.eval.val_examples = 10_000  # held out of the training data to pick the lr (sweeps only)
  c.eval.train_augment = "crop_flip"  # augmentation preset of training views; "none": centre crops
  c.eval.weight_decay = 0.0
  c.eval.label_fraction = 1.0  # finetune: fraction of the labelled training data used
  c.eval.label_seed = 0  # finetune: seed of the stratified label subset
  c.eval.log_every_steps = 100
  c.eval.output = ""  # embed: .npz file; export_torch: .pt file (default: in the workdir)
  # Monitoring during pretraining: weighted kNN on the frozen online encoder every N steps
  # (0 = off), between a labelled training subset and held-out data.
  c.eval.knn_every_steps = 0
  c.eval.knn_k = 200
  c.eval.knn_temperature = 0.1
  c.eval.knn_train_examples = 10_000
  c.eval.knn_eval_examples = 10_000
  # Centre-crop size of the monitor's views (0: data.eval_image_size; short side resized in the
  # same ratio as data.eval_resize): a smaller one makes the monitor cheaper.
  c.eval.knn_image_size = 0
  # Online linear probe: a linear classifier trained on the stop-gradient online representation
  # during pretraining (as in the original code), which leaves the representation unchanged. Its
  # number of classes (that of the labelled training data), 0 = off.
  c.eval.online_probe_classes = 0
  return c


def eval_image_size(data: ml_collections.ConfigDict) -> int:
  """The centre-crop size of evaluation views for a run whose data section is ``data``."""
  return int(data.get("eval_image_size", 0) or data.image_size)


def eval_view_sizes(data: ml_collections.ConfigDict, image_size: int = 0) -> tuple[int, int]:
  """(centre-crop size, resize size) of evaluation views, optionally at another crop size.

  ``image_size`` (0: the run's own) keeps the ratio of ``data.eval_resize`` to the run's
  evaluation size, so a smaller or larger view shows the same part of the image.
  """
  size = eval_image_size(data)
  if not image_size:
    return size, int(data.eval_resize)
  return image_size, max(image_size, round(image_size * data.eval_resize / size))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first impossible value in ``config``."""

  def check(ok: bool, message: str) -> None:
    if not ok:
      raise UserError(message)

  check(config.mode in MODES, f"config.mode={config.mode!r} is not one of {MODES}.")
  check(
    config.host_memory in HOST_MEMORY_POLICIES,
    f"config.host_memory={config.host_memory!r} is not one of {HOST_MEMORY_POLICIES}.",
  )
  check(
    config.data.source in SOURCES,
    f"config.data.source={config.data.source!r} is not one of {SOURCES}.",
  )
  if config.data.source == "tfds":
    check(bool(config.data.name), "config.data.source='tfds' needs --config.data.name=<TFDS name>.")
  if config.data.source == "folder":
    check(bool(config.data.path), "config.data.source='folder' needs --config.data.path=<folder>.")
  allowed = ARCHITECTURES + ((FROM_CHECKPOINT,) if config.mode in CHECKPOINT_MODES else ())
  check(
    config.model.encoder in allowed,
    f"config.model.encoder={config.model.encoder!r} is not one of {allowed}.",
  )
  if config.mode in CHECKPOINT_MODES or config.mode == "import_original":
    check(
      bool(config.checkpoint),
      f"config.mode={config.mode!r} needs --config.checkpoint=<training workdir or checkpoint>.",
    )
  if config.mode in ("linear_eval", "finetune"):
    check(config.eval.batch_size > 0, "config.eval.batch_size must be positive.")
    check(
      len(config.eval.base_lrs) > 0 and all(lr > 0 for lr in config.eval.base_lrs),
      "config.eval.base_lrs must hold positive learning rates: "
      "e.g. --config.eval.base_lrs='(0.4,)'.",
    )
    check(
      config.eval.num_steps > 0 or config.eval.num_epochs > 0,
      "Set a positive config.eval.num_epochs or config.eval.num_steps.",
    )
    check(
      0.0 < config.eval.label_fraction <= 1.0,
      f"config.eval.label_fraction={config.eval.label_fraction} must lie in (0, 1].",
    )
  check(config.eval.knn_every_steps >= 0, "config.eval.knn_every_steps must be >= 0 (0 = off).")
  check(config.eval.knn_k > 0, "config.eval.knn_k must be positive.")
  check(
    config.eval.knn_image_size >= 0,
    "config.eval.knn_image_size must be >= 0 (0 = data.eval_image_size).",
  )
  check(
    config.eval.online_probe_classes >= 0,
    "config.eval.online_probe_classes must be >= 0 (0 = no online probe).",
  )
  check(config.eval.knn_temperature > 0, "config.eval.knn_temperature must be positive.")
  check(
    config.model.conv_impl in CONV_IMPLS,
    f"config.model.conv_impl={config.model.conv_impl!r} is not one of {CONV_IMPLS}.",
  )
  check(
    config.model.width_multiplier >= 1,
    "config.model.width_multiplier must be a positive integer (1, 2, 4).",
  )
  blocks = tuple(config.model.tiny_blocks)
  check(
    len(blocks) == 4 and all(isinstance(b, int) and b >= 0 for b in blocks) and any(blocks),
    f"config.model.tiny_blocks={blocks} must be four block counts >= 0, not all 0: "
    "e.g. --config.model.tiny_blocks='(1,1,1,1)'.",
  )
  channels = tuple(config.model.tiny_channels)
  check(
    len(channels) == 4 and all(isinstance(n, int) and n >= 1 for n in channels),
    f"config.model.tiny_channels={channels} must be four positive channel counts: "
    "e.g. --config.model.tiny_channels='(8,16,32,64)'.",
  )
  check(config.batch_size > 0, f"config.batch_size={config.batch_size} must be positive.")
  check(config.data.image_size >= 8, "config.data.image_size must be at least 8 pixels.")
  check(config.optim.base_lr > 0, "config.optim.base_lr must be positive.")
  check(
    config.optim.grad_accum_steps >= 1,
    f"config.optim.grad_accum_steps={config.optim.grad_accum_steps} must be a positive integer "
    "dividing the per-device batch (1 = no accumulation).",
  )
  check(
    config.model.compute_dtype in COMPUTE_DTYPES,
    f"config.model.compute_dtype={config.model.compute_dtype!r} is not one of {COMPUTE_DTYPES}.",
  )
  check(
    config.optim.optimizer in OPTIMIZERS,
    f"config.optim.optimizer={config.optim.optimizer!r} is not one of {OPTIMIZERS}.",
  )
  check(
    config.optim.predictor_lr_multiplier > 0,
    "config.optim.predictor_lr_multiplier must be positive.",
  )
  check(0.0 <= config.optim.tau_base <= 1.0, "config.optim.tau_base must lie in [0, 1].")
  check(
    config.num_steps > 0 or config.num_epochs > 0,
    "Set a positive config.num_epochs or config.num_steps.",
  )
  for view in ("view1", "view2"):
    v = config.augment[view]
    for key in ("flip_prob", "jitter_prob", "gray_prob", "blur_prob", "solarize_prob"):
      check(0.0 <= v[key] <= 1.0, f"config.augment.{view}.{key}={v[key]} must lie in [0, 1].")
    check(
      0.0 < v.crop_area_min <= v.crop_area_max <= 1.0,
      f"config.augment.{view}: need 0 < crop_area_min <= crop_area_max <= 1.",
    )
    check(
      0.0 < v.crop_aspect_min <= v.crop_aspect_max,
      f"config.augment.{view}: need 0 < crop_aspect_min <= crop_aspect_max.",
    )


def load_config_module(path: str) -> types.ModuleType:
  """The Python module of a config file."""
  spec = importlib.util.spec_from_file_location("byol_jax_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """The config of ``file.py`` (its ``get_config()``) or ``file.py:arg`` (``get_config(arg)``),
  as ``--config`` takes it."""
  path, _, arg = path.partition(":")
  module = load_config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def set_fields(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """Sets existing dotted fields, ``{"model.encoder": "tiny"}``; returns ``config``.

  A string given for a field that is not a string is read as a Python literal ("16", "1e-3",
  "False", "(0.1, 0.2)"), as ``--config.a.b=value`` on the command line is.
  """
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(f"No config field {key!r}.")
    if isinstance(value, str) and not isinstance(node[leaf], str):
      value = ast.literal_eval(value)
    node[leaf] = value
  return config
