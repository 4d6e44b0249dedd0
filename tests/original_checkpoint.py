"""The original code's checkpoint format, written as the 2020 code wrote it.

From its description, not from byol_jax's names: ``byol/utils/checkpointing.py`` pickled
``dict(experiment_state, step, rng)`` with ``dill.dump(..., protocol=2)``; the experiment state is
the named tuple of ``byol/byol_experiment.py`` holding Haiku 0.0.x ``FlatMapping`` trees (pickled
as ``haiku._src.data_structures.FlatMapping(dict)``) and the LARS optimiser's state (an optax
chain); arrays are numpy's of 2020 (``numpy.core.multiarray``).
"""

import collections
import contextlib
import importlib
import io
import sys
import types

import dill
import numpy as np
import pytest

STEP = 300_000


def random_values(layout, seed):
  """Random parameters and BN state (numpy) of ``layout``.

  Weights are He-scaled and the BN statistics random, so that a wrong mapping shows in the output;
  the last BN scale of each block is small to keep 16 residual blocks from blowing up.
  """
  rng = np.random.default_rng(seed)

  def param(module, name, shape):
    if name == "w":
      return rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype(np.float32)
    if name == "scale":
      return rng.uniform(0.1, 0.3 if module.endswith("batchnorm_2") else 1.2, shape).astype(
        np.float32
      )
    return rng.normal(0, 0.1, shape).astype(np.float32)

  def stat(module, name, shape):
    if name == "counter":
      return np.asarray(1234, np.int32)
    if module.endswith("var_ema"):
      return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return rng.normal(0, 0.2, shape).astype(np.float32)

  shapes, state_shapes = layout
  params = {m: {n: param(m, n, s) for n, s in d.items()} for m, d in shapes.items()}
  state = {m: {n: stat(m, n, s) for n, s in d.items()} for m, d in state_shapes.items()}
  return params, state


# ---------------------------------------------------------------------------------------------
# The 2020 classes, under their 2020 paths, and the writer.


class FlatMapping(dict):
  """Haiku 0.0.x's immutable mapping as it pickled: ``FlatMapping(<dict of its items>)``."""

  def __reduce__(self):
    return FlatMapping, (dict(self),)


FlatMapping.__module__ = "haiku._src.data_structures"

_ByolExperimentState = collections.namedtuple(
  "_ByolExperimentState",
  ("online_params", "target_params", "online_state", "target_state", "opt_state"),
  module="byol.byol_experiment",
)
# The optimiser: optax.chain(add_weight_decay, scale_by_lars, optax.scale(-lr)).
AddWeightDecayState = collections.namedtuple(
  "AddWeightDecayState", (), module="byol.utils.optimizers"
)
ScaleByLarsState = collections.namedtuple(
  "ScaleByLarsState", ("mu",), module="byol.utils.optimizers"
)
ScaleState = collections.namedtuple("ScaleState", (), module="optax._src.transform")


@contextlib.contextmanager
def importable(*classes):
  """Makes each class importable under its ``__module__`` while inside, then undoes it all.

  A module that exists gets the attribute set for the time being; a missing one is a stand-in.
  """
  with pytest.MonkeyPatch.context() as patch:
    for cls in classes:
      try:
        module = importlib.import_module(cls.__module__)
      except ImportError:
        parts = cls.__module__.split(".")
        for i in range(1, len(parts) + 1):
          name = ".".join(parts[:i])
          if name not in sys.modules:
            patch.setitem(sys.modules, name, types.ModuleType(name))
        module = sys.modules[cls.__module__]
      patch.setattr(module, cls.__qualname__, cls, raising=False)
    yield


def flat_mapping(tree):
  return FlatMapping({module: FlatMapping(leaves) for module, leaves in tree.items()})


def write_original_pickle(path, online, target):
  """Writes ``online`` / ``target`` (params, state) as the original code wrote checkpoints."""
  (params, state), (target_params, target_state) = online, target
  momentum = {m: {n: np.zeros_like(v) for n, v in d.items()} for m, d in params.items()}
  experiment_state = _ByolExperimentState(
    online_params=flat_mapping(params),
    target_params=flat_mapping(target_params),
    online_state=flat_mapping(state),
    target_state=flat_mapping(target_state),
    opt_state=(AddWeightDecayState(), ScaleByLarsState(mu=flat_mapping(momentum)), ScaleState()),
  )
  data = dict(experiment_state=experiment_state, step=STEP, rng=np.array([0, 42], np.uint32))
  buffer = io.BytesIO()
  with importable(FlatMapping):
    dill.dump(data, buffer, protocol=2)
  blob = buffer.getvalue()
  assert b"chaiku._src.data_structures\nFlatMapping\n" in blob
  assert b"byol.byol_experiment" in blob
  # numpy 1.x, in 2020, named its array reconstructor by this path (numpy 2: numpy._core).
  blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
  with open(path, "wb") as f:
    f.write(blob)
