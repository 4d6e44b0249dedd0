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
import math
import types
from collections.abc import Mapping
from typing import Any, NoReturn

import ml_collections

from byol_jax.data.params import CROP_SCHEMES, PRESETS
from byol_jax.errors import UserError
from byol_jax.losses import SIMILARITIES
from byol_jax.schedules import TAU_SCHEDULES, keeps_target

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
  # "original": one draw of area and aspect, clamped to the image, as the original code crops;
  # "rejection": redraw boxes that do not fit (Inception / torchvision; fewer large crops).
  crop_scheme="original",
)
PAPER_VIEW2 = dict(PAPER_VIEW1, blur_prob=0.1, solarize_prob=0.2)

ARCHITECTURES = ("tiny", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")
# Modes that train a classifier on a checkpoint, with an lr sweep, at data.image_size.
CLASSIFIER_MODES = ("linear_eval", "finetune")
# The default lr grid of linear evaluation and fine-tuning: 0.01 to 10, half a decade apart.
LINEAR_EVAL_LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# The tiny encoder's default stages: residual blocks and output channels (x width_multiplier).
TINY_BLOCKS = (1, 1, 1, 1)
TINY_CHANNELS = (8, 16, 32, 64)
MODES = (
  "pretrain",
  "linear_eval",
  "finetune",
  "embed",
  "export_torch",
  "import_original",
  "report",
  "prepare",
)
# Modes that read a trained encoder from config.checkpoint.
CHECKPOINT_MODES = ("linear_eval", "finetune", "embed", "export_torch")
# config.model.encoder value of evaluation configs: take the architecture from the checkpoint.
FROM_CHECKPOINT = "checkpoint"
SOURCES = ("synthetic", "tfds", "folder", "prepared")
PIPELINES = ("tfdata", "device")  # see config.data.pipeline
OPTIMIZERS = ("lars", "sgd", "adamw")  # see config.optim.optimizer
HOST_MEMORY_POLICIES = ("auto", "on", "off")  # see config.host_memory
COMPUTE_DTYPES = ("float32", "bfloat16", "auto")  # see config.model.compute_dtype
CONV_IMPLS = ("auto", "winograd", "matmul", "xla")  # see config.model.conv_impl
NORMALIZATIONS = ("batch", "group_ws")  # see config.model.normalization
RESNET_LAYOUTS = ("torchvision", "original")  # see config.model.resnet_layout
HEAD_BATCHNORMS = ("hidden", "none", "hidden+projector_output", "all")  # model.head_batchnorm
MAP_METHODS = ("auto", "umap", "tsne", "pca")  # see config.eval.map_method
PRNG_IMPLS = ("rbg", "threefry2x32", "unsafe_rbg")  # see config.prng_impl (JAX's names)


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
  # "synthetic" | "tfds" | "folder" | "prepared": the files <path>/<split>.npz that
  # --config.mode=prepare writes from a folder or TFDS (read without TensorFlow; see
  # byol_jax/data/prepared.py).
  c.data.source = "synthetic"
  c.data.name = ""  # TFDS name, e.g. "imagenet2012", "cifar10", "stl10"
  c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default)
  # Image folder: <path>/<class>/*.jpg|png, or a flat folder of images; the folder of the
  # prepared files for data.source="prepared".
  c.data.path = ""
  c.data.train_split = "train"
  c.data.eval_split = "test"
  # Training resolution of the views. Modes that read a checkpoint (linear evaluation,
  # fine-tuning, embed): 0 takes the evaluation view of the checkpoint's own run (its
  # data.eval_image_size and data.eval_resize), which embed always uses.
  c.data.image_size = 32
  c.data.eval_resize = 32  # eval: resize the short side to this, then centre-crop image_size
  # Centre crop of a pretraining run's evaluation views (kNN monitor, load_encoder); 0: image_size.
  # Training on small random crops and evaluating at full size is cheap and works well
  # (configs/byol_cifar10_cpu.py trains at 16 px and evaluates at 64 px).
  c.data.eval_image_size = 0
  c.data.synthetic_examples = 2048
  c.data.synthetic_classes = 10
  c.data.host_colour_ops = True  # False: colour, blur and solarise run on the device
  # Pretraining input: "tfdata" decodes, crops and flips on the host (any dataset size);
  # "device" decodes the whole training set once into memory (one uint8 array: images of one
  # size, e.g. CIFAR, STL-10) and runs the whole augmentation inside the step
  # (byol_jax/data/in_memory.py, byol_jax/data/device_crop.py); host_colour_ops is then unused.
  c.data.pipeline = "tfdata"
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
  # False removes the predictor: the online projection is regressed onto the target's directly
  # (the BYOL paper's ablation, Table 5; with a fast target it collapses).
  c.model.predictor = True
  # Linear layers of the projector and the predictor (BYOL's Table 14 ablates 1-3 of each; the
  # widths are projector_hidden, projector_output and predictor_hidden); each but the last is
  # followed by the hidden norm and a ReLU.
  c.model.projector_layers = 2
  c.model.predictor_layers = 2
  # Where the heads have BatchNorm (SimSiam's Table 3): "hidden" (BYOL's: after each hidden
  # layer), "none", "hidden+projector_output" (SimSiam's default: also on the projector's output,
  # without scale and offset) or "all" (also on the predictor's output). BatchNorm only.
  c.model.head_batchnorm = "hidden"
  # "batch": BatchNorm, as in BYOL (Grill et al. 2020) and every result and checkpoint so far.
  # "group_ws": no batch statistics anywhere, after "BYOL works even without batch statistics"
  # (Richemond et al. 2020, arXiv 2010.10241: GN + WS, 73.9% linear top-1 with ResNet-50 against
  # 74.3% with BN). Every convolution standardises its kernel per output channel (weight
  # standardisation, Qiao et al. 2019: (w - mean) / sqrt(var + 1e-10) over the kernel's height,
  # width and input channels, with BiT's 1e-10 as eps) and every BatchNorm becomes a GroupNorm
  # (Wu & He 2018; its eps is model.bn_eps), in the encoder and in the projector and predictor,
  # whose hidden layer is Linear -> GroupNorm -> ReLU. Chosen here, not taken from that paper
  # (to be checked against its text): 16 groups (gcd(16, C) where C channels are fewer or not a multiple),
  # GroupNorm in the heads and no WS on their linear layers, and the BN path's initialisation
  # (GroupNorm scale 1, offset 0, the last scale of bottleneck blocks 0; Haiku's fan-in
  # truncated normal kernels). No moving averages: the network has no state, so
  # optim.grad_accum_steps=k gives exactly the update of one k-times larger batch. See
  # configs/byol_r50_gnws.py for the ImageNet preset.
  c.model.normalization = "batch"
  c.model.bn_decay = 0.9  # BatchNorm only
  c.model.bn_eps = 1e-5  # BatchNorm and GroupNorm
  # Projection shortcuts of ResNet-18/34 (and "tiny"): "torchvision" has one only where a block
  # changes the shape; "original" has one in the first block of every stage, as the original
  # BYOL code (deepmind-research byol/utils/networks.py: use_projection=(True,) * 4), so its
  # ResNet-18/34 checkpoints import. Bottleneck ResNets have one there either way.
  c.model.resnet_layout = "torchvision"
  # Recompute each residual block's activations in the backward pass (jax.checkpoint) instead
  # of keeping them: less memory, about one more forward pass of compute; the same parameters
  # and update. A run may resume with another value.
  c.model.remat = False
  # Dtype of convolutions and matrix products: "float32", "bfloat16" or "auto" (bfloat16 on
  # GPU/TPU, float32 on CPU). Parameters, BatchNorm and GroupNorm statistics, the weight
  # standardisation, the loss and the optimiser state stay float32 either way; changing it does
  # not change the architecture (a run may resume with another value).
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
  # "cosine": τ anneals from tau_base to 1 (the paper); "constant": τ = tau_base at every step.
  # A constant τ of 0 keeps no target network: the targets are the online network's own
  # projections (under stop-gradient unless loss.stop_gradient=False), as in SimSiam and the
  # BYOL paper's "stop gradient of online" row (Table 5a), and no second copy is kept.
  c.optim.tau_schedule = "cosine"
  # "lars" (the paper's), "sgd" (heavy-ball momentum, L2 weight decay added to the gradient) or
  # "adamw"; all use the warm-up + cosine schedule and exclude biases and norms from weight decay.
  c.optim.optimizer = "lars"
  # The predictor's learning rate is base_lr times this (SimSiam/DirectPred: a faster predictor).
  c.optim.predictor_lr_multiplier = 1.0
  # False: the predictor's learning rate stays at its peak (SimSiam's "lr not decayed", its
  # default; Table 1c) while the rest follows the warm-up + cosine schedule.
  c.optim.predictor_lr_decay = True
  # True: the predictor never moves from its random initialisation (SimSiam's Table 1b).
  c.optim.freeze_predictor = False
  # Gradient accumulation: each device runs its share of config.batch_size in this many
  # micro-batches, one after the other, and the optimiser and target network are updated once.
  # The batch (and so the learning rate) is unchanged and memory is that of one micro-batch.
  # BatchNorm normalises with each micro-batch's statistics (over all devices) and updates its
  # moving averages once per micro-batch, so they move this many times per step.
  c.optim.grad_accum_steps = 1

  # The loss (byol_jax/losses.py, byol_jax/contrastive.py); the defaults are BYOL's.
  c.loss = ml_collections.ConfigDict()
  # "cosine": 2 - 2 cos(p, z) (BYOL); "cross_entropy": -softmax(z) . log softmax(p) (SimSiam's
  # Section 4.5).
  c.loss.similarity = "cosine"
  # False: only view 1's prediction against view 2's target (SimSiam's Section 4.6).
  c.loss.symmetric = True
  # False: no stop-gradient on the targets, which then train the online network too; needs the
  # target to be the online network (optim.tau_schedule="constant", optim.tau_base=0).
  c.loss.stop_gradient = True
  # The BYOL paper's unified objective (Section 5, Eq. 6; Tables 5b, 18, 19): InfoNCE negatives
  # over the global batch with weight β (0: BYOL's loss) and temperature α (the paper's 0.1).
  # β=1 without predictor, with a constant τ of 0 and no stop-gradient is SimCLR.
  c.loss.infonce_weight = 0.0
  c.loss.infonce_temperature = 0.1
  # > 0: also the target projections of the last this many views (both views of each example,
  # newest first) as negatives, MoCo's queue (byol_jax/negatives_queue.py); 0: the batch's only.
  c.loss.infonce_queue = 0

  # A workdir or checkpoint whose online encoder initialises a fresh run (the heads start anew).
  c.init_encoder_from = ""

  c.batch_size = 4096  # global batch, across all devices and hosts
  c.num_epochs = 1000.0
  c.num_steps = -1  # > 0 overrides num_epochs

  # > 0: drop updates whose loss, gradient or resulting state (parameters, BatchNorm statistics,
  # target, optimiser state) is not finite, and stop once more than this many were dropped; 0: the
  # first non-finite loss stops the run.
  c.max_skipped_steps = 0

  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  # The collapse alarm (byol_jax/collapse.py) warns once when the online outputs' spread and
  # the representation's effective rank stay low; True stops the run there instead (exit code
  # 2, one line; the last checkpoint, written before, is kept).
  c.stop_on_collapse = False

  # Evaluation modes read the encoder from here: a training workdir or one checkpoint step folder
  # (import_original: the original code's .pkl file; report: a workdir or an embeddings .npz).
  c.checkpoint = ""
  c.eval = ml_collections.ConfigDict()
  # Linear evaluation and fine-tuning (the paper: SGD + Nesterov 0.9, batch 1024, 80 epochs,
  # cosine decay, lr = base_lr * batch / 256, no weight decay, lr chosen on a validation split).
  c.eval.batch_size = 1024
  c.eval.num_epochs = 80.0
  c.eval.num_steps = -1  # > 0 overrides eval.num_epochs
  # Several: each trains side by side on the same features, the best on eval.val_examples is
  # tested; a warning names a best lr at either end of the grid (the optimum may lie beyond it).
  # Log-spaced over three decades, so that the grid brackets the optimum of most encoders.
  c.eval.base_lrs = LINEAR_EVAL_LRS
  # Held out of the training data to pick the lr (sweeps only), at most a fifth of it.
  c.eval.val_examples = 10_000
  c.eval.train_augment = "crop_flip"  # augmentation preset of training views; "none": centre crops
  c.eval.weight_decay = 0.0
  # Linear evaluation on standardised features: each dimension shifted and scaled by its mean and
  # standard deviation over the training set's evaluation views (a departure from the paper,
  # whose classifier reads the raw representation; later protocols standardise, which makes one
  # lr grid fit encoders of any scale).
  c.eval.standardize_features = False
  c.eval.label_fraction = 1.0  # finetune: fraction of the labelled training data used
  c.eval.label_seed = 0  # finetune: seed of the stratified label subset
  c.eval.log_every_steps = 100
  c.eval.output = ""  # embed: .npz file; export_torch: .pt file (default: in the workdir)
  # report: how the embeddings map is drawn ("auto": UMAP if installed, else t-SNE if
  # scikit-learn is, else PCA) and at most how many embeddings it shows (a random subset).
  c.eval.map_method = "auto"
  c.eval.map_points = 5000
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
  """Raises UserError naming the first impossible value in ``config``.

  Runs before any slow work (data, compilation). Each message is one line: the field, its value,
  the rule and a corrected ``--config.field=value`` flag.
  """
  _validate_run(config)
  _validate_data(config)
  _validate_augment(config)
  _validate_model(config)
  _validate_optim(config)
  _validate_loss(config)
  _validate_loop(config)
  _validate_eval(config)


