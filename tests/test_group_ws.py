"""BYOL without batch statistics (model.normalization="group_ws"), remat and the original
ResNet-18/34 layout.

GroupNorm and weight standardisation are checked against numpy written from their definitions (Wu
& He 2018; Qiao et al. 2019), not from byol_jax's functions; the exact large batch (accumulated
micro-batches, one big batch and 8 devices give the same update) in float64; checkpoints of one
normalisation refused by a config of the other through pretraining's resume, linear evaluation
and init_encoder_from; the PyTorch export; bfloat16; the CPU lowering; and the original code's
ResNet-18/34 parameter names, derived from its rules (deepmind-research byol/utils/networks.py:
``use_projection=(True, True, True, True)`` and Haiku's BlockV1 names).
"""

import dataclasses
import functools
import json
import math
import os
import re
import shutil

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from original_checkpoint import random_values, write_original_pickle
from tiny import read_metrics, tiny_config
from torch_import import import_torch

import byol_jax
from byol_jax import (
  byol,
  checkpointing,
  config_base,
  config_diff,
  cpu_ops,
  evaluate,
  interop,
  models,
  parallel,
  precision,
  train,
)
from byol_jax import encoder as encoder_lib
from byol_jax.data import augment
from byol_jax.errors import UserError

ENC = models.EncoderSpec("tiny", small_image_stem=True, normalization="group_ws")
# Hidden layers of 256: GroupNorm groups of 16 features (groups of 2, from 32, normalise each
# example to nearly the same pattern of +-1).
HEADS = models.HeadSpec(256, 16, 256)
HP = byol.ByolHParams(peak_lr=0.8, total_steps=10, warmup_steps=0, tau_base=0.9, weight_decay=1e-4)
GLOBAL_BATCH, SIZE, STEPS, K = 16, 16, 2, 4
GN_EPS, WS_EPS = 1e-5, 1e-10


# ---------------------------------------------------------------------------------------------
# The forward pass against numpy.


def np_ws(w):
  """Weight standardisation of an HWIO kernel: each output channel to mean 0, variance 1."""
  flat = w.reshape(-1, w.shape[-1]).astype(np.float64)
  return (w - flat.mean(0)) / np.sqrt(flat.var(0) + WS_EPS)


def np_gn(x, scale, offset):
  """GroupNorm over channels-last ``x``: 16 groups (or gcd(16, C)) of consecutive channels, each
  normalised per example over its channels and every position."""
  c = x.shape[-1]
  groups = math.gcd(16, c)
  g = x.reshape(x.shape[0], -1, groups, c // groups)
  g = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + GN_EPS)
  return g.reshape(x.shape) * scale.reshape(-1) + offset.reshape(-1)


