"""Command-line entry point: ``python -m byol_jax.main --config=configs/<file>.py --workdir=DIR``.

Parses flags, loads the config (with ``--config.field=value`` overrides), and dispatches on
``config.mode``. Problems the user can fix are printed as one line, with a non-zero exit.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from byol_jax.errors import UserError

_DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic.py"
)

_CONFIG = config_flags.DEFINE_config_file(
  "config", _DEFAULT_CONFIG, "Path to a config file (its get_config() is used).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where checkpoints and logs go (default: ./runs/<config file name>)."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 for multi-process runs (jax.distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index in a multi-process run."
)


def _workdir() -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  return os.path.join("runs", name)


def _run(argv) -> None:
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments {argv[1:]}: options go as --flag=value.")
  config = _CONFIG.value
  import jax

  jax.config.update("jax_default_prng_impl", config.prng_impl)
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if config.mode == "pretrain":
    from byol_jax import train

    train.pretrain(config, _workdir())
  else:
    raise UserError(f"config.mode={config.mode!r} is not a known mode (pretrain).")


def main(argv) -> None:
  try:
    _run(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl's parser, with config/flag errors turned into one line instead of usage text."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def entry_point() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  entry_point()