# --------------------------------------------------------------------------------------------
# Rules shared by the sections. Each reads a dotted field, e.g. "optim.momentum".


def _value(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for key in field.split("."):
    node = node[key]
  return node


def flag(field: str, value: Any) -> str:
  """``--config.field=value`` as typed in a shell (tuples quoted)."""
  if isinstance(value, tuple | list):
    text = "'(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")'"
  elif isinstance(value, str):
    text = value or "''"
  else:
    text = repr(value)
  return f"--config.{field}={text}"


def _fail(config: ml_collections.ConfigDict, field: str, rule: str, fix: str = "") -> NoReturn:
  # The default value of every field is valid, so it makes the example unless one is given.
  fix = fix or flag(field, _value(get_base_config(), field))
  raise UserError(f"config.{field}={_value(config, field)!r} {rule}: e.g. {fix}.")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_at_least(config: ml_collections.ConfigDict, field: str, low: int, note: str = "") -> None:
  """An integer >= ``low``; ``note`` says what the smallest value means (e.g. "(0 = off)")."""
  value = _value(config, field)
  if not _is_int(value) or value < low:
    rule = "must be a positive integer" if low == 1 else f"must be an integer >= {low}"
    _fail(config, field, f"{rule}{' ' + note if note else ''}")


def _number_in(
  config: ml_collections.ConfigDict,
  field: str,
  low: float,
  high: float | None = None,
  *,
  low_open: bool = False,
  high_open: bool = False,
  note: str = "",
) -> None:
  """A finite number in the interval from ``low`` to ``high`` (None: unbounded)."""
  value = _value(config, field)
  ok = _is_number(value) and (value > low if low_open else value >= low)
  if high is not None:
    ok = ok and (value < high if high_open else value <= high)
  if not ok:
    if high is None:
      rule = f"must be a number {'>' if low_open else '>='} {low:g}"
    else:
      rule = f"must lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    _fail(config, field, f"{rule}{' ' + note if note else ''}")


