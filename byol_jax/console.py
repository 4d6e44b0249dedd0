"""What reaches the console: the project's own lines, not other libraries' repeats of them.

When a checkpoint read or write fails (a damaged file, a full disk), Orbax's worker threads report
the failure once more after the main thread has raised it and closed their event loop: a
traceback from the save thread's future and, from each read or write still in flight, a
``RuntimeError: Event loop is closed`` that Python can only print (an "unraisable" exception).
The main thread's error already says what happened, in one line; these are dropped.
"""

from __future__ import annotations

import logging
import sys


def _is_closed_loop_report(unraisable) -> bool:
  exc = unraisable.exc_value
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _OrbaxThreadFailures(logging.Filter):
  """Drops Orbax's "<thread> raised an exception" records (the exception is raised again in the
  main thread, where it becomes the run's one-line error)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (
      "orbax" in record.pathname
      and record.levelno >= logging.ERROR
      and "raised an exception" in record.getMessage()
    )


def drop_repeated_checkpoint_errors() -> None:
  """Installs the filters described in the module docstring (once per process)."""
  previous = sys.unraisablehook
  if getattr(previous, "byol_jax", False):
    return

  def hook(unraisable) -> None:
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook.byol_jax = True
  sys.unraisablehook = hook
  logging.getLogger("absl").addFilter(_OrbaxThreadFailures())
