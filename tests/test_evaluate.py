"""Evaluation from checkpoints, end to end on tiny shapes: pretraining with the kNN monitor and the
online probe, linear evaluation, fine-tuning, embeddings, ``load_encoder`` and the user errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tiny
from PIL import Image
from tiny import REPO, monitored_config, read_metrics, write_folder

import byol_jax
from byol_jax import (
  checkpointing,
  config_base,
  evaluate,
  models,
  monitor,
  parallel,
  probes,
  run_data,
  train,
)
from byol_jax.data import device_augment, pipeline, sources, subsets
from byol_jax.errors import UserError


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  train.pretrain(monitored_config(), workdir)
  return workdir


def test_pretraining_logs_knn_and_online_probe(pretrained):
  records = read_metrics(pretrained)
  knn = [r for r in records if "knn_top1" in r]
  assert [r["step"] for r in knn] == [2, 4]
  assert all(0.0 <= r["knn_top1"] <= 1.0 and 0.0 <= r["probe_top1"] <= 1.0 for r in knn)
  logged = [r for r in records if "loss" in r]
  assert all("probe_train_top1" in r and np.isfinite(r["probe_loss"]) for r in logged)


def test_knn_monitor_can_use_smaller_views_than_the_evaluation():
  config = monitored_config(**{"data.eval_image_size": 24, "data.eval_resize": 24})
  assert monitor.from_config(config, run_data.make_source(config, "train")).image_size == 24
  config.eval.knn_image_size = 8
  small = monitor.from_config(config, run_data.make_source(config, "train"))
  assert small.image_size == 8
  # Views are prepared once, at the monitor's size.
  assert {b["image"].shape[1:] for b in small.views("eval")} == {(8, 8, 3)}


def test_load_encoder_matches_the_training_network_and_the_knn_monitor(pretrained):
  config = monitored_config()
  # The training code's view of the checkpoint: the full state, the BYOL network, eval views.
  optimizer = train.byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  ckpt = checkpointing.Checkpointer(os.path.join(pretrained, "checkpoints"))
  state = ckpt.restore(train.initial_state(config, optimizer)._asdict())
  ckpt.close()
  source = run_data.make_source(config, "test")
  batch = next(pipeline.eval_batches(source, batch_size=64, image_size=16, resize_size=16))
  net = train.build_network(config, axis_name=None)
  out, _ = net.apply(
    state["online_params"],
    state["online_state"],
    device_augment.normalize(batch["image"]),
    is_training=False,
    with_predictor=False,
  )
  enc = byol_jax.load_encoder(pretrained, batch_size=24)  # 64 images: the last batch is padded
  assert (enc.dim, enc.step, enc.spec) == (64, 4, models.EncoderSpec("tiny", 1, True))
  features = enc(source.images)
  np.testing.assert_allclose(features, np.asarray(out["embedding"]), rtol=1e-5, atol=1e-5)
  # Float images in [0, 1] give the same features; a step folder works as the path too.
  step_folder = byol_jax.load_encoder(os.path.join(pretrained, "checkpoints", "4"))
  np.testing.assert_allclose(step_folder(source.images / 255.0), features, rtol=1e-4, atol=1e-4)
  # The last kNN figure of the run, recomputed from load_encoder features.
  train_source = run_data.make_source(config, "train")
  keep = sources.stratified_holdout(train_source.labels, 48, config.data.holdout_seed + 1)[1]
  acc = probes.knn_accuracy(
    enc(train_source.images[keep]), train_source.labels[keep], features, source.labels, 4, k=20
  )
  assert acc["top1"] == pytest.approx(read_metrics(pretrained)[-1]["knn_top1"], abs=1 / 64 + 1e-6)


def test_linear_eval_sweeps_learning_rates_and_reports_top1(pretrained, tmp_path, capsys):
  config = monitored_config(
    mode="linear_eval",
    checkpoint=pretrained,
    **{"model.encoder": "checkpoint", "eval.base_lrs": (0.1, 1.0), "eval.val_examples": 16},
  )
  results = evaluate.linear_eval(config, str(tmp_path))
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
  assert results["base_lr"] in (0.1, 1.0)
  assert set(results["val_top1_per_lr"]) == {"0.1", "1.0"}
  assert results["test_examples"] == 64
  out = capsys.readouterr().out
  assert "Linear evaluation: top-1" in out
  # Two lrs: the best is always at an end of the grid, and said so, in the JSON too.
  assert f"is the {'smallest' if results['base_lr'] == 0.1 else 'largest'} of" in out
  assert "warning: the chosen base lr" in out
  assert read_metrics(str(tmp_path))[-1]["top1"] == results["top1"]
  with open(tmp_path / "linear_eval.json") as f:
    written = json.load(f)
  assert (written["top1"], written["lr_warning"]) == (results["top1"], results["lr_warning"])


def _numpy_linear_sgd(features, labels, num_classes, peak_lr, batch_size, steps, seed):
  """The paper's linear classifier trained in numpy: softmax cross-entropy, SGD with Nesterov
  momentum 0.9 (m = g + 0.9 m; step g + 0.9 m), cosine decay from ``peak_lr`` to 0 over
  ``steps``, on batches of a fresh ``np.random.default_rng(seed)`` permutation per epoch."""
  rng = np.random.default_rng(seed)
  order = np.zeros([0], np.int64)
  w = np.zeros((features.shape[1], num_classes))
  b = np.zeros(num_classes)
  mw, mb = np.zeros_like(w), np.zeros_like(b)
  for t in range(steps):
    while len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(labels))])
    idx, order = order[:batch_size], order[batch_size:]
    x, y = features[idx].astype(np.float64), labels[idx]
    logits = x @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(batch_size), y] -= 1.0
    gw, gb = x.T @ p / batch_size, p.mean(axis=0)
    mw, mb = gw + 0.9 * mw, gb + 0.9 * mb
    lr = peak_lr * 0.5 * (1 + np.cos(np.pi * t / steps))
    w, b = w - lr * (gw + 0.9 * mw), b - lr * (gb + 0.9 * mb)
  return w, b


def _numpy_standardize(train, *others):
  """``train`` and ``others`` shifted and scaled by ``train``'s per-dimension mean and std."""
  mean, std = train.mean(axis=0), np.sqrt(train.var(axis=0) + 1e-6)
  return [(x - mean) / std for x in (train, *others)]


