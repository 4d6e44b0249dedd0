"""Placing host arrays on the local devices for a ``pmap``-ed step, and fetching them back.

``pmap`` takes arrays whose leading axis is the local device axis. These helpers build such arrays
directly with a sharding over the local devices (the public replacement of the removed
``jax.device_put_replicated``/``device_put_sharded``), so no copy goes through device 0 first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from byol_jax.errors import UserError

# The name of the device axis of the pmap-ed steps; placing arrays on a mesh axis of the same name
# gives them exactly the sharding that pmap returns, so feeding outputs back in never recompiles.
AXIS = "batch"
# Numbers the barriers between processes: the coordination service needs a new name for each.
_BARRIERS = itertools.count()


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Per-process batch size; a UserError unless it divides evenly."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(
      f"The batch size {global_batch_size} must be a positive multiple of the number of "
      f"processes ({process_count}): change --config.batch_size."
    )
  return global_batch_size // process_count


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Batches of an evaluation pass on every process: each process's contiguous shard of
  ``num_examples``, ``batch_size // process_count`` per batch, the last one padded."""
  local = local_batch_size(batch_size, process_count)
  return math.ceil(math.ceil(num_examples / process_count) / local)


def _sharding(devices: Sequence[jax.Device]) -> NamedSharding:
  return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """One copy of every leaf per device, stacked on a new leading device axis."""
  devices = list(devices or jax.local_devices())
  sharding = _sharding(devices)
  return jax.tree.map(
    lambda x: jax.device_put(
      np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), sharding
    ),
    tree,
  )


def shard(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
  """Splits every leaf's leading axis evenly over the devices: [B, ...] -> [D, B / D, ...]."""
  devices = list(devices or jax.local_devices())
  sharding = _sharding(devices)
  n = len(devices)
  return jax.tree.map(
    lambda x: jax.device_put(np.reshape(x, (n, x.shape[0] // n, *x.shape[1:])), sharding), tree
  )


def _first(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array):
    # Copy the first local device's buffer: indexing (``x[0]``) would compile and run a slicing
    # computation over the array's devices for every leaf. A copy, not a view: the buffer may be
    # donated to the next step.
    shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    data = np.array(shard.data, copy=True)
    return np.asarray(data[0]) if data.ndim == x.ndim else data
  return np.asarray(x)[0]


def unreplicate(tree: Any) -> Any:
  """The first local device's copy of every leaf, as host numpy arrays."""
  return jax.tree.map(_first, tree)


def sync_processes(what: str) -> None:
  """Waits until every process gets here (through the coordination service, not a collective).

  Call it before a collective that processes may reach far apart: gloo, the CPU collectives,
  gives up on peers 30 s late, and one process may compile for minutes what another found in the
  compilation cache. Every process must make the same calls, in the same order.
  """
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost

    name = f"byol_jax_{next(_BARRIERS)}_{what}"
    multihost.sync_global_processes(name, processes=set(range(jax.process_count())), timeout=3600)


def compile_then_sync(p_step, args: tuple[Any, ...], what: str) -> None:
  """Compiles ``p_step`` for ``args`` (its first call then finds it in JAX's cache) and waits for
  every process, so that all reach the step's collectives together (see :func:`sync_processes`)."""
  if jax.process_count() > 1:
    p_step.lower(*args).compile()
    sync_processes(what)


def check_devices(batch_size: int, grad_accum_steps: int = 1) -> int:
  """Returns the per-device batch; raises UserError when the batch does not split evenly over
  the devices, or the per-device batch into ``grad_accum_steps`` micro-batches."""
  n = jax.device_count()
  if batch_size % n:
    raise UserError(
      f"config.batch_size={batch_size} is not divisible by the {n} devices: "
      f"use a multiple of {n}, e.g. --config.batch_size={max(n, batch_size // n * n)}."
    )
  per_device = batch_size // n
  if per_device % grad_accum_steps:
    fits = max(d for d in range(1, grad_accum_steps + 1) if per_device % d == 0)
    raise UserError(
      f"The per-device batch {per_device} (config.batch_size={batch_size} over {n} devices) "
      f"does not split into config.optim.grad_accum_steps={grad_accum_steps} micro-batches: "
      f"use a divisor of {per_device}, e.g. --config.optim.grad_accum_steps={fits}, or a "
      f"batch size that is a multiple of {n * grad_accum_steps}."
    )
  return per_device
