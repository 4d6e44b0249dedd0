"""Test set-up: 8 fake CPU devices, so pmap and cross-replica code paths run as on a pod slice."""

import os

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import compile_memo
import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_default_prng_impl", "rbg")
# The cache's keys and size threshold; the test process keeps its programs in memory
# (tests/compile_memo.py), its command-line subprocesses share them on disk (tests/processes.py).
jax.config.update(
  "jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
compile_memo.install()


import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _fresh_programs_per_module():
  """Each module compiles its programs once and drops them at its end (tests/compile_memo.py)."""
  yield
  compile_memo.forget()


@pytest.fixture(params=["xla", "winograd"])
def conv_impl(request) -> str:
  """Each core test once on XLA's convolutions (the GPU/TPU path), once on the CPU lowering."""
  return request.param
