"""Data for BYOL: image sources, the paper's augmentations and the batch pipelines.

Nothing here knows about models: the trainer gets numpy batches from :func:`pretrain_batches` /
:func:`eval_batches` and, when the host skips the colour ops, finishes the augmentation on the
device with :func:`colour_augment`.

The names below load their submodule on first use, so that importing ``params`` or
``device_augment`` (as the training step does) does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
  "params": "AugmentParams PAPER_T PAPER_T_PRIME PRESETS get_preset",
  "augment": "augment_view centre_crop colour_augment_image random_resized_crop sample_crop_box",
  "device_augment": "colour_augment normalize to_float",
  "pipeline": "augment_batch_numpy eval_batches local_batch_size num_eval_batches "
  "pretrain_batches pretrain_dataset train_batches",
  "sources": "ArraySource DataSource FileSource SubsetSource TfdsSource array_source "
  "folder_source make_source stratified_holdout subset_source synthetic_images "
  "synthetic_source tfds_source",
  "subsets": "EncodedSource choose_label_subset materialize_tfds_subset source_labels",
}
_HOME = {name: module for module, names in _SUBMODULE.items() for name in names.split()}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
  if name not in _HOME:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
