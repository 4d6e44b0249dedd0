"""Checkpoints of the full training state with Orbax, plus the config that produced them.

Each checkpoint is a step folder under ``<workdir>/checkpoints`` holding two items: ``state`` (a
tree of numpy arrays: online and target parameters and BatchNorm state, optimiser state, step) and
``config`` (the run's config as JSON, so a checkpoint can be loaded without the config file at
hand; every random draw is keyed by its ``seed`` and the step, so no PRNG state needs saving).
Saves are synchronous, and Orbax writes each step into a temporary folder that it renames when
complete, so an interrupted save never damages an earlier checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from byol_jax import parallel
from byol_jax.errors import UserError

CHECKPOINT_SUBDIR = "checkpoints"


def resolve_checkpoint_dir(path: str) -> tuple[str, int | None]:
  """Maps a workdir, its checkpoints folder, or one step folder to (checkpoints dir, step).

  The step is None when ``path`` names a folder of checkpoints (the latest one is meant).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise UserError(
      f"Checkpoint path {path} does not exist: pass a training workdir or a checkpoint step folder."
    )
  if os.path.isdir(os.path.join(path, CHECKPOINT_SUBDIR)):
    return os.path.join(path, CHECKPOINT_SUBDIR), None
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), int(base)
  if any(d.isdigit() for d in os.listdir(path)):
    return path, None
  raise UserError(
    f"{path} holds no byol_jax checkpoint: pass a training workdir or a checkpoint step folder."
  )


class CorruptCheckpointError(Exception):
  """A checkpoint whose files exist but cannot be read back."""


class ShapeMismatchError(UserError):
  """A checkpoint whose arrays do not have the shapes of the model it is restored into."""


def _path(keys: tuple) -> str:
  """A leaf's path with tuple indices and named-tuple fields written as Orbax stores them."""
  parts = []
  for k in keys:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


class Checkpointer:
  """Saves and restores training states in one folder, keeping the last ``keep``."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      # Synchronous saves: when save() returns the checkpoint is complete, so a kill at any
      # later moment loses at most the steps since it (the state is small next to a step's
      # work between checkpoints).
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
      ),
      item_handlers=dict(state=ocp.StandardCheckpointHandler(), config=ocp.JsonCheckpointHandler()),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, config: Mapping[str, Any]) -> None:
    """Writes ``state`` (a pytree of arrays on the host) and the config at ``step``."""
    state = jax.tree.map(np.asarray, state)
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(dict(config))
        ),
        force=True,
      )
    except Exception as e:  # a full disk, a lost mount, no permission: whatever the storage says
      raise UserError(
        f"Writing checkpoint {step} to {self.directory} failed ({_first_line(e)}); the earlier "
        "checkpoints are intact: free space or fix the folder, then run the same command to resume."
      ) from e

  def restore_config(self, step: int | None = None) -> dict[str, Any]:
    """The config saved with the checkpoint at ``step`` (default: the latest)."""
    step = self._require_step(step)
    path = os.path.join(self.directory, str(step), "config", "metadata")
    try:
      with open(path) as f:  # read directly: no arrays to restore
        return json.load(f)
    except (OSError, ValueError) as e:
      raise CorruptCheckpointError(f"{self.directory}/{step}: unreadable config ({e})") from e

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores the state at ``step`` (default: the latest) into the structure of ``target``.

    Raises UserError when the checkpoint holds other shapes than ``target`` (another
    architecture), and CorruptCheckpointError when its files cannot be read. Entries of a dict
    ``target`` that hold no arrays and that the checkpoint lacks (fields added to the state
    after it was written, empty in this run) are restored as they are in ``target``.
    """
    step = self._require_step(step)
    target = jax.tree.map(np.asarray, target)
    try:
      metadata = self._manager.item_metadata(step)["state"]
      saved = {_path(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(metadata)}
    except Exception as e:
      raise CorruptCheckpointError(f"{self.directory}/{step}: {_first_line(e)}") from e
    newer = {}
    if isinstance(target, Mapping) and hasattr(metadata, "keys"):  # (Orbax's tree metadata)
      on_disk = set(metadata.keys())
      newer = {k: v for k, v in target.items() if k not in on_disk and not jax.tree.leaves(v)}
      target = {k: v for k, v in target.items() if k not in newer}
    wanted = {_path(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(target)}
    if saved != wanted:
      diff = sorted(set(saved.items()) ^ set(wanted.items()))[:2]
      raise ShapeMismatchError(
        f"Checkpoint {self.directory}/{step} does not fit this model (first differences: {diff}): "
        "use the config it was trained with, or a fresh --workdir."
      )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )
    except Exception as e:
      raise CorruptCheckpointError(f"{self.directory}/{step}: {_first_line(e)}") from e
    return {**restored.state, **newer} if newer else restored.state

  def restore_latest_intact(
    self,
    target: Any,
    check_config: Callable[[dict[str, Any]], None] | None = None,
    all_agree: Callable[[bool, str], bool] | None = None,
  ) -> tuple[int, Any] | None:
    """The newest checkpoint that reads back completely, as (step, state); None if none.

    A damaged newer checkpoint (a crash or a full disk during its write, a truncated copy) is
    moved aside (see :meth:`move_aside`) with a warning rather than ending the run, so that the
    run can write that step again. ``check_config`` sees each candidate's saved config first and
    may refuse it by raising UserError; once it accepted the config, arrays of other shapes than
    ``target``'s (e.g. a lost array metadata file) mean damage. With several processes, ``all_agree`` (the local verdict
    and a unique name -> whether every process could read it) makes one decision for all: a step
    that any process cannot read is skipped by all of them.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        if check_config is not None:
          check_config(self.restore_config(step))
        state, problem = self.restore(target, step), ""
      except CorruptCheckpointError as e:
        state, problem = None, str(e)
      except ShapeMismatchError as e:
        if check_config is None:  # no saved config was compared: maybe another architecture
          raise
        state, problem = None, f"its arrays do not match its saved config: {e}"
      readable = state is not None
      if all_agree is not None:
        readable = all_agree(readable, f"restore_{step}")
      if readable:
        return step, state
      moved = self.move_aside(step)
      if jax.process_index() == 0:
        print(
          f"warning: checkpoint {step} is damaged ({problem or 'unreadable on another process'});"
          f" moved to {moved}, falling back to an earlier one.",
          flush=True,
        )
    return None

  def move_aside(self, step: int) -> str:
    """Renames a step's folder to ``<directory>_damaged/<step>[-k]`` (never deletes it) so the
    run can write that step again; returns the new path. Only process 0 moves it, then every
    process waits for the move and rereads the folder."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(f"{self.directory}_damaged", str(step))
    k = 1
    while os.path.exists(target):
      k += 1
      target = os.path.join(f"{self.directory}_damaged", f"{step}-{k}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(source, target)
    parallel.sync_processes(f"moved_aside_{step}")
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def _require_step(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"No checkpoint in {self.directory}: train first, or pass the right workdir.")
    return step
