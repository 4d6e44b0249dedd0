"""Preemption: turn SIGTERM / SIGINT into "checkpoint at the end of this step, then exit 0".

Cloud TPU and most schedulers announce a preemption with SIGTERM and kill the process a little
later. The first signal only sets a flag that the training loop reads between steps; a second
signal ends the process at once. With several processes, JAX's coordination service decides the
step at which every process stops, so they all write the same checkpoint.
"""

from __future__ import annotations

import signal
import sys
import types

import jax
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Context manager watching for SIGTERM and SIGINT while training runs."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._previous: dict[int, object] = {}
    self._received: int | None = None

  def __enter__(self) -> PreemptionGuard:
    # With several processes, jax.distributed's own SIGTERM handler feeds the sync point below.
    multi = jax.process_count() > 1
    for sig in self._signals:
      if not (multi and sig == signal.SIGTERM):
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
  def signal_name(self) -> str:
    return signal.Signals(self._received).name if self._received is not None else ""

  def should_stop(self, step: int) -> bool:
    """True once a stop was requested; the same answer, at the same step, on every process."""
    if jax.process_count() > 1:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._received is not None
