"""The original code's checkpoints in (a synthetic pickle of their exact layout), PyTorch out."""

import collections
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import byol_jax
from byol_jax import encoder, interop, models
from byol_jax.errors import UserError

SPEC = models.EncoderSpec("resnet50")


def random_byol_params(seed=0):
  """Random ResNet-50 BYOL parameters and BN state (numpy), in Haiku's layout, without compiling.

  Weights are He-scaled and the BN statistics random, so that a wrong mapping shows in the output;
  the last BN scale of each block is small to keep 16 residual blocks from blowing up.
  """
  net = models.make_byol_network(SPEC, models.HeadSpec(64, 16, 64))
  shapes = jax.eval_shape(
    lambda k: net.init(k, jnp.zeros((1, 32, 32, 3)), True), jax.random.PRNGKey(0)
  )
  rng = np.random.default_rng(seed)

  def param(module, name, s):
    if name == "w":
      return rng.normal(0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape).astype(np.float32)
    if name == "scale":
      top = 0.3 if module.endswith("batchnorm_2") else 1.2
      return rng.uniform(0.1, top, s.shape).astype(np.float32)
    return rng.normal(0, 0.1, s.shape).astype(np.float32)

  def stat(module, name, s):
    if name == "counter":
      return np.asarray(1234, np.int32)
    if module.endswith("var_ema"):
      return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
    return rng.normal(0, 0.2, s.shape).astype(np.float32)

  params = {m: {n: param(m, n, s) for n, s in d.items()} for m, d in shapes[0].items()}
  state = {m: {n: stat(m, n, s) for n, s in d.items()} for m, d in shapes[1].items()}
  return params, state


# The original code's experiment state; pickled by reference to this module's class.
ByolExperimentState = collections.namedtuple("ByolExperimentState", interop.ORIGINAL_STATE_FIELDS)


def write_original_pickle(path, params, state, missing_class=False):
  _, target_params = models.split_predictor(params)
  _, target_state = models.split_predictor(state)
  opt_state = (
    {"count": np.zeros([], np.int32)},
    jax.tree.map(np.zeros_like, params),  # momentum
  )
  experiment_state = ByolExperimentState(
    online_params=params,
    target_params=target_params,
    online_state=state,
    target_state=target_state,
    opt_state=opt_state,
  )
  data = dict(experiment_state=experiment_state, step=np.int64(300_000), rng=np.array([0, 42]))
  blob = pickle.dumps(data, protocol=4)
  if missing_class:  # as if the original code's module were not importable here
    module = __name__.encode()
    assert module in blob
    blob = blob.replace(module, b"z" * len(module), 1)  # same length: pickle stores lengths
  with open(path, "wb") as f:
    f.write(blob)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  root = tmp_path_factory.mktemp("original")
  params, state = random_byol_params()
  pkl = str(root / "pretrain_res50x1.pkl")
  write_original_pickle(pkl, params, state)
  workdir = str(root / "imported")
  interop.import_original(pkl, workdir, image_size=32, eval_resize=32)
  return params, state, pkl, workdir


def test_original_checkpoint_layout_maps_onto_our_encoder(original, tmp_path):
  params, state, _, workdir = original
  assert "res_net50/~/block_group_0/~/block_0/~/shortcut_conv" in params
  assert "res_net50/~/initial_batchnorm/~/mean_ema" in state
  assert set(state["res_net50/~/initial_batchnorm/~/var_ema"]) == {"average", "hidden", "counter"}
  weights = encoder.restore_encoder(workdir)
  assert weights.spec == SPEC
  assert weights.step == 300_000
  assert weights.config.model.projector_hidden == 64
  assert weights.config.model.predictor_hidden == 64
  for tree, ref in ((weights.params, params), (weights.state, state)):
    expected = encoder.encoder_part(ref, SPEC)
    assert set(tree) == set(expected)
    jax.tree.map(np.testing.assert_array_equal, tree, expected)
  # Without the named tuple's class the pickle still loads (fields taken by position).
  lost = str(tmp_path / "lost_class.pkl")
  write_original_pickle(lost, params, state, missing_class=True)
  loaded = interop.load_original_pickle(lost)
  assert loaded["step"] == 300_000
  np.testing.assert_array_equal(
    loaded["online_state"]["res_net50/~/initial_batchnorm/~/mean_ema"]["average"],
    state["res_net50/~/initial_batchnorm/~/mean_ema"]["average"],
  )
  assert set(loaded["target_params"]) == set(models.split_predictor(params)[1])


def test_import_errors(tmp_path):
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
  params, state = random_byol_params()
  del params["res_net50/~/block_group_3/~/block_2/~/conv_2"]
  write_original_pickle(str(tmp_path / "cut.pkl"), params, state)
  with pytest.raises(UserError, match="missing res_net50/~/block_group_3/~/block_2/~/conv_2/w"):
    interop.import_original(str(tmp_path / "cut.pkl"), str(tmp_path / "cut"))


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
  torch = pytest.importorskip("torch")
  _, _, _, workdir = original
  out = interop.export_torch(workdir, str(tmp_path / "encoder.pt"))
  state_dict = torch.load(out)
  model = torchvision_resnet50()
  assert list(state_dict) == list(model.state_dict())  # exactly torchvision's keys, in order
  model.load_state_dict(state_dict, strict=True)
  model.eval()
  images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  expected = byol_jax.load_encoder(workdir)(images)  # 32 px: the centre crop is the image
  x = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  x = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
  with torch.no_grad():
    symmetric = model(x).numpy()
    got = interop.use_same_padding(model)(x).numpy()
  scale = np.abs(expected).max()
  assert 0.1 < scale < 100
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)
  # Torch's own symmetric padding is measurably off: the patch is what makes them agree.
  assert np.abs(symmetric - expected).max() > 1e-2 * scale