def _positive(config: ml_collections.ConfigDict, field: str) -> None:
  _number_in(config, field, 0.0, low_open=True)


def _one_of(config: ml_collections.ConfigDict, field: str, choices: tuple[str, ...]) -> None:
  if _value(config, field) not in choices:
    _fail(config, field, f"is not one of {choices}")


def _size_or_zero(config: ml_collections.ConfigDict, field: str, zero_means: str) -> None:
  """0 (``zero_means``) or an image size of at least 8 pixels."""
  value = _value(config, field)
  if not _is_int(value) or not (value == 0 or value >= 8):
    _fail(config, field, f"must be 0 ({zero_means}) or an image size >= 8")


def _ordered(config: ml_collections.ConfigDict, low_field: str, high_field: str) -> None:
  """``low_field <= high_field`` (each already checked on its own)."""
  low, high = _value(config, low_field), _value(config, high_field)
  if low > high:
    base = get_base_config()
    fix = f"{flag(low_field, _value(base, low_field))} {flag(high_field, _value(base, high_field))}"
    _fail(config, low_field, f"must be <= config.{high_field}={high!r}", fix)


# --------------------------------------------------------------------------------------------
# The sections.


def _validate_run(config: ml_collections.ConfigDict) -> None:
  _one_of(config, "mode", MODES)
  _one_of(config, "prng_impl", PRNG_IMPLS)
  _one_of(config, "host_memory", HOST_MEMORY_POLICIES)
  _int_at_least(config, "seed", 0)
  if config.mode in (*CHECKPOINT_MODES, "import_original") and not config.checkpoint:
    _fail(
      config,
      "checkpoint",
      f"must be set: config.mode={config.mode!r} reads the encoder from it",
      "--config.checkpoint=<training workdir or checkpoint>",
    )
  if config.mode == "report" and not config.checkpoint:
    _fail(
      config,
      "checkpoint",
      "must be set: config.mode='report' draws the run (or embeddings.npz) it names",
      "--config.checkpoint=<training workdir>",
    )


