"""Every ablation of the BYOL and SimSiam papers, as a configuration: one row of a paper's table each.

  python -m byol_jax.main --config=configs/ablations.py:byol_tau_0.9 --workdir=runs/byol_tau_0.9

Each row is a base recipe and the overrides that make the row's setting, with the linear top-1
(ImageNet, ResNet-50) the paper publishes for it. BYOL rows start from the paper's 300-epoch
ablation recipe (``configs/byol_r50.py:300``: batch 4096, base lr 0.3, weight decay 1e-6,
τ_base 0.99; Grill et al. 2020, Section 5 and Appendix F, three seeds each); SimSiam rows from
its 100-epoch baseline (``configs/simsiam_r50.py``: batch 512; Chen & He 2020, Section 4).
``python configs/ablations.py`` prints the table of all rows (README.md, "Reproducing the
ablations"). Not expressible here: SimSiam's "asymmetric 2x" (twice the pairs per image), its
alternating-optimisation and SwAV rows, BYOL's closed-form predictor and loss normalisations.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

from byol_jax import config_base

HERE = os.path.dirname(os.path.abspath(__file__))
BASES = {
  "byol": ("configs/byol_r50.py:300", os.path.join(HERE, "byol_r50.py"), "300"),
  "simsiam": ("configs/simsiam_r50.py", os.path.join(HERE, "simsiam_r50.py"), "100"),
}


class Row(NamedTuple):
  """One row of a paper's ablation table."""

  paper: str  # "BYOL" or "SimSiam"
  table: str  # where the number is, e.g. "Table 5a"
  setting: str  # the row, in the paper's words
  published: float | None  # linear top-1 (%); None where the paper gives no number
  overrides: Mapping[str, Any] = types.MappingProxyType({})  # fields changed from the base


_NO_TARGET = {"optim.tau_schedule": "constant", "optim.tau_base": 0.0}
# BYOL's "no target network": the online network as the target, the gradient flowing through it
# (the paper's Appendix F.4).
_ONLINE_TARGET = {**_NO_TARGET, "loss.stop_gradient": False}
_NO_PRED = {"model.predictor": False}


def _temperature(alpha: float) -> dict:
  """The override of α, where it is not already the paper's (and the base's) 0.1."""
  return {} if alpha == 0.1 else {"loss.infonce_temperature": alpha}


def _both_views(**fields) -> dict:
  return {f"augment.{v}.{k}": x for v in ("view1", "view2") for k, x in fields.items()}


