"""Parameters of the paper's augmentations (Table 6) and the named ablation presets.

Plain Python, without TensorFlow or JAX, so that both implementations of the augmentation
(``augment`` on the host in TensorFlow, ``device_augment`` on the accelerator in JAX) and the
trainer can share them; the training step never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from byol_jax.errors import UserError

# The random resized crop's box: "original" draws one area and one aspect, clamps the box to the
# image and places it uniformly (the original BYOL code); "rejection" redraws boxes that do not fit
# (up to 10 tries, then a centre crop: the Inception / torchvision scheme).
CROP_SCHEMES = ("original", "rejection")

# Luma weights of the original code (ITU-R 601-2, as in tf.image.rgb_to_grayscale).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
SOLARIZE_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Parameters of one view's augmentation; the defaults are the paper's T (view 1)."""

  crop_area_min: float = 0.08
  crop_area_max: float = 1.0
  crop_aspect_min: float = 3 / 4
  crop_aspect_max: float = 4 / 3
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.2
  hue: float = 0.1
  gray_prob: float = 0.2
  blur_prob: float = 1.0
  blur_sigma_min: float = 0.1
  blur_sigma_max: float = 2.0
  blur_kernel_fraction: float = 0.1
  solarize_prob: float = 0.0
  # How the random resized crop draws its box; see ``augment.sample_crop_box``.
  crop_scheme: str = "original"

  def __post_init__(self):
    if self.crop_scheme not in CROP_SCHEMES:
      raise UserError(
        f"Unknown crop scheme {self.crop_scheme!r}: use one of {CROP_SCHEMES} (crop_scheme)."
      )

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> AugmentParams:
    """Builds params from a dict or ConfigDict with exactly this class's field names."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = dict(values.items())
    unknown = sorted(set(given) - names)
    if unknown:
      raise UserError(f"Unknown augmentation parameter(s) {unknown}: use only {sorted(names)}.")
    types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
    return cls(**{k: types[k](v) for k, v in given.items()})

  def replace(self, **changes: float | str) -> AugmentParams:
    """Returns a copy with some fields changed."""
    return dataclasses.replace(self, **changes)


PAPER_T = AugmentParams()
PAPER_T_PRIME = AugmentParams(blur_prob=0.1, solarize_prob=0.2)

_NO_COLOUR = dict(jitter_prob=0.0, gray_prob=0.0)
_CROP_ONLY = dict(flip_prob=0.0, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0)

# Augmentation ablations (dropping transformations, as in the paper, and the crop drawn by
# rejection instead of the original's clamping): name -> (view 1, view 2).
PRESETS: dict[str, tuple[AugmentParams, AugmentParams]] = {
  "paper": (PAPER_T, PAPER_T_PRIME),
  "symmetric": (PAPER_T, PAPER_T),
  "crop_only": (PAPER_T.replace(**_CROP_ONLY), PAPER_T_PRIME.replace(**_CROP_ONLY)),
  "crop_flip": (
    PAPER_T.replace(**dict(_CROP_ONLY, flip_prob=0.5)),
    PAPER_T_PRIME.replace(**dict(_CROP_ONLY, flip_prob=0.5)),
  ),
  "crop_flip_colour": (
    PAPER_T.replace(blur_prob=0.0, solarize_prob=0.0),
    PAPER_T_PRIME.replace(blur_prob=0.0, solarize_prob=0.0),
  ),
  "no_colour": (PAPER_T.replace(**_NO_COLOUR), PAPER_T_PRIME.replace(**_NO_COLOUR)),
  "no_jitter": (PAPER_T.replace(jitter_prob=0.0), PAPER_T_PRIME.replace(jitter_prob=0.0)),
  "no_grayscale": (PAPER_T.replace(gray_prob=0.0), PAPER_T_PRIME.replace(gray_prob=0.0)),
  "no_blur": (PAPER_T.replace(blur_prob=0.0), PAPER_T_PRIME.replace(blur_prob=0.0)),
  "no_solarize": (PAPER_T, PAPER_T_PRIME.replace(solarize_prob=0.0)),
  "rejection_crop": (
    PAPER_T.replace(crop_scheme="rejection"),
    PAPER_T_PRIME.replace(crop_scheme="rejection"),
  ),
}


def get_preset(name: str) -> tuple[AugmentParams, AugmentParams]:
  """Returns the (view 1, view 2) params of a named preset."""
  if name not in PRESETS:
    raise UserError(f"Unknown augmentation preset {name!r}: choose one of {sorted(PRESETS)}.")
  return PRESETS[name]


def blur_radius(side: int, kernel_fraction: float) -> int:
  """Radius of the blur kernel (kernel size 2r + 1) for an image side, as in the original."""
  return int(side * kernel_fraction / 2)
