"""What reaches the console: the project's own lines, not other libraries' chatter or repeats.

By default a command-line run shows the project's lines (start summary, progress, warnings the
user can act on, errors, end summary) and other libraries' warnings and errors; their INFO
records (Orbax's per-save reports, JAX's backend probing, TensorFlow's C++ start-up banners) are
off. ``--verbosity=0`` (absl's flag: 0 is INFO, 1 DEBUG) brings them back
(:func:`set_library_verbosity`).

Reading an encoder's arrays out of a checkpoint makes Orbax warn that the item folder has no
metadata file of its own (it sits one level up, with the step): harmless, and dropped while
``byol_jax`` reads (:func:`without_missing_metadata_warning`).

When a checkpoint read or write fails (a damaged file, a full disk), Orbax's worker threads report
the failure once more after the main thread has raised it and closed their event loop: a
traceback from the save thread's future and, from each read or write still in flight, a
``RuntimeError: Event loop is closed`` that Python can only print (an "unraisable" exception).
The main thread's error already says what happened, in one line; these are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from absl import logging as absl_logging

# TensorFlow's C++ log level: 1 hides its INFO lines (banners), keeps warnings and errors.
_TF_QUIET, _TF_ALL = "1", "0"


def set_library_verbosity(verbose: bool) -> None:
  """Other libraries' INFO records on (``verbose``) or off, warnings and errors always on.

  Call it before TensorFlow is imported (its C++ logging reads the environment once). An
  explicit ``TF_CPP_MIN_LOG_LEVEL`` in the environment is left as it is.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _TF_ALL if verbose else _TF_QUIET)
  if not verbose:
    absl_logging.set_verbosity(absl_logging.WARNING)


class _MissingItemMetadata(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Metadata file does not exist")


@contextlib.contextmanager
def without_missing_metadata_warning() -> Iterator[None]:
  """Drops Orbax's "Metadata file does not exist" warning (see the module docstring) inside."""
  logger, dropped = logging.getLogger("absl"), _MissingItemMetadata()
  logger.addFilter(dropped)
  try:
    yield
  finally:
    logger.removeFilter(dropped)


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