def _validate_data(config: ml_collections.ConfigDict) -> None:
  d = config.data
  _one_of(config, "data.source", SOURCES)
  _one_of(config, "data.pipeline", PIPELINES)
  if d.source == "tfds" and not d.name:
    _fail(
      config,
      "data.name",
      "must name a TFDS dataset for config.data.source='tfds'",
      "--config.data.name=cifar10",
    )
  if d.source in ("folder", "prepared") and not d.path:
    what = "an image folder" if d.source == "folder" else "the folder of the prepared files"
    _fail(
      config,
      "data.path",
      f"must name {what} for config.data.source='{d.source}'",
      "--config.data.path=DIR",
    )
  for field in ("data.train_split", "data.eval_split"):
    if not _value(config, field):
      _fail(config, field, "must name a split")
  if config.mode in CHECKPOINT_MODES:
    _size_or_zero(config, "data.image_size", "the checkpoint's evaluation view")
  else:
    _int_at_least(config, "data.image_size", 8, "(pixels)")
  _size_or_zero(config, "data.eval_image_size", "data.image_size")
  # Evaluation views are resized to eval_resize, then centre-cropped; linear evaluation and
  # fine-tuning crop data.image_size, pretraining runs (kNN monitor, load_encoder) their
  # evaluation size.
  crop_field = "image_size" if config.mode in CLASSIFIER_MODES else "eval_image_size"
  crop = d.image_size if crop_field == "image_size" else eval_image_size(d)
  if crop and (not _is_int(d.eval_resize) or d.eval_resize < crop):
    _fail(
      config,
      "data.eval_resize",
      f"must be at least the evaluation crop ({crop} px, data.{crop_field})",
      flag("data.eval_resize", crop),
    )
  _int_at_least(config, "data.synthetic_examples", 1)
  _int_at_least(config, "data.synthetic_classes", 1)
  _int_at_least(config, "data.shuffle_buffer", 0, "(0 or 1 = no shuffling)")
  _int_at_least(config, "data.holdout", 0, "(0 = no hold-out)")
  _int_at_least(config, "data.holdout_seed", 0)


