"""The test process keeps the programs it compiled in memory instead of reading them back from disk.

The suite rebuilds the same steps many times (each ``pretrain`` call builds its own ``pmap``), and
JAX's persistent compilation cache would then deserialise the program the process wrote minutes
earlier. Deserialising an XLA:CPU executable late in a full test session crashed the test process
(a segmentation fault inside ``backend.deserialize_executable``, in CI and locally, each time in
``tests/test_train.py``; the same entries deserialise fine in a fresh process). So the test
process answers JAX's cache lookups from a map of the executables it compiled itself, keyed by
JAX's own cache key (as a second call of one jitted function reuses its executable), and neither
reads nor writes the disk cache. The command-line subprocesses of the multi-process tests still
share the disk cache (``tests/processes.py``): they are short-lived and start from it.

Each test module starts afresh (:func:`forget`, from ``conftest.py``), together with JAX's own
in-memory caches, so that the test process does not grow with every program of the session.
"""

import jax
from jax._src import compilation_cache

_programs: dict = {}


def install() -> None:
  """Replaces JAX's persistent-cache read and write with an in-memory map (key -> executable)."""

  def put_executable_and_time(cache_key, module_name, executable, backend, compile_time):
    _programs[cache_key] = (executable, compile_time)

  def get_executable_and_time(cache_key, compile_options, backend, executable_devices):
    held = _programs.get(cache_key)
    if held is None or not _same_devices(held[0], executable_devices):
      return None, None
    return held

  compilation_cache.get_executable_and_time = get_executable_and_time
  compilation_cache.put_executable_and_time = put_executable_and_time


def forget() -> None:
  """Drops every program compiled so far, the map's and JAX's in-memory caches."""
  _programs.clear()
  jax.clear_caches()


def _same_devices(executable, executable_devices) -> bool:
  return [d.id for d in executable.local_devices()] == [d.id for d in executable_devices]
