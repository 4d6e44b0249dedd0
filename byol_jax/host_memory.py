"""Keeping freed host memory in the process, so that XLA:CPU steps do not page-fault.

XLA:CPU allocates a step's buffers afresh at every execution. glibc's malloc serves blocks above
its mmap threshold (32 MiB at most) with new mappings and unmaps them on free, and the per-thread
arenas serving JAX's dispatch thread unmap their heaps once empty, so every step faults its whole
working set back in, page by page, each page zeroed by the kernel: on the standard CPU workload
of ``experiments/benchmark_step.py`` (ResNet-18, 64x64, batch 64) that was ~213,000 page faults
per step, a quarter of the step's time. With JAX's CPU dispatch synchronous (the step's buffers
then come from the calling thread's arena, the main heap), large blocks served from that heap and
the heap never trimmed, the same step faults tens to ~11,000 times (it varies from process to
process) and runs ~1.3x as fast. Freed memory stays reusable by the process (as with tcmalloc or
jemalloc): its resident size stays near its peak instead of shrinking between steps. tf.data's threads keep their own arenas, so the input
pipeline is not slowed (a single arena for all threads would have cost it ~25%).

:func:`configure` is for entry points (``byol_jax.main``, ``experiments/benchmark_step.py``): it
must run before JAX creates its CPU client, i.e. before the first computation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import jax

from byol_jax.config_base import HOST_MEMORY_POLICIES

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1
# The same settings for another process, given at its start (e.g. to time other code like for like).
GLIBC_TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={_INT_MAX}"


def glibc() -> ctypes.CDLL | None:
  """The C library if it is glibc (the only one whose malloc these settings address), else None."""
  name = ctypes.util.find_library("c")
  if os.name != "posix" or not name:
    return None
  try:
    libc = ctypes.CDLL(name)
    libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl and macOS have no such symbol)
  except (OSError, AttributeError):
    return None
  return libc


def retain_freed_memory() -> bool:
  """glibc's malloc: every block from the heap (no mmap), the heap never trimmed.

  Returns False, changing nothing, where the C library is not glibc.
  """
  libc = glibc()
  if libc is None:
    return False
  return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def configure(policy: str) -> bool:
  """Applies ``policy`` ("auto": when JAX computes on the CPU; "on"; "off"); True if applied.

  Call before JAX's first computation: CPU dispatch is made synchronous when the CPU client is
  created. That is harmless where the CPU is not the compute device (its client then only holds
  host-side arrays), so it is done for "auto" before the backend is known; ``jax.distributed``
  must already be initialised, since "auto" then asks JAX for its default backend.
  """
  if policy not in HOST_MEMORY_POLICIES:
    raise ValueError(f"host memory policy {policy!r} is not one of {HOST_MEMORY_POLICIES}")
  if policy == "off":
    return False
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  if policy == "auto" and jax.default_backend() != "cpu":
    return False
  return retain_freed_memory()