def _validate_augment(config: ml_collections.ConfigDict) -> None:
  for view in ("augment.view1", "augment.view2"):
    for key in ("flip_prob", "jitter_prob", "gray_prob", "blur_prob", "solarize_prob"):
      _number_in(config, f"{view}.{key}", 0.0, 1.0)
    for key in ("brightness", "contrast", "saturation"):
      _number_in(config, f"{view}.{key}", 0.0)
    _number_in(config, f"{view}.hue", 0.0, 0.5)  # a shift in turns of the colour wheel
    for key in ("crop_area_min", "crop_area_max"):
      _number_in(config, f"{view}.{key}", 0.0, 1.0, low_open=True)
    _ordered(config, f"{view}.crop_area_min", f"{view}.crop_area_max")
    for key in ("crop_aspect_min", "crop_aspect_max"):
      _positive(config, f"{view}.{key}")
    _ordered(config, f"{view}.crop_aspect_min", f"{view}.crop_aspect_max")
    _positive(config, f"{view}.blur_sigma_min")  # a zero sigma divides by zero in the kernel
    _positive(config, f"{view}.blur_sigma_max")
    _ordered(config, f"{view}.blur_sigma_min", f"{view}.blur_sigma_max")
    _number_in(config, f"{view}.blur_kernel_fraction", 0.0, 1.0, low_open=True)
    _one_of(config, f"{view}.crop_scheme", CROP_SCHEMES)