def np_conv(x, w, stride):
  """'SAME' convolution (TensorFlow's padding: the extra pixel at the bottom/right), tap by tap."""
  k, size = w.shape[0], x.shape[1]
  out = -(-size // stride)
  pad = max((out - 1) * stride + k - size, 0)
  xp = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
  end = stride * (out - 1) + 1
  return sum(
    xp[:, dy : dy + end : stride, dx : dx + end : stride] @ w[dy, dx]
    for dy in range(k)
    for dx in range(k)
  )


def np_byol_forward(params, x):
  """(embedding, projection, prediction) of the tiny GN + WS network, in float64."""
  relu = lambda v: np.maximum(v, 0)  # noqa: E731
  p = lambda name: {k: np.asarray(v, np.float64) for k, v in params[name].items()}  # noqa: E731

  def conv_gn(conv, norm, x, stride):
    y = np_conv(x, np_ws(p(conv)["w"]), stride)
    return np_gn(y, p(norm)["scale"], p(norm)["offset"])

  root = "res_net_tiny/~/"
  x = relu(conv_gn(root + "initial_conv", root + "initial_group_norm", x, 1))
  for g in range(4):
    block, stride = f"{root}block_group_{g}/~/block_0/~/", 1 if g == 0 else 2
    shortcut = x
    if block + "shortcut_conv" in params:
      shortcut = conv_gn(block + "shortcut_conv", block + "shortcut_group_norm", x, stride)
    out = relu(conv_gn(block + "conv_0", block + "group_norm_0", x, stride))
    out = conv_gn(block + "conv_1", block + "group_norm_1", out, 1)
    x = relu(out + shortcut)
  embedding = x.mean(axis=(1, 2))

  def mlp(head, h):
    h = h @ p(f"{head}/linear")["w"] + p(f"{head}/linear")["b"]
    h = relu(np_gn(h, p(f"{head}/group_norm")["scale"], p(f"{head}/group_norm")["offset"]))
    return h @ p(f"{head}/linear_1")["w"]

  projection = mlp("projector", embedding)
  return embedding, projection, mlp("predictor", projection)


def randomised(params, seed=0):
  """``params`` with random GroupNorm scales and offsets and linear biases (they start at 1 and
  0), so that a wrong mapping shows in the outputs."""
  rng = np.random.default_rng(seed)

  def draw(module, name, value):
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, value.shape), value.dtype)
    if name in ("offset", "b"):
      return jnp.asarray(rng.normal(0, 0.2, value.shape), value.dtype)
    return value

  return hk.data_structures.map(draw, params)


def test_group_ws_forward_matches_numpy_group_norm_and_weight_standardisation():
  net = models.make_byol_network(ENC, HEADS)
  x = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  params, state = jax.jit(lambda k: net.init(k, x, True))(jax.random.PRNGKey(0))
  assert state == {}  # no moving averages anywhere
  assert not any("batch" in module for module in params)
  assert interop.infer_spec(params) == ENC  # checkpoints say which normalisation they hold
  params = randomised(params)

  @jax.jit
  def outputs(p):
    return [net.apply(p, {}, x, training)[0] for training in (True, False)]

  training, inference = outputs(params)
  want = np_byol_forward(params, x.astype(np.float64))
  for out in (training, inference):  # no batch statistics: training and inference are the same
    for key, ref in zip(("embedding", "projection", "prediction"), want):
      scale = np.abs(ref).max()
      assert scale > 0.1, key
      np.testing.assert_allclose(out[key], ref, atol=2e-5 * scale, rtol=0, err_msg=key)


# ---------------------------------------------------------------------------------------------
# The update step: one big batch, accumulated micro-batches and 8 devices, in float64.

# Two stages, one without and one with a projection shortcut: update steps compile in seconds.
SMALL = dataclasses.replace(ENC, tiny_blocks=(1, 1, 0, 0))


