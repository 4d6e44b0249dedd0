"""Command-line entry point: ``python -m byol_jax.main --config=configs/<file>.py --workdir=DIR``.

Parses flags, loads the config (with ``--config.field=value`` overrides), and dispatches on
``config.mode``. Problems the user can fix are printed as one line, with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from byol_jax import config_base, console
from byol_jax.errors import UserError

_DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic.py"
)


def _define_flags() -> None:
  # ml_collections applies the --config.* overrides while it defines the flag, so a bad override
  # surfaces here: defining the flags inside entry_point() lets it become a one-line error.
  config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Path to a config file (its get_config() is used).", lock_config=True
  )
  flags.DEFINE_string(
    "workdir", None, "Where checkpoints and logs go (default: ./runs/<config file name>)."
  )
  flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 for multi-process runs (jax.distributed)."
  )
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
  flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-process run with the coordinator found from the environment (Cloud TPU, SLURM, ...).",
  )
  flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    100,
    "Multi-process runs: when a process stops answering for this long, the others exit.",
  )


def _load_config():
  try:
    config = flags.FLAGS.config
    config.mode  # noqa: B018 (the config loads lazily; a file that does not load fails here)
    return config
  except OSError as e:  # a config file that does not exist or does not load
    raise UserError(" ".join(str(e).split())[:300] + ": check the --config path.") from e


def _run(argv) -> None:
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments {argv[1:]}: options go as --flag=value.")
  FLAGS = flags.FLAGS
  # Other libraries' INFO lines only when asked for (--verbosity=0 or higher).
  console.set_library_verbosity(FLAGS["verbosity"].present)
  config = _load_config()
  config_base.validate_config(config)
  console.drop_repeated_checkpoint_errors()
  import jax

  jax.config.update("jax_default_prng_impl", config.prng_impl)
  from byol_jax import preemption

  # Pretraining records SIGTERM / SIGINT from here on, so that a signal during the set-up still
  # ends the run cleanly; JAX's preemption service would take SIGTERM for itself (see
  # byol_jax/preemption.py). Other modes keep the default handlers.
  pretraining = config.mode == "pretrain"
  with preemption.StopSignals() if pretraining else contextlib.nullcontext() as signals:
    if FLAGS.coordinator_address or FLAGS.distributed:
      jax.config.update("jax_enable_preemption_service", False)
      jax.distributed.initialize(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
      )
    from byol_jax import host_memory

    host_memory.configure(config.host_memory)
    _dispatch(config, _workdir(), signals)


def _workdir() -> str:
  return flags.FLAGS.workdir or os.path.join(
    "runs", os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  )


def _dispatch(config, workdir: str, signals) -> None:
  if config.mode == "pretrain":
    from byol_jax import train

    train.pretrain(config, workdir, signals)
  elif config.mode in ("linear_eval", "finetune", "embed"):
    from byol_jax import evaluate

    getattr(evaluate, config.mode)(config, workdir)
  elif config.mode == "export_torch":
    from byol_jax import interop

    output = config.eval.output or os.path.join(workdir, "encoder_torch.pt")
    interop.export_torch(config.checkpoint, output)
  elif config.mode == "import_original":
    from byol_jax import interop

    interop.import_original(config.checkpoint, workdir)
  elif config.mode == "prepare":
    from byol_jax import run_data

    run_data.prepare(config, workdir)
  elif config.mode == "report":
    from byol_jax import report

    written = report.report(
      config.checkpoint, workdir, config.eval.map_method, config.eval.map_points
    )
    print(
      f"Wrote {len(written)} picture(s) to {workdir}: {', '.join(map(os.path.basename, written))}."
    )


def main(argv) -> None:
  try:
    _run(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _config_error(e: Exception) -> str:
  if isinstance(e, (AttributeError, KeyError)):  # how ml_collections reports an unknown field
    text = str(e).encode().decode("unicode_escape").strip("\"' ")
    name, _, hint = text.partition("\n")
    hint = f" ({hint.strip()})" if hint.strip() else ""
    return (
      f"unknown config field {name.strip(chr(39))!r} in the --config.* overrides{hint}: the "
      "fields are listed in byol_jax/config_base.py and the config file."
    )
  return f"bad command line: {str(e).splitlines()[0]}"


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    print(f"error: {_config_error(e)}", file=sys.stderr)
    sys.exit(2)


def entry_point() -> None:
  try:
    _define_flags()
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    print(f"error: {_config_error(e)}", file=sys.stderr)
    sys.exit(2)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  entry_point()
