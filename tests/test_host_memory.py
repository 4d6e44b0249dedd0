"""The host memory policy: with it, a repeated XLA:CPU computation stops page-faulting its buffers."""

import os
import subprocess
import sys

import pytest

from byol_jax import config_base, host_memory
from byol_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process, as the policy must be set before JAX's first computation. The stacked
# temporary (64 MiB) is above glibc's largest mmap threshold, so without the policy each call maps
# and faults it in afresh. The median call is compared: with the policy, a call may still grow the
# heap once (a whole call's worth of faults, seen in CI), but the calls after it reuse the memory.
_PROBE = """
import resource, statistics, sys
import jax, jax.numpy as jnp
from byol_jax import host_memory
print(host_memory.configure(sys.argv[1]))
f = jax.jit(lambda x, w: (jnp.stack([x * k for k in range(4)]) @ w).sum())
x, w = jnp.ones((4096, 1024)), jnp.ones((1024, 8))
for _ in range(2):
  f(x, w).block_until_ready()
faults = []
for _ in range(7):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


def _faults_per_call(policy: str) -> tuple[bool, float]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  done = subprocess.run(
    [sys.executable, "-c", _PROBE, policy],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  applied, faults = done.stdout.split()[-2:]
  return applied == "True", float(faults)


@pytest.mark.skipif(host_memory.glibc() is None, reason="the policy acts on glibc's malloc")
def test_policy_stops_the_page_faults_of_repeated_computations():
  applied_off, faults_off = _faults_per_call("off")
  applied_auto, faults_auto = _faults_per_call("auto")
  assert not applied_off
  assert applied_auto
  # 64 MiB is 16,384 pages of 4 KiB: without the policy every call faults (nearly) all of them.
  assert faults_off > 8000, faults_off
  assert faults_auto < 500, faults_auto


def test_bad_policy_is_a_one_line_config_error():
  config = config_base.get_base_config()
  config.host_memory = "always"
  with pytest.raises(UserError, match=r"config\.host_memory"):
    config_base.validate_config(config)
  with pytest.raises(ValueError, match="always"):
    host_memory.configure("always")