def _batches(dtype):
  rng = np.random.default_rng(0)
  return [
    {k: rng.uniform(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(dtype) for k in ("view1", "view2")}
    for _ in range(STEPS)
  ]


@functools.cache
def _run(devices, accum=1):
  """STEPS float64 updates of the small GN + WS network pmapped over ``devices``, each device's
  share in ``accum`` micro-batches, the paper's colour ops applied in the step (each example's
  from its position in the global batch); returns every state and the metrics (device 0)."""
  with jax.enable_x64(True):
    network = models.make_byol_network(SMALL, HEADS, axis_name="batch")
    optimizer = byol.make_optimizer(HP)
    update = byol.make_update_fn(
      network,
      optimizer,
      HP,
      axis_name="batch",
      device_colour_ops=(augment.PAPER_T, augment.PAPER_T_PRIME),
      grad_accum_steps=accum,
    )
    used = jax.local_devices()[:devices]
    p_update = jax.pmap(update, axis_name="batch", devices=used)
    dummy = jnp.zeros((2, SIZE, SIZE, 3), jnp.float64)
    init = models.make_byol_network(SMALL, HEADS)
    state = jax.jit(lambda k: byol.init_state(init, optimizer, k, dummy))(jax.random.PRNGKey(0))
    rng = parallel.replicate(jax.random.PRNGKey(42), used)
    history, metrics = [jax.device_get(state)], []
    state = parallel.replicate(state, used)
    for batch in _batches(np.float64):
      state, m = p_update(state, parallel.shard(batch, used), rng)
      history.append(parallel.unreplicate(state))
      metrics.append(parallel.unreplicate(m))
    return history, metrics


def _assert_trees_close(a, b, rtol=1e-8, atol=1e-10):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_accumulation_equals_one_big_batch_equals_eight_devices():
  """Float64 rounding (amplified ~1e4-fold through the first update, as in test_byol: the first
  step's losses agree to 1e-15) is all that separates them."""
  big_history, big_metrics = _run(1)
  assert big_history[-1].online_params["projector/linear"]["w"].dtype == np.float64
  assert big_history[-1].online_state == {}
  assert big_history[-1].target_state == {}
  # One device in 4 micro-batches of 4, and 8 devices of 2 examples.
  for history, metrics in (_run(1, K), _run(8)):
    for a, b in zip(big_metrics, metrics):
      for key in ("loss", "grad_norm", "projection_std"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, err_msg=key)
    for part in ("online_params", "target_params", "opt_state"):
      _assert_trees_close(getattr(big_history[-1], part), getattr(history[-1], part))
  # The update did something, and differs from step to step.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), big_history[0], big_history[-1])
  assert min(jax.tree.leaves(moved.online_params)) > 0
  assert abs(big_metrics[0]["loss"] - big_metrics[1]["loss"]) > 1e-6


@functools.cache
def _gradients(conv_impl="xla", remat=False, normalization="group_ws"):
  """Float64 loss, gradients and new state of a training forward pass of the small network."""
  with jax.enable_x64(True):
    spec = dataclasses.replace(SMALL, normalization=normalization)
    network = models.make_byol_network(spec, HEADS, remat=remat)
    x = jnp.asarray(_batches(np.float64)[0]["view1"])
    params, state = jax.jit(lambda k: network.init(k, x, True))(jax.random.PRNGKey(0))
    lowered = cpu_ops.lowered(network, conv_impl)

    def loss(p):
      out, new_state = lowered.apply(p, state, x, True)
      return jnp.sum(jnp.sin(out["prediction"])) + jnp.sum(out["projection"] ** 2), new_state

    (value, new_state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return jax.device_get((value, grads, new_state))


def test_xla_convolutions_and_the_cpu_lowering_compute_the_same_group_ws_gradients():
  xla, lowered = _gradients("xla"), _gradients("winograd")
  np.testing.assert_allclose(lowered[0], xla[0], rtol=1e-12)
  _assert_trees_close(lowered[1], xla[1], rtol=1e-9, atol=1e-12)
  # The lowering computes every convolution (with the standardised kernel): none is left to XLA.
  x = jnp.zeros((2, SIZE, SIZE, 3))
  network = models.make_byol_network(SMALL, HEADS)
  params, _ = network.init(jax.random.PRNGKey(0), x, True)
  for impl, convs in (("xla", True), ("winograd", False)):
    apply = cpu_ops.lowered(network, impl).apply
    jaxpr = str(jax.make_jaxpr(lambda p, apply=apply: apply(p, {}, x, True))(params))
    assert ("conv_general_dilated" in jaxpr) == convs, impl


@pytest.mark.parametrize("normalization", ["batch", "group_ws"])
def test_remat_gives_the_same_gradients_and_state(normalization):
  """Hence the same update; the parameter names are the same."""
  plain, remat = _gradients(normalization=normalization), _gradients("xla", True, normalization)
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-12)
  _assert_trees_close(remat[1], plain[1], rtol=1e-10, atol=1e-14)
  _assert_trees_close(remat[2], plain[2], rtol=1e-10, atol=1e-14)  # BatchNorm's averages
  assert (remat[2] == {}) == (normalization == "group_ws")
  # Each residual block (2 here) is recomputed in the backward pass: one checkpoint each.
  spec = dataclasses.replace(SMALL, normalization=normalization)
  x = jnp.zeros((2, SIZE, SIZE, 3))
  for flag, count in ((False, 0), (True, 2)):
    net = models.make_byol_network(spec, HEADS, remat=flag)
    params, state = jax.eval_shape(lambda k, net=net: net.init(k, x, True), jax.random.PRNGKey(0))
    jaxpr = jax.make_jaxpr(functools.partial(net.apply, images=x, is_training=True))(params, state)
    assert len(re.findall(r"= remat", str(jaxpr))) == count


def test_bfloat16_group_norm_and_weight_standardisation_stay_float32():
  network = models.make_byol_network(SMALL, HEADS)
  x = jnp.asarray(_batches(np.float32)[0]["view1"])
  params, _ = jax.jit(lambda k: network.init(k, x, True))(jax.random.PRNGKey(0))
  norms = []

  def record(next_f, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, hk.GroupNorm):
      norms.append(args[0].dtype)
    if context.method_name == "__call__" and context.orig_class is hk.ConvND:
      # The convolution proper, inside WSConv2D's call: the kernel it computes with.
      shape = (*module.kernel_shape, args[0].shape[-1], module.output_channels)
      hk.set_state("kernel", hk.get_parameter("w", shape))
    return next_f(*args, **kwargs)

  def apply_recording(*args, **kwargs):
    with hk.intercept_methods(record):
      return network.apply(*args, **kwargs)

  # The recorder inside the precision interceptor, where the layers see what they compute with.
  recording = precision.mixed_precision(
    hk.TransformedWithState(network.init, apply_recording), "bfloat16"
  )
  (out16, kernels), (out32, _) = jax.jit(
    lambda p: (recording.apply(p, {}, x, True), network.apply(p, {}, x, True))
  )(params)
  assert norms
  assert set(norms) == {jnp.dtype(jnp.float32)}
  # The kernel a convolution reads is the float32 standardised kernel rounded to bfloat16 once
  # (standardising the rounded kernel would differ).
  assert len(kernels) == 6  # the stem, 2 + 2 convolutions and a projection shortcut
  for name, recorded in kernels.items():
    w = recorded["kernel"]
    assert w.dtype == jnp.bfloat16
    want = models.standardize_kernel(params[name]["w"]).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(w, np.float32), np.asarray(want, np.float32))
  for key in ("embedding", "projection", "prediction"):
    scale = float(jnp.max(jnp.abs(out32[key])))
    assert float(jnp.max(jnp.abs(out16[key] - out32[key]))) < 0.05 * scale, key


