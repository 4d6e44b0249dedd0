"""Offline default: a tiny ResNet on a procedurally drawn, labelled synthetic dataset.

Needs no download and finishes in a few minutes on a laptop CPU; it exercises the whole paper
recipe (LARS, warm-up + cosine, annealed EMA, both augmentation distributions) at toy scale.
"""

from byol_jax import config_base


def get_config():
  c = config_base.get_base_config()
  c.data.source = "synthetic"
  c.data.synthetic_examples = 4096
  c.data.synthetic_classes = 10
  c.data.image_size = 32
  c.data.eval_resize = 32
  # Blur on 32x32 images mostly destroys them; small-image recipes drop it.
  c.augment.view1.blur_prob = 0.0
  c.augment.view2.blur_prob = 0.0
  c.model.encoder = "tiny"
  c.model.small_image_stem = True
  c.model.projector_hidden = 512
  c.model.projector_output = 128
  c.model.predictor_hidden = 512
  c.batch_size = 256
  c.num_epochs = 10
  c.optim.base_lr = 1.0
  c.optim.weight_decay = 1e-5
  c.optim.warmup_epochs = 1
  c.optim.tau_base = 0.99
  c.log_every_steps = 20
  c.checkpoint_every_steps = 80
  return c