def _validate_model(config: ml_collections.ConfigDict) -> None:
  allowed = ARCHITECTURES + ((FROM_CHECKPOINT,) if config.mode in CHECKPOINT_MODES else ())
  _one_of(config, "model.encoder", allowed)
  _one_of(config, "model.conv_impl", CONV_IMPLS)
  _one_of(config, "model.compute_dtype", COMPUTE_DTYPES)
  _one_of(config, "model.normalization", NORMALIZATIONS)
  _one_of(config, "model.resnet_layout", RESNET_LAYOUTS)
  _int_at_least(config, "model.width_multiplier", 1)
  blocks = tuple(config.model.tiny_blocks)
  if not (len(blocks) == 4 and all(_is_int(b) and b >= 0 for b in blocks) and any(blocks)):
    _fail(config, "model.tiny_blocks", "must be four block counts >= 0, not all 0")
  channels = tuple(config.model.tiny_channels)
  if not (len(channels) == 4 and all(_is_int(n) and n >= 1 for n in channels)):
    _fail(config, "model.tiny_channels", "must be four positive channel counts")
  for field in ("model.projector_hidden", "model.projector_output", "model.predictor_hidden"):
    _int_at_least(config, field, 1)
  for field in ("model.projector_layers", "model.predictor_layers"):
    _int_at_least(config, field, 1, "(linear layers)")
  _one_of(config, "model.head_batchnorm", HEAD_BATCHNORMS)
  if config.model.head_batchnorm != "hidden" and config.model.normalization != "batch":
    _fail(config, "model.head_batchnorm", "places BatchNorm: it needs model.normalization='batch'")
  _number_in(config, "model.bn_decay", 0.0, 1.0, high_open=True)
  _positive(config, "model.bn_eps")


def _validate_optim(config: ml_collections.ConfigDict) -> None:
  _one_of(config, "optim.optimizer", OPTIMIZERS)
  _positive(config, "optim.base_lr")
  _number_in(config, "optim.weight_decay", 0.0)
  _number_in(config, "optim.momentum", 0.0, 1.0, high_open=True)
  _positive(config, "optim.trust_coefficient")
  _number_in(config, "optim.warmup_epochs", 0.0)
  _int_at_least(config, "optim.warmup_steps", -1, "(-1 = use optim.warmup_epochs)")
  _number_in(config, "optim.tau_base", 0.0, 1.0)
  _positive(config, "optim.predictor_lr_multiplier")
  _one_of(config, "optim.tau_schedule", TAU_SCHEDULES)
  _one_of(config, "optim.predictor_lr_decay", (True, False))
  _one_of(config, "optim.freeze_predictor", (False, True))
  if config.optim.freeze_predictor and not config.model.predictor:
    _fail(config, "optim.freeze_predictor", "needs a predictor (config.model.predictor is False)")


def shares_target(optim: Mapping[str, Any]) -> bool:
  """Whether a run with this ``optim`` section (a config's, or a saved config's as a dict) uses
  the online network as its own target (a constant τ of 0): no target network is kept."""
  return not keeps_target(optim.get("tau_schedule", "cosine"), optim.get("tau_base", 0.996))