# ---------------------------------------------------------------------------------------------
# Pretraining, downstream and checkpoints of the other normalisation.


def gnws_config(**overrides):
  """The small network's pretraining config without batch statistics: 2 steps of 2 micro-batches
  with remat, the kNN monitor and the online probe."""
  fields = {
    "model.normalization": "group_ws",
    "model.tiny_blocks": SMALL.tiny_blocks,
    "model.projector_hidden": HEADS.projector_hidden,
    "model.predictor_hidden": HEADS.predictor_hidden,
    "model.remat": True,
    "num_steps": 2,
    "checkpoint_every_steps": 2,
    "optim.grad_accum_steps": 2,
    "data.synthetic_classes": 4,
    "eval.knn_every_steps": 2,
    "eval.knn_k": 20,
    "eval.online_probe_classes": 4,
    "eval.batch_size": 16,
    "eval.num_steps": 2,
  }
  return tiny_config(**{**fields, **overrides})


@pytest.fixture(scope="module")
def gnws_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gnws"))
  metrics = train.pretrain(gnws_config(), workdir)
  return workdir, metrics


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory):
  """A BatchNorm run's checkpoint as pretraining writes it (the initial state, at step 1)."""
  workdir = str(tmp_path_factory.mktemp("bn"))
  config = gnws_config(**{"model.normalization": "batch"})
  optimizer = byol.make_optimizer(train.hparams(config, train.plan_run(config, 64)))
  state = train.initial_state(config, optimizer)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  checkpointer.save(1, state._asdict(), config.to_dict())
  checkpointer.close()
  return workdir


