"""Orbax's thread-side repeats of a failed checkpoint read or write stay off the console."""

import logging
import sys
import types

from byol_jax import console


def test_closed_event_loop_reports_are_dropped_and_other_errors_kept(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  absl = logging.getLogger("absl")
  monkeypatch.setattr(absl, "filters", list(absl.filters))
  console.drop_repeated_checkpoint_errors()
  console.drop_repeated_checkpoint_errors()  # once per process, whatever the calls

  def report(exc):
    sys.unraisablehook(types.SimpleNamespace(exc_value=exc))

  report(RuntimeError("Event loop is closed"))
  other = ValueError("something else")
  report(other)
  assert [u.exc_value for u in seen] == [other]

  def record(pathname, message, level=logging.ERROR):
    return logging.LogRecord("absl", level, pathname, 1, message, (), None)

  future = "/site-packages/orbax/checkpoint/_src/futures/future.py"
  assert not absl.filter(record(future, "_SignalingThread.run() raised an exception: ENOSPC"))
  assert absl.filter(record(future, "Waiting for signals"))
  assert absl.filter(record("/byol_jax/train.py", "thread raised an exception"))
  assert len(absl.filters) == 1