def _validate_loss(config: ml_collections.ConfigDict) -> None:
  _one_of(config, "loss.similarity", SIMILARITIES)
  _one_of(config, "loss.symmetric", (True, False))
  _one_of(config, "loss.stop_gradient", (True, False))
  _number_in(config, "loss.infonce_weight", 0.0)
  _positive(config, "loss.infonce_temperature")
  _int_at_least(config, "loss.infonce_queue", 0, "(0 = the batch's negatives only)")
  if config.loss.infonce_queue and not config.loss.infonce_weight:
    _fail(
      config,
      "loss.infonce_queue",
      "holds negatives for the InfoNCE term, which is off (loss.infonce_weight=0)",
      "--config.loss.infonce_weight=1.0, or --config.loss.infonce_queue=0",
    )
  if not config.loss.stop_gradient and not shares_target(config.optim):
    _fail(
      config,
      "loss.stop_gradient",
      "needs the online network as its own target (a target network is never trained, so no "
      "gradient reaches it)",
      "--config.loss.stop_gradient=True, or --config.optim.tau_schedule=constant "
      "--config.optim.tau_base=0.0",
    )
  if config.loss.infonce_weight and config.loss.similarity != "cosine":
    _fail(config, "loss.similarity", "must be 'cosine' with InfoNCE negatives (infonce_weight > 0)")
  _int_at_least(config, "optim.grad_accum_steps", 1, "dividing the per-device batch")


def _validate_loop(config: ml_collections.ConfigDict) -> None:
  _int_at_least(config, "batch_size", 1)
  _int_at_least(config, "num_steps", -1, "(-1 = use num_epochs)")
  if config.num_steps <= 0:
    _number_in(config, "num_epochs", 0.0, low_open=True, note="unless config.num_steps > 0")
  _int_at_least(config, "max_skipped_steps", 0, "(0 = stop at the first non-finite loss)")
  _int_at_least(config, "log_every_steps", 1)
  _int_at_least(config, "checkpoint_every_steps", 1)
  _int_at_least(config, "keep_checkpoints", 1)
  _one_of(config, "stop_on_collapse", (False, True))
  _one_of(config, "model.predictor", (False, True))


def _validate_eval(config: ml_collections.ConfigDict) -> None:
  e = config.eval
  _int_at_least(config, "eval.batch_size", 1)
  _int_at_least(config, "eval.num_steps", -1, "(-1 = use eval.num_epochs)")
  if e.num_steps <= 0:
    _number_in(config, "eval.num_epochs", 0.0, low_open=True, note="unless eval.num_steps > 0")
  lrs = tuple(e.base_lrs)
  if not (lrs and all(_is_number(lr) and lr > 0 for lr in lrs)):
    _fail(config, "eval.base_lrs", "must hold positive learning rates")
  if config.mode in CLASSIFIER_MODES and len(lrs) > 1:
    # Several lrs: each is scored on val_examples held out of the training split (TFDS: the
    # split's last val_examples records; 0 would make "train[:-0]", an empty training split).
    _int_at_least(
      config,
      "eval.val_examples",
      1,
      f"(the best of the {len(lrs)} eval.base_lrs is picked on that many training examples)",
    )
  _one_of(config, "eval.train_augment", ("none", *sorted(PRESETS)))
  _one_of(config, "eval.standardize_features", (False, True))
  _one_of(config, "eval.map_method", MAP_METHODS)
  _int_at_least(config, "eval.map_points", 3)
  _number_in(config, "eval.weight_decay", 0.0)
  _number_in(config, "eval.label_fraction", 0.0, 1.0, low_open=True)
  _int_at_least(config, "eval.label_seed", 0)
  _int_at_least(config, "eval.log_every_steps", 1)
  _int_at_least(config, "eval.knn_every_steps", 0, "(0 = off)")
  _int_at_least(config, "eval.knn_k", 1)
  _positive(config, "eval.knn_temperature")
  _int_at_least(config, "eval.knn_train_examples", 0, "(0 = all)")
  _int_at_least(config, "eval.knn_eval_examples", 0, "(0 = all)")
  _size_or_zero(config, "eval.knn_image_size", "data.eval_image_size")
  _int_at_least(config, "eval.online_probe_classes", 0, "(0 = no online probe)")


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