def test_group_ws_pretraining_monitor_probe_load_encoder_and_evaluations(gnws_run, tmp_path):
  workdir, metrics = gnws_run
  assert np.isfinite(metrics["loss"])
  monitored = [r for r in read_metrics(workdir) if "knn_top1" in r]
  assert monitored
  assert 0.0 <= monitored[-1]["knn_top1"] <= 1.0
  assert "probe_top1" in monitored[-1]
  weights = encoder_lib.restore_encoder(workdir)
  assert weights.spec == SMALL
  assert weights.state == {}
  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
  features = byol_jax.load_encoder(workdir)(images)
  assert features.shape == (5, 16)
  assert np.all(np.isfinite(features))
  common = {"checkpoint": workdir, "model.encoder": "checkpoint", "eval.train_augment": "none"}
  results = evaluate.linear_eval(gnws_config(mode="linear_eval", **common), str(tmp_path / "lin"))
  assert 0.0 <= results["top1"] <= 1.0
  config = gnws_config(mode="finetune", **common)
  assert 0.0 <= evaluate.finetune(config, str(tmp_path / "ft"))["top1"] <= 1.0


def _one_line(error):
  message = str(error.value)
  assert "\n" not in message
  return message


def test_configs_saved_before_the_new_fields_are_batchnorm_torchvision_runs():
  wanted = tiny_config().to_dict()
  saved = json.loads(json.dumps(wanted))
  for field in ("normalization", "resnet_layout", "remat"):
    del saved["model"][field]
  defaults = config_base.get_base_config().to_dict()
  assert not config_diff.architecture_mismatch(saved, wanted, defaults)
  assert encoder_lib.spec_from_config(saved["model"]) == encoder_lib.spec_from_config(
    wanted["model"]
  )
  other = tiny_config(**{"model.normalization": "group_ws"}).to_dict()
  assert config_diff.architecture_mismatch(saved, other, defaults) == [
    "model.normalization: checkpoint 'batch' vs config 'group_ws'"
  ]


def test_a_checkpoint_of_the_other_normalization_is_refused_both_ways(
  gnws_run, bn_checkpoint, tmp_path
):
  gnws, _ = gnws_run
  for source, saved_norm, config_norm in (
    (gnws, "group_ws", "batch"),
    (bn_checkpoint, "batch", "group_ws"),
  ):
    # Resuming pretraining in that workdir (a copy: nothing may change in the user's).
    workdir = str(tmp_path / f"resume_{saved_norm}")
    shutil.copytree(source, workdir)
    # remat (True in the GN run) computes the same: it is not named.
    config = gnws_config(**{"model.normalization": config_norm, "model.remat": False})
    with pytest.raises(UserError, match="another architecture") as error:
      train.pretrain(config, workdir)
    message = _one_line(error)
    assert f"(model.normalization: checkpoint '{saved_norm}' vs config '{config_norm}')" in message
    # Linear evaluation naming the encoder, and a fresh run started from that encoder.
    named = {"checkpoint": source, "model.encoder": "tiny", "model.normalization": config_norm}
    with pytest.raises(UserError, match="GroupNorm \\+ weight standardisation") as error:
      evaluate.linear_eval(gnws_config(mode="linear_eval", **named), str(tmp_path / "lin"))
    _one_line(error)
    fresh = gnws_config(init_encoder_from=source, **{"model.normalization": config_norm})
    with pytest.raises(UserError, match="but the config asks for"):
      train.pretrain(fresh, str(tmp_path / f"fresh_{saved_norm}"))


# ---------------------------------------------------------------------------------------------
# PyTorch export.


