"""Test set-up: 8 fake CPU devices, so pmap and cross-replica code paths run as on a pod slice."""

import os

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_default_prng_impl", "rbg")
# Compiled programs are cached on disk, so each distinct step compiles once per test session.
jax.config.update(
  "jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


import pytest  # noqa: E402


@pytest.fixture(params=["xla", "winograd"])
def conv_impl(request) -> str:
  """Each core test once on XLA's convolutions (the GPU/TPU path), once on the CPU lowering."""
  return request.param
