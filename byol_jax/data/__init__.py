"""Data for BYOL: image sources, the paper's augmentations and the batch pipelines.

Nothing here knows about models: the trainer gets numpy batches from :func:`pretrain_batches` /
:func:`eval_batches` and, when the host skips the colour ops, finishes the augmentation on the
device with :func:`colour_augment`.
"""

from byol_jax.data.augment import (
  PAPER_T,
  PAPER_T_PRIME,
  PRESETS,
  AugmentParams,
  augment_view,
  centre_crop,
  colour_augment_image,
  get_preset,
  random_resized_crop,
  sample_crop_box,
)
from byol_jax.data.device_augment import colour_augment, normalize, to_float
from byol_jax.data.pipeline import (
  augment_batch_numpy,
  eval_batches,
  local_batch_size,
  num_eval_batches,
  pretrain_batches,
  pretrain_dataset,
  train_batches,
)
from byol_jax.data.sources import (
  ArraySource,
  DataSource,
  FileSource,
  SubsetSource,
  TfdsSource,
  array_source,
  folder_source,
  make_source,
  stratified_holdout,
  subset_source,
  synthetic_images,
  synthetic_source,
  tfds_source,
)

__all__ = [
  "PAPER_T",
  "PAPER_T_PRIME",
  "PRESETS",
  "ArraySource",
  "AugmentParams",
  "DataSource",
  "FileSource",
  "SubsetSource",
  "TfdsSource",
  "array_source",
  "augment_batch_numpy",
  "augment_view",
  "centre_crop",
  "colour_augment",
  "colour_augment_image",
  "eval_batches",
  "folder_source",
  "get_preset",
  "local_batch_size",
  "make_source",
  "normalize",
  "num_eval_batches",
  "pretrain_batches",
  "pretrain_dataset",
  "random_resized_crop",
  "sample_crop_box",
  "stratified_holdout",
  "subset_source",
  "synthetic_images",
  "synthetic_source",
  "tfds_source",
  "to_float",
  "train_batches",
]
