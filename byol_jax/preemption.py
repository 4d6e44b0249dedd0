"""Preemption: SIGTERM / SIGINT become "checkpoint after this step, then exit 0" on every process.

Cloud TPU and most schedulers announce a preemption with SIGTERM (a user at a terminal with
SIGINT) and kill the process a little later. The first signal only sets a flag that the training
loop reads between steps; a second one ends the process at once. The handlers are installed before
any slow set-up (``jax.distributed``, folder scans, restoring, compiling), so an early signal also
ends the run cleanly.

With several processes a signal may reach only some of them, at different steps. :class:`StopVote`
makes one decision for all: every step adds up the processes' flags with a collective over all
devices, and every process reads the previous step's sum, so all stop after the same step. (JAX's
own preemption service watches SIGTERM only; ``main`` turns it off so these handlers see both.)
"""

from __future__ import annotations

import signal
import sys
import types

import jax
import numpy as np
from jax import lax

from byol_jax import parallel


class StopSignals:
  """Context manager recording SIGTERM and SIGINT; a second signal exits at once."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self._received: int | None = None

  def __enter__(self) -> StopSignals:
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self._received is not None:
      print(f"Second {signal.Signals(signum).name}: exiting now.", file=sys.stderr, flush=True)
      sys.exit(128 + signum)
    self._received = signum

  @property
  def requested(self) -> bool:
    """Whether a stop signal reached this process."""
    return self._received is not None

  @property
  def signal_name(self) -> str:
    return signal.Signals(self._received).name if self._received is not None else ""


class StopVote:
  """One decision, on every process, of the step after which a run stops.

  Call :meth:`after_step` once per step, after dispatching it. With one process the local flag
  decides at once. With several, each call starts a sum of the flags over all devices and reads
  the previous call's sum (finished or nearly, as the step before it is): every process reads the
  same sums, so all stop after the same step, at most one step after the first signal.
  """

  def __init__(self, signals: StopSignals):
    self._signals = signals
    self._multi = jax.process_count() > 1
    self._pending = None
    if self._multi:
      axis = parallel.AXIS
      self._sum = jax.pmap(lambda x: lax.psum(x, axis), axis_name=axis)

  def after_step(self) -> bool:
    """Whether to stop now (after the step just dispatched)."""
    if not self._multi:
      return self._signals.requested
    flags = np.zeros([jax.local_device_count()], np.int32)
    flags[0] = int(self._signals.requested)
    previous, self._pending = self._pending, self._sum(parallel.shard(flags))
    return previous is not None and int(np.sum(parallel.unreplicate(previous))) > 0


def any_process(flag: bool, name: str) -> bool:
  """Whether ``flag`` holds on any process (all processes must call it; ``name`` says what for).

  A barrier through the coordination service first, so that the processes reach the collective
  together (gloo, the CPU collectives, gives up on peers that arrive 30 s late).
  """
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  parallel.sync_processes(name)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def all_processes(flag: bool, name: str) -> bool:
  """Whether ``flag`` holds on every process (all processes must call it)."""
  return not any_process(not flag, name)
