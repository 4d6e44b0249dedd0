"""The original code's released checkpoints in, PyTorch out.

The original checkpoint is recreated as the 2020 code wrote it (``original_checkpoint.py``), with
the module names of Haiku's classes ``ResNet50`` (``res_net50``), ``MLP`` heads and a
``classifier``. It is then imported where neither those classes nor dill can be imported, as on a
user's machine.
"""

import importlib
import os
import pickle
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from original_checkpoint import STEP, random_values, write_original_pickle
from torch_import import import_torch

import byol_jax
from byol_jax import checkpointing, encoder, interop, models
from byol_jax.errors import UserError

SPEC = models.EncoderSpec("resnet50")

# ---------------------------------------------------------------------------------------------
# The original network's parameters (byol/utils/networks.py, Haiku 0.0.x naming).

# ResNet-50 block groups: (blocks, output channels, stride). Bottleneck BlockV1: 1x1, 3x3 with the
# stride, 1x1 to 4x the width; a projection shortcut in each group's first block.
R50_GROUPS = ((3, 256, 1), (4, 512, 2), (6, 1024, 2), (3, 2048, 2))
HIDDEN, OUTPUT, CLASSES = 64, 16, 10  # small heads: the import reads their sizes off the weights
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def original_layout():
  """(parameter shapes, state shapes) of the original BYOL network, by Haiku module name."""
  params, norms = {}, {}

  def conv(name, kernel, c_in, c_out):
    params[name] = {"w": (kernel, kernel, c_in, c_out)}  # HWIO, no bias

  def norm(name, shape):  # hk.BatchNorm keeps the reduced axes in its parameters and EMAs
    params[name] = {"scale": shape, "offset": shape}
    norms[name] = shape

  conv("res_net50/~/initial_conv", 7, 3, 64)
  norm("res_net50/~/initial_batchnorm", (1, 1, 1, 64))
  c_in = 64
  for g, (blocks, c, _) in enumerate(R50_GROUPS):
    for b in range(blocks):
      block = f"res_net50/~/block_group_{g}/~/block_{b}/~/"
      for i, (kernel, a, z) in enumerate(((1, c_in, c // 4), (3, c // 4, c // 4), (1, c // 4, c))):
        conv(f"{block}conv_{i}", kernel, a, z)
        norm(f"{block}batchnorm_{i}", (1, 1, 1, z))
      if b == 0:
        conv(f"{block}shortcut_conv", 1, c_in, c)
        norm(f"{block}shortcut_batchnorm", (1, 1, 1, c))
      c_in = c
  for head, width in (("projector", 2048), ("predictor", OUTPUT)):  # networks.MLP, inline modules
    params[f"{head}/linear"] = {"w": (width, HIDDEN), "b": (HIDDEN,)}
    norm(f"{head}/batch_norm", (1, HIDDEN))
    params[f"{head}/linear_1"] = {"w": (HIDDEN, OUTPUT)}
  params["classifier"] = {"w": (2048, CLASSES), "b": (CLASSES,)}  # the online linear probe
  state = {
    f"{name}/~/{ema}": {"counter": (), "hidden": shape, "average": shape}
    for name, shape in norms.items()
    for ema in ("mean_ema", "var_ema")
  }
  return params, state


@jax.jit
def reference_features(params, state, images, eps=1e-5):
  """The original ResNet-50's representation, computed directly from its weights: ImageNet
  normalisation, 'SAME' convolutions and max-pool, BatchNorm from the moving averages, ReLU,
  mean over space."""
  x = jnp.asarray((images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, jnp.float32)

  def conv(name, x, stride):
    return jax.lax.conv_general_dilated(
      x,
      params[name]["w"],
      (stride, stride),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )

  def bn(name, x):
    mean, var = (state[f"{name}/~/{ema}"]["average"] for ema in ("mean_ema", "var_ema"))
    return (x - mean) * jax.lax.rsqrt(var + eps) * params[name]["scale"] + params[name]["offset"]

  x = jax.nn.relu(bn("res_net50/~/initial_batchnorm", conv("res_net50/~/initial_conv", x, 2)))
  x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
  for g, (blocks, _, group_stride) in enumerate(R50_GROUPS):
    for b in range(blocks):
      block = f"res_net50/~/block_group_{g}/~/block_{b}/~/"
      stride = group_stride if b == 0 else 1
      shortcut = x
      if b == 0:
        shortcut = bn(block + "shortcut_batchnorm", conv(block + "shortcut_conv", x, stride))
      out = jax.nn.relu(bn(block + "batchnorm_0", conv(block + "conv_0", x, 1)))
      out = jax.nn.relu(bn(block + "batchnorm_1", conv(block + "conv_1", out, stride)))
      out = bn(block + "batchnorm_2", conv(block + "conv_2", out, 1))
      x = jax.nn.relu(out + shortcut)
  return jnp.mean(x, axis=(1, 2))


def without_original_code(patch):
  """As on a user's machine: neither the original code nor dill can be imported."""
  for name in ("dill", "dill._dill", "byol", "byol.byol_experiment", "byol.utils"):
    patch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  """The release pickle, imported into a workdir, and that workdir's features of a few images."""
  root = tmp_path_factory.mktemp("original")
  layout = original_layout()
  (params, state), target = random_values(layout, 0), random_values(layout, 1)
  pkl = str(root / "pretrain_res50x1.pkl")
  write_original_pickle(pkl, (params, state), target)
  workdir = str(root / "imported")
  with pytest.MonkeyPatch.context() as patch:
    without_original_code(patch)
    interop.import_original(pkl, workdir, image_size=32, eval_resize=32)
  images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  features = byol_jax.load_encoder(workdir)(images)  # 32 px: the centre crop is the image
  return SimpleNamespace(
    layout=layout,
    params=params,
    state=state,
    pkl=pkl,
    workdir=workdir,
    images=images,
    features=features,
  )


def encoder_modules(tree):
  return {k: v for k, v in tree.items() if k.startswith("res_net50/")}


def test_release_pickle_imports_and_computes_the_same_features(original):
  weights = encoder.restore_encoder(original.workdir)
  assert weights.spec == SPEC
  assert weights.step == STEP
  assert weights.config.model.projector_hidden == HIDDEN
  assert weights.config.model.projector_output == OUTPUT
  assert weights.config.model.predictor_hidden == HIDDEN
  # The online encoder's arrays, exactly (not the target's, drawn from another seed).
  for got, ref in ((weights.params, original.params), (weights.state, original.state)):
    expected = encoder_modules(ref)
    assert set(got) == set(expected)
    jax.tree.map(np.testing.assert_array_equal, got, expected)
  expected = np.asarray(reference_features(original.params, original.state, original.images))
  scale = np.abs(expected).max()
  assert 0.1 < scale < 100
  np.testing.assert_allclose(original.features, expected, atol=1e-4 * scale, rtol=0)


def test_release_pickle_loads_without_haikus_old_class(original, monkeypatch):
  # A Haiku that no longer has FlatMapping: its pickled instances still read as dicts.
  without_original_code(monkeypatch)
  monkeypatch.delattr(importlib.import_module("haiku._src.data_structures"), "FlatMapping")
  loaded = interop.load_original_pickle(original.pkl)
  assert loaded["step"] == STEP
  np.testing.assert_array_equal(loaded["rng"], [0, 42])
  for kind in ("online_params", "target_params"):
    assert {m: set(d) for m, d in loaded[kind].items()} == {
      m: set(d) for m, d in original.layout[0].items()
    }
  mean = "res_net50/~/initial_batchnorm/~/mean_ema"
  np.testing.assert_array_equal(
    loaded["online_state"][mean]["average"], original.state[mean]["average"]
  )


def files_of(folder):
  """Every file under ``folder`` with its bytes, and every folder."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), folder)] = None
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def test_import_refuses_a_workdir_that_holds_checkpoints(original, tmp_path):
  run = tmp_path / "run"
  checkpointer = checkpointing.Checkpointer(str(run / checkpointing.CHECKPOINT_SUBDIR))
  # Three steps: one more save (keep=3) would rotate the oldest out.
  for step in (1000, 2000, 3000):
    state = {"online_params": {"w": np.full((3,), step, np.float32)}, "step": np.int32(step)}
    checkpointer.save(step, state, {"model": {"encoder": "tiny"}})
  checkpointer.close()
  (run / "metrics.jsonl").write_text("{}\n")
  before = files_of(run)
  with pytest.raises(UserError, match=r"checkpoints already holds '1000', '2000', '3000'") as e:
    interop.import_original(original.pkl, str(run))
  assert "empty or new --workdir" in str(e.value)
  assert "\n" not in str(e.value)
  assert files_of(run) == before
  # Anything else there is the user's too.
  other = tmp_path / "other" / checkpointing.CHECKPOINT_SUBDIR
  other.mkdir(parents=True)
  (other / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match=r"already holds 'notes\.txt'"):
    interop.import_original(original.pkl, str(other.parent))
  assert (other / "notes.txt").read_text() == "mine"
  assert os.listdir(other) == ["notes.txt"]


def test_import_errors(original, tmp_path):
  with pytest.raises(UserError, match="is not a file"):
    interop.import_original(str(tmp_path / "none.pkl"), str(tmp_path))
  bad = tmp_path / "bad.pkl"
  bad.write_bytes(b"not a pickle")
  with pytest.raises(UserError, match="not a readable checkpoint pickle"):
    interop.import_original(str(bad), str(tmp_path))
  with open(tmp_path / "other.pkl", "wb") as f:
    pickle.dump({"params": {}}, f)
  with pytest.raises(UserError, match="holds no 'experiment_state'"):
    interop.import_original(str(tmp_path / "other.pkl"), str(tmp_path))
  shapes, state_shapes = original.layout
  params = {m: {n: np.zeros(s, np.float32) for n, s in d.items()} for m, d in shapes.items()}
  state = {m: {n: np.zeros(s, np.float32) for n, s in d.items()} for m, d in state_shapes.items()}
  del params["res_net50/~/block_group_3/~/block_2/~/conv_2"]
  write_original_pickle(str(tmp_path / "cut.pkl"), (params, state), (params, state))
  with pytest.raises(UserError, match="missing res_net50/~/block_group_3/~/block_2/~/conv_2/w"):
    interop.import_original(str(tmp_path / "cut.pkl"), str(tmp_path / "cut"))
  assert not os.path.exists(tmp_path / "cut")


# ---------------------------------------------------------------------------------------------
# PyTorch export.


def test_missing_torch_skips_locally_but_fails_in_ci(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  monkeypatch.delenv("CI", raising=False)
  with pytest.raises(pytest.skip.Exception):
    import_torch()
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match=r"CI=true but torch does not import"):
    import_torch()


def torchvision_resnet50():
  """torchvision's resnet50 layout (module names, shapes, strides), in plain torch.nn."""
  import torch.nn as nn

  class Bottleneck(nn.Module):
    def __init__(self, c_in, width, stride, downsample):
      super().__init__()
      self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(width * 4)
      self.relu = nn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      shortcut = x if self.downsample is None else self.downsample(x)
      return self.relu(out + shortcut)

  class ResNet50(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      c_in = 64
      for i, (n, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        stride = 1 if i == 0 else 2
        blocks = []
        for b in range(n):
          down = None
          if b == 0:
            down = nn.Sequential(
              nn.Conv2d(c_in, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4)
            )
          blocks.append(Bottleneck(c_in, width, stride if b == 0 else 1, down))
          c_in = width * 4
        setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Identity()

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(self.avgpool(x).flatten(1))

  return ResNet50()


def test_torch_export_matches_within_1e4(original, tmp_path):
  torch = import_torch()
  out = interop.export_torch(original.workdir, str(tmp_path / "encoder.pt"))
  state_dict = torch.load(out)
  model = torchvision_resnet50()
  assert list(state_dict) == list(model.state_dict())  # exactly torchvision's keys, in order
  model.load_state_dict(state_dict, strict=True)
  model.eval()
  expected = original.features
  x = (original.images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  x = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
  with torch.no_grad():
    symmetric = model(x).numpy()
    got = interop.use_same_padding(model)(x).numpy()
  scale = np.abs(expected).max()
  assert 0.1 < scale < 100
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)
  # Torch's own symmetric padding is measurably off: the patch is what makes them agree.
  assert np.abs(symmetric - expected).max() > 1e-2 * scale