def _byol_rows() -> dict[str, Row]:
  rows = {"byol": Row("BYOL", "Table 5a", "baseline: τ_base 0.99, predictor, target, β = 0", 72.5)}
  for tau, top1 in ((0.999, 69.8), (0.9, 68.4)):
    rows[f"byol_tau_{tau}"] = Row(
      "BYOL", "Table 5a", f"τ_base {tau}", top1, {"optim.tau_base": tau}
    )
  rows["byol_tau_1"] = Row(
    "BYOL", "Table 5a", "τ = 1: constant random target", 18.8,
    {"optim.tau_schedule": "constant", "optim.tau_base": 1.0},
  )  # fmt: skip
  rows["byol_tau_0"] = Row("BYOL", "Table 5a", "τ = 0: stop gradient of online", 0.3, _NO_TARGET)
  unified = [  # (name, setting, published, overrides): Tables 5b and 19
    ("byol_beta_1", "β = 1, predictor, target", 70.9, {}),
    ("byol_beta_1_no_predictor", "β = 1, no predictor, target", 70.7, _NO_PRED),
    ("simclr", "β = 1, no predictor, no target (SimCLR)", 69.4, {**_NO_PRED, **_ONLINE_TARGET}),
    ("byol_beta_1_no_target", "β = 1, predictor, no target", 69.1, _ONLINE_TARGET),
    ("byol_beta_1_no_predictor_sg", "β = 1, no predictor, target sg(θ)", 69.2,
     {**_NO_PRED, **_NO_TARGET}),
    ("byol_no_target", "β = 0, predictor, no target", 0.3, _ONLINE_TARGET),
    ("byol_no_predictor", "β = 0, no predictor, target", 0.2, _NO_PRED),
    ("byol_no_predictor_no_target", "β = 0, no predictor, no target", 0.1,
     {**_NO_PRED, **_ONLINE_TARGET}),
    ("byol_no_predictor_sg", "β = 0, no predictor, target sg(θ)", 0.1, {**_NO_PRED, **_NO_TARGET}),
  ]  # fmt: skip
  for name, setting, top1, overrides in unified:
    weight = {"loss.infonce_weight": 1.0} if setting.startswith("β = 1") else {}
    table = "Table 19" if "sg(θ)" in setting else "Table 5b"
    rows[name] = Row("BYOL", table, setting, top1, {**overrides, **weight})
  sweep = {  # Table 18: β -> top-1 at α = 0.01, 0.1, 0.3, 1, 3, 10
    0.1: (72.2, 72.4, 72.7, 72.6, 72.5, 72.5),
    0.5: (70.9, 72.0, 72.7, 72.7, 72.6, 72.5),
    1.0: (53.9, 70.9, 72.7, 72.7, 72.6, 72.6),
  }
  for beta, tops in sweep.items():
    for alpha, top1 in zip((0.01, 0.1, 0.3, 1.0, 3.0, 10.0), tops):
      rows[f"byol_beta_{beta:g}_alpha_{alpha:g}"] = Row(
        "BYOL", "Table 18", f"β = {beta:g}, α = {alpha:g}", top1,
        {"loss.infonce_weight": beta, **_temperature(alpha)},
      )  # fmt: skip
  for batch, top1 in (
    (2048, 72.4),
    (1024, 72.2),
    (512, 72.2),
    (256, 71.8),
    (128, 69.6),
    (64, 59.7),
  ):
    rows[f"byol_batch_{batch}"] = Row(
      "BYOL", "Table 16", f"batch {batch}", top1, {"batch_size": batch}
    )
  rows.update(_byol_augmentation_rows())
  depths = {1: (61.9, 65.0, 65.7), 2: (71.5, 72.5, 71.4), 3: (71.4, 72.1, 72.1)}
  for proj, tops in depths.items():
    for pred, top1 in zip((1, 2, 3), tops):
      layers = {"model.projector_layers": proj, "model.predictor_layers": pred}
      if proj == pred == 2:
        continue  # the baseline
      rows[f"byol_projector_{proj}_predictor_{pred}"] = Row(
        "BYOL", "Table 14", f"projector depth {proj}, predictor depth {pred}", top1,
        {k: v for k, v in layers.items() if v != 2},  # 2: the base's depth
      )  # fmt: skip
  for dim, top1 in ((16, 69.9), (32, 71.3), (64, 72.2), (128, 72.5), (512, 72.6)):
    rows[f"byol_projection_dim_{dim}"] = Row(
      "BYOL", "Table 14", f"projector output {dim}", top1, {"model.projector_output": dim}
    )
  for lr, top1 in ((0.01, 34.8), (0.1, 65.0), (0.2, 71.7), (0.4, 72.3), (0.5, 71.5), (1.0, 69.4)):
    rows[f"byol_lr_{lr:g}"] = Row(
      "BYOL", "Table 15", f"base lr {lr:g}", top1, {"optim.base_lr": lr}
    )
  for wd, top1 in ((1e-7, 72.1), (5e-7, 72.6), (5e-6, 71.0), (1e-5, 69.6)):
    rows[f"byol_wd_{wd:g}"] = Row(
      "BYOL", "Table 15", f"weight decay {wd:g}", top1, {"optim.weight_decay": wd}
    )
  rows["byol_tau_0_frozen_predictor"] = Row(
    "BYOL", "Table 21", "τ = 0, predictor lr x0 (frozen)", 0.01,
    {**_NO_TARGET, "optim.freeze_predictor": True},
  )  # fmt: skip
  for factor, top1 in ((2.0, 62.8), (10.0, 66.6), (20.0, 66.3)):
    rows[f"byol_tau_0_predictor_lr_x{factor:g}"] = Row(
      "BYOL", "Table 21", f"τ = 0, predictor lr x{factor:g}", top1,
      {**_NO_TARGET, "optim.predictor_lr_multiplier": factor},
    )  # fmt: skip
  return rows


def _byol_augmentation_rows() -> dict[str, Row]:
  """Table 17: augmentations removed from the paper's T and T'."""
  no_colour = _both_views(jitter_prob=0.0, gray_prob=0.0)
  no_blur_sol = {**_both_views(blur_prob=0.0), "augment.view2.solarize_prob": 0.0}
  cases = [
    ("no_flip", "remove flip", 71.9, _both_views(flip_prob=0.0)),
    ("no_blur", "remove blur", 71.2, _both_views(blur_prob=0.0)),
    ("no_colour", "remove colour (jitter and grayscale)", 63.4, no_colour),
    ("no_jitter", "remove colour jitter", 71.8, _both_views(jitter_prob=0.0)),
    ("no_grayscale", "remove grayscale", 70.3, _both_views(gray_prob=0.0)),
    ("no_blur_t2", "remove blur in T'", 72.4, {"augment.view2.blur_prob": 0.0}),
    ("no_solarize_t2", "remove solarize in T'", 72.3, {"augment.view2.solarize_prob": 0.0}),
    ("no_blur_solarize_t2", "remove blur and solarize in T'", 72.2,
     {"augment.view2.blur_prob": 0.0, "augment.view2.solarize_prob": 0.0}),
    ("symmetric", "symmetric blur 0.5 and solarize 0.2", 72.5,
     {**_both_views(blur_prob=0.5), "augment.view1.solarize_prob": 0.2}),
    ("crop_only", "crop only", 59.4, {**no_colour, **no_blur_sol, **_both_views(flip_prob=0.0)}),
    ("crop_flip", "crop and flip only", 60.1, {**no_colour, **no_blur_sol}),
    ("crop_colour", "crop and colour only", 70.7, {**no_blur_sol, **_both_views(flip_prob=0.0)}),
    ("crop_blur", "crop and blur only", 61.1,
     {**no_colour, **_both_views(flip_prob=0.0), "augment.view2.solarize_prob": 0.0}),
  ]  # fmt: skip
  return {f"byol_aug_{n}": Row("BYOL", "Table 17", s, t, o) for n, s, t, o in cases}


