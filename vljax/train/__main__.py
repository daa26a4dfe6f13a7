"""`python -m vljax.train --config configs/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]`.

Trains, evaluates and checkpoints; run it again with the same workdir and it resumes.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vljax.config import put_recipe_dirs_on_path

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/clip_shapes.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, metrics.jsonl, checkpoints/, tb/")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                                   "(with --num_processes, --process_id); default: detect SLURM / TPU / env")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing (usage and exit 1 on a bad flag), with the recipe's directory first on sys.path:
  ml_collections loads --config by its path alone, and the recipe imports `common` next to it."""
  put_recipe_dirs_on_path(argv)
  return app.parse_flags_with_usage(argv)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # library INFO chatter (Orbax) would drown the progress bar
    logging.set_verbosity(logging.WARNING)
  from vljax.parallel import distributed  # after flags: keeps --help fast
  from vljax.train.trainer import train_and_evaluate, write_final_metrics
  try:
    # First, before anything touches a JAX backend.
    info = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info("distributed: %s", info)
    final = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  path = write_final_metrics(_WORKDIR.value, final)
  if path:
    print(f"final evaluations: {path} (table and curves: python -m vljax.report --workdir {_WORKDIR.value})")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
