"""BYOL ResNet-50 on ImageNet (TFDS ``imagenet2012``): the paper's recipe.

``--config=configs/byol_r50.py`` is the 1000-epoch run; ``configs/byol_r50.py:300`` (or ``:100``,
``:40``) selects the paper's shorter presets (base lr, weight decay and τ_base change with the
length). Batch 4096 is the global batch over all devices and hosts.
"""

from byol_jax import config_base

# epochs -> (base lr, weight decay, tau_base), from the paper's appendix.
PRESETS = {
  1000: (0.2, 1.5e-6, 0.996),
  300: (0.3, 1e-6, 0.99),
  100: (0.45, 1e-6, 0.99),
  40: (0.45, 1e-6, 0.97),
}


def get_config(epochs: str = "1000"):
  epochs = int(epochs)
  if epochs not in PRESETS:
    raise ValueError(f"No paper preset for {epochs} epochs; choose one of {sorted(PRESETS)}.")
  base_lr, weight_decay, tau_base = PRESETS[epochs]
  c = config_base.get_base_config()
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.eval_resize = 256
  # Colour jitter, grayscale, blur and solarisation run on the accelerator, as in the original.
  c.data.host_colour_ops = False
  c.model.encoder = "resnet50"
  c.model.width_multiplier = 1
  c.batch_size = 4096
  c.num_epochs = float(epochs)
  c.optim.base_lr = base_lr
  c.optim.weight_decay = weight_decay
  c.optim.tau_base = tau_base
  c.optim.warmup_epochs = 10.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c