def torch_resnet18(norm_layer):
  """torchvision's resnet18 layout (module names, shapes, strides) in plain torch.nn, with
  ``norm_layer(channels)`` as its normalisation, as ``torchvision.models.resnet18(norm_layer=)``."""
  import torch.nn as nn

  class BasicBlock(nn.Module):
    def __init__(self, c_in, c, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
      self.bn1 = norm_layer(c)
      self.relu = nn.ReLU()
      self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
      self.bn2 = norm_layer(c)
      self.downsample = None
      if stride != 1 or c_in != c:
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), norm_layer(c))

    def forward(self, x):
      out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class ResNet18(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = norm_layer(64)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      c_in = 64
      for i, c in enumerate((64, 128, 256, 512)):
        stride = 1 if i == 0 else 2
        blocks = [BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)]
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        c_in = c
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Identity()

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(self.avgpool(x).flatten(1))

  return ResNet18()


def _save_encoder(workdir, spec, params, state):
  """A checkpoint holding ``spec``'s online encoder, with a config naming it."""
  config = config_base.get_base_config()
  config.model.encoder = spec.name
  config.model.normalization = spec.normalization
  config.model.resnet_layout = spec.resnet_layout
  config.data.image_size = config.data.eval_resize = 32
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  tree = dict(step=np.int32(1), online_params=params, online_state=state)
  checkpointer.save(1, jax.tree.map(np.asarray, tree), config.to_dict())
  checkpointer.close()


def test_torch_export_of_a_group_ws_encoder_matches_within_1e4(tmp_path):
  torch = import_torch()
  spec = models.EncoderSpec("resnet18", normalization="group_ws")
  net = models.make_encoder_network(spec)
  params, state = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), True)
  _save_encoder(str(tmp_path), spec, randomised(params), state)
  images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  # The checkpoint's encoder (XLA's convolutions: the lowering's compile is slow for ResNet-18).
  weights = encoder_lib.restore_encoder(str(tmp_path))
  encode = jax.jit(encoder_lib.encode_fn(weights.spec, conv_impl="xla"))
  expected = np.asarray(encode(weights.params, weights.state, images))
  out = interop.export_torch(str(tmp_path), str(tmp_path / "encoder.pt"))
  model = torch_resnet18(interop.torch_group_norm(GN_EPS))
  state_dict = torch.load(out)
  assert list(state_dict) == list(model.state_dict())  # torchvision's keys, no running stats
  model.load_state_dict(state_dict, strict=True)
  model.eval()
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = torch.from_numpy(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
  with torch.no_grad():
    got = interop.use_same_padding(model)(x).numpy()
  scale = np.abs(expected).max()
  assert 0.1 < scale < 100
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)


def test_group_ws_resnet50_has_the_batchnorm_networks_names_and_sizes():
  bn, bn_state = encoder_lib.expected_shapes(models.EncoderSpec("resnet50"))
  gn, gn_state = encoder_lib.expected_shapes(
    models.EncoderSpec("resnet50", normalization="group_ws")
  )
  assert bn_state
  assert gn_state == {}
  rename = {k.replace("batchnorm", "group_norm"): v for k, v in bn.items()}
  assert set(gn) == set(rename)

  def size(tree):
    return {m: {n: math.prod(v.shape) for n, v in d.items()} for m, d in tree.items()}

  assert size(gn) == size(rename)  # BatchNorm keeps (1, 1, 1, C) scales, GroupNorm (C,)
  # A bottleneck block's last GroupNorm scale starts at zero, as BatchNorm's.
  block = hk.transform(lambda x: models.GroupWSBlock(64, 1, True, True, GN_EPS)(x, True, False))
  params = block.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 16)))
  assert np.all(params["group_ws_block/~/group_norm_2"]["scale"] == 0)
  assert np.all(params["group_ws_block/~/group_norm_1"]["scale"] == 1)


