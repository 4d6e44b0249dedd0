"""Semi-supervised fine-tuning of a BYOL ResNet-50 on 1% or 10% of the ImageNet labels (Table 2).

``--config=configs/finetune_r50.py:1`` (or ``:10``) with ``--config.checkpoint=DIR``. The whole
network is trained on a stratified label subset chosen from ``eval.label_seed`` (its indices are
written to ``label_subset.json`` in the workdir): SGD with Nesterov momentum 0.9, batch 1024,
cosine decay, no weight decay, random resized crop + flip; BatchNorm in training mode with
cross-replica statistics. The base learning rates are compared on a validation part of the subset.
The TFDS split is read once to pick the subset, which is then kept (encoded) in host memory.
"""

from byol_jax import config_base

# label percentage -> (epochs, base learning rates)
PRESETS = {1: (30.0, (0.005, 0.01, 0.02)), 10: (20.0, (0.005, 0.01, 0.02))}


def get_config(percent: str = "1"):
  percent = int(percent)
  if percent not in PRESETS:
    raise ValueError(f"No preset for {percent}% of the labels; choose one of {sorted(PRESETS)}.")
  epochs, base_lrs = PRESETS[percent]
  c = config_base.get_base_config()
  c.mode = "finetune"
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.eval_resize = 256
  c.model.encoder = "resnet50"
  c.model.width_multiplier = 1
  c.eval.label_fraction = percent / 100
  c.eval.label_seed = 0
  c.eval.batch_size = 1024
  c.eval.num_epochs = epochs
  c.eval.base_lrs = base_lrs
  c.eval.val_examples = 2000
  c.eval.train_augment = "crop_flip"
  c.eval.weight_decay = 0.0
  c.eval.log_every_steps = 50
  return c
