"""Linear evaluation on CIFAR-10 (TFDS ``cifar10``) of any BYOL checkpoint trained at 32x32.

The architecture comes from the checkpoint. ``--config.data.source=folder
--config.data.path=DIR --config.data.holdout=5000`` evaluates on an image folder instead (the
held-out images are the test set). Protocol as in the paper, scaled to CIFAR: frozen encoder,
SGD + Nesterov 0.9, batch 512, 100 epochs, cosine decay, crop + flip views, the base lr picked
on 5,000 training images.
"""

from byol_jax import config_base


def get_config():
  c = config_base.get_base_config()
  c.mode = "linear_eval"
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.image_size = 32
  c.data.eval_resize = 32
  c.model.encoder = "checkpoint"
  c.eval.batch_size = 512
  c.eval.num_epochs = 100.0
  c.eval.base_lrs = (0.1, 0.4, 1.6)
  c.eval.val_examples = 5000
  c.eval.train_augment = "crop_flip"
  c.eval.log_every_steps = 200
  return c