def test_torch_export_refuses_the_original_layout():
  spec = models.EncoderSpec("resnet18", resnet_layout="original")
  params, state = encoder_lib.expected_shapes(spec)
  with pytest.raises(UserError, match="resnet_layout='torchvision'") as error:
    interop.torch_state_dict(params, state, spec)
  _one_line(error)


# ---------------------------------------------------------------------------------------------
# The original code's ResNet-18/34 layout.


def original_basic_resnet(blocks):
  """(parameter shapes, BatchNorm state shapes) of the original code's ResNet-18/34: Haiku's
  BlockV1 names, a projection shortcut in the first block of every stage (its
  ``use_projection=(True,) * 4``), 7x7 stem, channels 64, 128, 256, 512."""
  root = "res_net18" if blocks == (2, 2, 2, 2) else "res_net34"
  params, norms = {}, {}

  def conv(name, k, c_in, c_out):
    params[f"{root}/~/{name}"] = {"w": (k, k, c_in, c_out)}

  def bn(name, c):
    params[f"{root}/~/{name}"] = {"scale": (1, 1, 1, c), "offset": (1, 1, 1, c)}
    norms[f"{root}/~/{name}"] = (1, 1, 1, c)

  conv("initial_conv", 7, 3, 64)
  bn("initial_batchnorm", 64)
  c_in = 64
  for g, (n, c) in enumerate(zip(blocks, (64, 128, 256, 512))):
    for b in range(n):
      block = f"block_group_{g}/~/block_{b}/~/"
      conv(block + "conv_0", 3, c_in, c)
      bn(block + "batchnorm_0", c)
      conv(block + "conv_1", 3, c, c)
      bn(block + "batchnorm_1", c)
      if b == 0:
        conv(block + "shortcut_conv", 1, c_in, c)
        bn(block + "shortcut_batchnorm", c)
      c_in = c
  state = {
    f"{name}/~/{ema}": {"counter": (), "hidden": shape, "average": shape}
    for name, shape in norms.items()
    for ema in ("mean_ema", "var_ema")
  }
  return params, state


def _shapes(tree):
  return {m: {n: tuple(np.shape(v)) for n, v in d.items()} for m, d in tree.items()}


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_original_layout_has_the_original_codes_names_and_shapes(name):
  blocks = models.RESNET_DEPTHS[name][0]
  want_params, want_state = original_basic_resnet(blocks)
  spec = models.EncoderSpec(name, resnet_layout="original")
  params, state = encoder_lib.expected_shapes(spec, image_size=64)
  assert _shapes(params) == want_params
  assert _shapes(state) == want_state
  assert interop.infer_spec(params) == spec
  # torchvision's layout differs in the first stage's first block only.
  default, _ = encoder_lib.expected_shapes(models.EncoderSpec(name), image_size=64)
  first = f"res_net{name[6:]}/~/block_group_0/~/block_0/~/shortcut_"
  assert set(params) - set(default) == {first + "conv", first + "batchnorm"}
  assert interop.infer_spec(default) == models.EncoderSpec(name)


def test_an_original_resnet18_checkpoint_imports(tmp_path):
  params, state = random_values(original_basic_resnet((2, 2, 2, 2)), 0)
  pkl = str(tmp_path / "pretrain_res18.pkl")
  write_original_pickle(pkl, (params, state), (params, state))
  workdir = str(tmp_path / "imported")
  interop.import_original(pkl, workdir, image_size=32, eval_resize=32)
  weights = encoder_lib.restore_encoder(workdir)
  assert weights.spec == models.EncoderSpec("resnet18", resnet_layout="original")
  jax.tree.map(np.testing.assert_array_equal, weights.params, params)
  # A config asking for torchvision's ResNet-18 is refused, with the layout named.
  config = tiny_config(mode="linear_eval", checkpoint=workdir, **{"model.encoder": "resnet18"})
  config.model.small_image_stem = False
  with pytest.raises(UserError, match="original layout") as error:
    evaluate.linear_eval(config, str(tmp_path / "lin"))
  _one_line(error)
