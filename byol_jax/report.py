"""Pictures of a run: its curves from ``metrics.jsonl`` and a 2-D map of its embeddings.

``python -m byol_jax.main --config.mode=report --config.checkpoint=RUN --workdir=OUT`` writes to
OUT one PNG per group of metrics (:data:`PANELS`) against the step, from ``RUN/metrics.jsonl``,
and, where RUN holds an ``embeddings.npz`` (``mode=embed``) or is one, a map of the embeddings
coloured by label (:func:`embedding_map`). matplotlib (and scikit-learn for t-SNE) come with
``pip install -e ".[report]"``. ``--config.checkpoint=RUN_A,RUN_B,...`` draws several runs
side by side instead (:func:`compare_curves`: one PNG per metric, a line per run), e.g. the
ablations of one recipe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from byol_jax.errors import UserError

# file name -> (title, [(metric, label)], y-axis label); a panel is drawn when any metric is there.
PANELS: dict[str, tuple[str, list[tuple[str, str]], str]] = {
  "loss": ("BYOL loss", [("loss", "loss")], "loss"),
  "schedules": (
    "learning rate and target decay",
    [("lr", "learning rate"), ("tau", "τ (target decay)")],
    "value",
  ),
  "accuracy": (
    "evaluation during training",
    [
      ("knn_top1", "kNN top-1 (hold-out)"),
      ("probe_top1", "online probe top-1 (hold-out)"),
      ("probe_train_top1", "online probe top-1 (training batch)"),
    ],
    "top-1",
  ),
  "collapse": (
    "collapse signals",
    [("projection_std", "projection_std"), ("effective_rank", "effective rank (RankMe)")],
    "value",
  ),
  "throughput": ("throughput", [("images_per_s", "images/s")], "images/s"),
}
# Where metrics of very different scales share a panel, each gets its own y-axis.
_TWIN_AXES = ("schedules", "collapse")
# Metrics drawn run against run by compare_curves; on a log scale those that span decades
# (a collapsed run's projection_std is ~1e-4 where a healthy one's is ~0.1).
COMPARED = ("loss", "projection_std", "effective_rank", "knn_top1", "probe_top1", "images_per_s")
_LOG_SCALE = ("loss", "projection_std")


def _pyplot():
  try:
    import matplotlib
  except ImportError as e:
    raise UserError(
      'Reports need matplotlib: pip install -e ".[report]" (or pip install matplotlib).'
    ) from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def read_metrics(path: str) -> list[dict]:
  """The records of a ``metrics.jsonl`` (one JSON object per line); UserError if there are none."""
  if not os.path.isfile(path):
    raise UserError(f"No metrics at {path}: pass a pretraining workdir as --config.checkpoint.")
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  if not records:
    raise UserError(f"{path} is empty: the run has not logged a step yet.")
  return records


def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
  points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
  return [p[0] for p in points], [float(p[1]) for p in points]


def plot_curves(records: Sequence[dict], out_dir: str) -> list[str]:
  """One PNG per panel of :data:`PANELS` that has data; returns their paths."""
  plt = _pyplot()
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, (title, metrics, ylabel) in PANELS.items():
    present = [(key, label) for key, label in metrics if _series(records, key)[0]]
    if not present:
      continue
    fig, ax = plt.subplots(figsize=(6, 3.6))
    axes = [ax, ax.twinx()] if name in _TWIN_AXES and len(present) == 2 else [ax]
    for i, (key, label) in enumerate(present):
      target = axes[min(i, len(axes) - 1)]
      _plot(target, i, label, *_series(records, key))
      target.set_ylabel(label if len(axes) > 1 else ylabel)
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], loc="best", fontsize=8)
    ax.set(xlabel="step", title=title)
    written.append(_save(plt, fig, ax, os.path.join(out_dir, f"{name}.png")))
  return written


def _plot(ax, i: int, label: str, steps: list[int], values: list[float]) -> None:
  marker = "o" if len(steps) < 30 else None  # sparse series (evaluations) as points
  ax.plot(steps, values, label=label, color=f"C{i}", marker=marker, markersize=3)


def _save(plt, fig, ax, path: str) -> str:
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def compare_curves(runs: dict[str, Sequence[dict]], out_dir: str) -> list[str]:
  """``compare_<metric>.png`` for each metric of :data:`COMPARED` that any run logged, one line
  per run (``runs``: label -> its metrics records); returns their paths."""
  plt = _pyplot()
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for key in COMPARED:
    series = {label: _series(records, key) for label, records in runs.items()}
    if not any(steps for steps, _ in series.values()):
      continue
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (label, (steps, values)) in enumerate(series.items()):
      _plot(ax, i, label, steps, values)
    if key in _LOG_SCALE and all(v > 0 for _, values in series.values() for v in values):
      ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=key, title=key)
    ax.legend(loc="best", fontsize=8)
    written.append(_save(plt, fig, ax, os.path.join(out_dir, f"compare_{key}.png")))
  return written


def _run_label(path: str) -> str:
  return os.path.basename(os.path.normpath(path))


def _available(module: str) -> bool:
  try:
    __import__(module)
  except ImportError:
    return False
  return True


def project_2d(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
  """(points [N, 2], the method used): UMAP, t-SNE (scikit-learn) or PCA (numpy's SVD).

  ``auto`` takes the first of UMAP and t-SNE that is installed, else PCA, which needs nothing.
  """
  if method == "auto":
    method = next(
      (m for m, mod in (("umap", "umap"), ("tsne", "sklearn")) if _available(mod)), "pca"
    )
  x = np.asarray(features, np.float64)
  x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
  if method == "umap":
    import umap

    return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
  if method == "tsne":
    try:
      from sklearn.manifold import TSNE
    except ImportError as e:
      raise UserError(
        't-SNE needs scikit-learn: pip install -e ".[report]", or --config.eval.map_method=pca.'
      ) from e
    # t-SNE's default perplexity (30) needs more than 30 points; fewer get a smaller one.
    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return tsne.fit_transform(x), "t-SNE"
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:2].T, "PCA"


def embedding_map(
  npz_path: str, out_path: str, method: str = "auto", max_points: int = 5000, seed: int = 0
) -> str:
  """A 2-D map of the features of an ``embed`` output, coloured by label; returns its path.

  At most ``max_points`` rows (a seeded random subset) are mapped: t-SNE's time grows with N.
  """
  plt = _pyplot()
  data = np.load(npz_path)
  features, labels = data["features"], data["labels"]
  if len(features) < 3:
    raise UserError(f"{npz_path} holds {len(features)} embeddings: a map needs at least 3.")
  if len(features) > max_points:
    keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
    features, labels = features[keep], labels[keep]
  points, used = project_2d(features, method, seed)
  fig, ax = plt.subplots(figsize=(6, 6))
  scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
  if len(np.unique(labels)) <= 20:
    ax.legend(*scatter.legend_elements(), title="label", fontsize=7, loc="best", markerscale=0.8)
  ax.set(
    title=f"{used} of {len(features)} embeddings ({features.shape[1]}-d)", xticks=[], yticks=[]
  )
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def report(run: str, out_dir: str, map_method: str = "auto", max_points: int = 5000) -> list[str]:
  """Every picture of ``run`` (a pretraining workdir, an evaluation workdir holding an
  ``embeddings.npz``, or an ``.npz`` file) written to ``out_dir``; returns their paths. Several
  pretraining workdirs separated by commas: their curves side by side (:func:`compare_curves`)."""
  if "," in run:
    paths = [p for p in run.split(",") if p]
    runs = {_run_label(p): read_metrics(os.path.join(p, "metrics.jsonl")) for p in paths}
    if len(runs) < len(paths):
      raise UserError(f"Runs to compare must have distinct folder names: {run}")
    return compare_curves(runs, out_dir)
  if run.endswith(".npz"):
    if not os.path.isfile(run):
      raise UserError(f"No embeddings at {run}: write them with --config.mode=embed.")
    return [embedding_map(run, os.path.join(out_dir, "embeddings.png"), map_method, max_points)]
  metrics, npz = os.path.join(run, "metrics.jsonl"), os.path.join(run, "embeddings.npz")
  written = []
  if os.path.isfile(metrics) or not os.path.isfile(npz):
    written += plot_curves(read_metrics(metrics), out_dir)
  if os.path.isfile(npz):
    written.append(
      embedding_map(npz, os.path.join(out_dir, "embeddings.png"), map_method, max_points)
    )
  return written