def test_linear_step_on_standardised_features_matches_numpy():
  rng = np.random.default_rng(1)
  # Dimensions of very different offsets and scales: standardisation is what makes one lr fit.
  features = rng.normal(size=(48, 5)) * [1.0, 100.0, 0.01, 5.0, 1.0] + [0.0, 50.0, -3.0, 0, 7.0]
  features = features.astype(np.float32)
  labels = rng.integers(0, 3, 48)
  lrs, batch, steps = np.array([0.05, 0.5]), 16, 7
  optimizer = evaluate._sgd(steps, 0.0)
  stats = evaluate.feature_standardization(features)
  step = jax.pmap(evaluate.make_linear_step(lrs, optimizer, stats), axis_name=parallel.AXIS)
  clf = dict(w=np.zeros((2, 5, 3), np.float32), b=np.zeros((2, 3), np.float32))
  carry = parallel.replicate((clf, optimizer.init(clf)))
  batches = evaluate._feature_batches(features, labels, batch, seed=3)
  for _ in range(steps):
    x, y = next(batches)
    *carry, _ = step(*carry, parallel.shard(x), parallel.shard(y))
  clf = parallel.unreplicate(carry[0])
  (standardized,) = _numpy_standardize(features.astype(np.float64))
  for i, lr in enumerate(lrs):
    w, b = _numpy_linear_sgd(standardized, labels, 3, lr, batch, steps, seed=3)
    np.testing.assert_allclose(clf["w"][i], w, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(clf["b"][i], b, rtol=2e-4, atol=2e-5)


def test_linear_eval_on_standardised_features_matches_numpy_on_load_encoder_features(
  pretrained, tmp_path, capsys
):
  """Through ``linear_eval`` (features encoded once, the checkpoint's own view) against the
  numpy classifier on ``load_encoder``'s features."""
  steps, batch, base_lr = 12, 16, 2.0
  config = monitored_config(
    mode="linear_eval",
    checkpoint=pretrained,
    **{
      "model.encoder": "checkpoint",
      "data.image_size": 0,
      "eval.base_lrs": (base_lr,),
      "eval.batch_size": batch,
      "eval.num_steps": steps,
      "eval.standardize_features": True,
      "eval.train_augment": "none",
    },
  )
  results = evaluate.linear_eval(config, str(tmp_path))
  assert (results["image_size"], results["standardize_features"]) == (16, True)
  assert "lr_warning" not in results
  assert "warning" not in capsys.readouterr().out
  reference = monitored_config()
  train_src = run_data.make_source(reference, "train")
  test_src = run_data.make_source(reference, "test")
  enc = byol_jax.load_encoder(pretrained)
  train_x, test_x = _numpy_standardize(
    enc(train_src.images).astype(np.float64), enc(test_src.images).astype(np.float64)
  )
  peak = base_lr * batch / 256
  w, b = _numpy_linear_sgd(train_x, train_src.labels, 4, peak, batch, steps, reference.seed)
  want = probes.top_k_accuracy(test_x @ w + b, test_src.labels, 1)
  assert results["top1"] == pytest.approx(want, abs=1 / 64 + 1e-9)


@pytest.mark.parametrize(
  ("lrs", "best", "end", "suggested"),
  [
    ((0.01, 0.1, 1.0), 0, "smallest", "(0.001,0.01,0.1,1)"),
    ((0.01, 0.1, 1.0), 2, "largest", "(0.01,0.1,1,10)"),
    ((0.01, 0.1, 1.0), 1, None, None),
    ((1.0, 0.1, 0.01, 0.03), 0, "largest", "(0.01,0.03,0.1,1,10)"),  # any order
    ((1.0, 0.1, 0.01, 0.03), 2, "smallest", "(0.00333,0.01,0.03,0.1,1)"),
    ((1.0, 0.1, 0.01, 0.03), 3, None, None),
    ((0.4,), 0, None, None),  # one lr: no grid
  ],
)
def test_lr_grid_warning_names_the_end_the_best_lr_sits_at(lrs, best, end, suggested):
  warning = evaluate.lr_grid_warning(list(lrs), best)
  if end is None:
    assert warning is None
  else:
    assert f"base lr {lrs[best]:g} is the {end} of eval.base_lrs" in warning
    assert f"--config.eval.base_lrs='{suggested}'" in warning


def test_feature_batches_split_each_global_batch_over_processes():
  features = np.arange(10, dtype=np.float32)[:, None] * [1.0, -1.0]
  labels = np.arange(10)
  one = evaluate._feature_batches(features, labels, 4, seed=0)
  two = [evaluate._feature_batches(features, labels, 4, 0, i, 2) for i in range(2)]
  for _ in range(6):  # across epoch boundaries (10 examples, batches of 4)
    f, y = next(one)
    halves = [next(stream) for stream in two]
    np.testing.assert_array_equal(np.concatenate([h[0] for h in halves]), f)
    np.testing.assert_array_equal(np.concatenate([h[1] for h in halves]), y)


def test_global_accuracy_matches_top_k_accuracy_in_one_process():
  rng = np.random.default_rng(0)
  scores, labels = rng.normal(size=(3, 50, 7)), rng.integers(0, 7, 50)
  scores[0, :10] = 0.0  # ties: broken by index in both
  accuracy, count = evaluate.global_accuracy(scores, labels)
  assert count == 50
  want = [[probes.top_k_accuracy(s, labels, k) for k in (1, 5)] for s in scores]
  np.testing.assert_array_equal(accuracy, want)


def test_finetune_on_a_label_subset(pretrained, tmp_path):
  config = monitored_config(
    mode="finetune",
    checkpoint=pretrained,
    **{"model.encoder": "checkpoint", "eval.label_fraction": 0.25, "eval.train_augment": "none"},
  )
  results = evaluate.finetune(config, str(tmp_path))
  assert results["labelled_examples"] == 16
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
  assert results["test_examples"] == 64
  with open(tmp_path / "label_subset.json") as f:
    subset = json.load(f)
  labels = run_data.make_source(config, "train").labels[subset["indices"]]
  assert np.bincount(labels).tolist() == [4, 4, 4, 4]  # stratified
  chosen_again = subsets.choose_label_subset(run_data.make_source(config, "train").labels, 0.25, 0)
  assert chosen_again.tolist() == subset["indices"]  # deterministic in the seed


def test_embed_writes_features_labels_and_file_names(pretrained, tmp_path):
  folder = write_folder(tmp_path / "images", classes=2, per_class=3)
  config = monitored_config(
    mode="embed",
    checkpoint=pretrained,
    **{"model.encoder": "checkpoint", "data.source": "folder", "data.path": folder},
  )
  path = evaluate.embed(config, str(tmp_path / "out"))
  data = np.load(path)
  assert data["features"].shape == (6, 64)
  assert data["labels"].tolist() == [0, 0, 0, 1, 1, 1]
  assert os.path.basename(str(data["filenames"][3])) == "img_1_0.png"
  images = np.stack([np.asarray(Image.open(str(f))) for f in data["filenames"]])
  # embed's views come from tf.data, load_encoder's from JAX: pixels differ by < 1e-3 where
  # they are resized (TensorFlow tabulates its bicubic kernel), features by a few 1e-3.
  np.testing.assert_allclose(
    byol_jax.load_encoder(pretrained)(images), data["features"], rtol=1e-2, atol=1e-2
  )


def test_user_errors_are_one_line(pretrained, tmp_path):
  for bad in (str(tmp_path / "missing"), str(tmp_path)):
    with pytest.raises(UserError, match="pass a training workdir or a checkpoint step folder"):
      byol_jax.load_encoder(bad)
  config = monitored_config(
    mode="linear_eval", checkpoint=pretrained, **{"model.encoder": "resnet18"}
  )
  with pytest.raises(UserError, match="holds a tiny x1, small-image stem encoder but the config"):
    evaluate.linear_eval(config, str(tmp_path))
  flat = write_folder(tmp_path / "flat", classes=1, per_class=4, flat=True)
  config = monitored_config(
    mode="linear_eval",
    checkpoint=pretrained,
    **{"model.encoder": "checkpoint", "data.source": "folder", "data.path": flat},
  )
  with pytest.raises(UserError, match=r"needs labels but folder:.* is unlabelled") as error:
    evaluate.linear_eval(config, str(tmp_path))
  assert "\n" not in str(error.value)
  with pytest.raises(UserError, match="online_probe_classes=3 but synthetic has 4 classes"):
    train.pretrain(monitored_config(**{"eval.online_probe_classes": 3}), str(tmp_path / "probe"))


def test_command_line_reports_a_bad_checkpoint_path(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "byol_jax.main",
      f"--config={REPO}/configs/linear_eval_cifar10.py",
      f"--config.checkpoint={tmp_path}/nowhere",
      f"--workdir={tmp_path}/eval",
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=300,
  )
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: Checkpoint path")
  assert "does not exist" in result.stderr


def test_configs_load_and_validate():
  for name in ("linear_eval_r50", "linear_eval_cifar10", "finetune_r50", "byol_cifar10_cpu"):
    module = tiny.load_config_module(name)
    config = module.get_config("/data/cifar10/train") if name == "byol_cifar10_cpu" else None
    config = config or module.get_config()
    config.checkpoint = config.checkpoint or "/some/run"
    config_base.validate_config(config)
  assert module.get_config("/x").data.holdout == 5000
  assert jax.device_count() == 8


@pytest.mark.parametrize("count", [0, 8])
def test_a_validation_split_must_hold_examples_and_leave_some(count):
  source = sources.array_source(np.zeros([8, 8, 8, 3], np.uint8), np.arange(8) % 2)
  with pytest.raises(UserError, match=f"Cannot hold out {count} of the 8"):
    run_data.split_off(source, config_base.get_base_config(), count, seed=0)