def _simsiam_rows() -> dict[str, Row]:
  rows = {
    "simsiam": Row("SimSiam", "Table 1c", "baseline: predictor lr not decayed", 68.1),
    "simsiam_no_stop_gradient": Row(
      "SimSiam", "Figure 2", "no stop-gradient", 0.1, {"loss.stop_gradient": False}
    ),
    "simsiam_no_predictor": Row("SimSiam", "Table 1a", "no predictor", 0.1, _NO_PRED),
    "simsiam_frozen_predictor": Row(
      "SimSiam", "Table 1b", "predictor fixed at random init", 1.5,
      {"optim.freeze_predictor": True},
    ),
    "simsiam_predictor_lr_decay": Row(
      "SimSiam", "Table 1", "predictor lr with cosine decay", 67.7,
      {"optim.predictor_lr_decay": True},
    ),
    "simsiam_cross_entropy": Row(
      "SimSiam", "Section 4.5", "cross-entropy similarity", 63.2,
      {"loss.similarity": "cross_entropy"},
    ),
    "simsiam_asymmetric": Row(
      "SimSiam", "Section 4.6", "asymmetric loss", 64.8, {"loss.symmetric": False}
    ),
  }  # fmt: skip
  for batch, top1 in (
    (64, 66.1),
    (128, 67.3),
    (256, 68.1),
    (1024, 68.0),
    (2048, 67.9),
    (4096, 64.0),
  ):
    warmup = {"optim.warmup_epochs": 10.0} if batch >= 1024 else {}
    rows[f"simsiam_batch_{batch}"] = Row(
      "SimSiam", "Table 2", f"batch {batch}", top1, {"batch_size": batch, **warmup}
    )
  bn = [
    ("none", "no BatchNorm in the heads (10 warm-up epochs)", 34.6,
     {"model.head_batchnorm": "none", "optim.warmup_epochs": 10.0}),
    ("hidden", "BatchNorm on hidden layers only", 67.4, {"model.head_batchnorm": "hidden"}),
    ("all", "BatchNorm on every output, predictor's too (unstable)", None,
     {"model.head_batchnorm": "all"}),
  ]  # fmt: skip
  for name, setting, top1, overrides in bn:
    rows[f"simsiam_bn_{name}"] = Row("SimSiam", "Table 3", setting, top1, overrides)
  for dim, top1 in ((256, 65.3), (512, 67.2), (1024, 67.5)):
    rows[f"simsiam_dim_{dim}"] = Row(
      "SimSiam", "Section 4.4", f"output dimension {dim}, predictor hidden {dim // 4}", top1,
      {"model.projector_output": dim, "model.predictor_hidden": dim // 4},
    )  # fmt: skip
  return rows


ROWS: dict[str, Row] = {**_byol_rows(), **_simsiam_rows()}
PRESETS = ROWS  # every row is a preset: ``configs/ablations.py:<row>``


def get_config(name: str = "byol"):
  if name not in ROWS:
    raise ValueError(f"No ablation row {name!r}; choose one of {sorted(ROWS)}.")
  row = ROWS[name]
  _, path, arg = BASES[row.paper.lower()]
  c = config_base.load_config_module(path).get_config(arg)
  return config_base.set_fields(c, row.overrides)


def _flags(row: Row) -> str:
  return (
    " ".join(config_base.flag(field, value) for field, value in row.overrides.items()) or "(none)"
  )


def markdown_table() -> str:
  """The table of README.md's "Reproducing the ablations"."""
  lines = [
    "| paper | table | setting | published top-1 | `--config=configs/ablations.py:` | overrides of the base |",
    "|---|---|---|---|---|---|",
  ]
  for name, row in ROWS.items():
    top1 = "-" if row.published is None else f"{row.published:g}"
    lines.append(
      f"| {row.paper} | {row.table} | {row.setting} | {top1} | `{name}` | {_flags(row)} |"
    )
  return "\n".join(lines)


if __name__ == "__main__":
  print(markdown_table())
