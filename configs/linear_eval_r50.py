"""Linear evaluation of a BYOL ResNet-50 on ImageNet (TFDS ``imagenet2012``): the paper's protocol.

``--config.checkpoint=DIR`` names the pretraining workdir (or one checkpoint step folder). The
frozen encoder (BatchNorm in inference mode) feeds a linear classifier on its 2048-d output:
SGD with Nesterov momentum 0.9, batch 1024, 80 epochs, cosine decay, no weight decay, random
resized crop 224 + flip; test views are resized to 256 and centre-cropped to 224. The base
learning rates below train side by side on the same features (a log-spaced grid over two
decades); the best on 10,000 training images held out for validation is reported on the
validation split (50,000 images).
"""

from byol_jax import config_base


def get_config():
  c = config_base.get_base_config()
  c.mode = "linear_eval"
  c.data.source = "tfds"
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 224
  c.data.eval_resize = 256
  # The architecture is checked against the checkpoint's; "checkpoint" would accept any.
  c.model.encoder = "resnet50"
  c.model.width_multiplier = 1
  c.eval.batch_size = 1024
  c.eval.num_epochs = 80.0
  # lr = base_lr * 1024 / 256; two decades around the paper's few values (a warning says when
  # the best is at an end of the grid).
  c.eval.base_lrs = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
  c.eval.val_examples = 10_000
  c.eval.train_augment = "crop_flip"
  c.eval.weight_decay = 0.0
  c.eval.log_every_steps = 500
  return c
