"""`python -m vljax.bench --config configs/NAME.py[:ARG] [--config.KEY=VALUE ...] [--steps 20] [--warmup 3]
[--json_out PATH]`.

Compiles the recipe's train step on the devices present, times it on synthetic batches already on
device, and prints a markdown table, then the same numbers as one line `json: {...}` (see
vljax/bench/train.py for what each means). Bad input exits 2 with `error: ...` on stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from vljax.config import put_recipe_dirs_on_path

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/clip_shapes.py", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (median and p90 over them)")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling, before the timed ones")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 0, "Also trace this many steps and print their time by op "
                                      "(jax.profiler; 0: no trace)")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the JSON result to this file")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                                   "(with --num_processes, --process_id); default: detect SLURM / TPU / env")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes in all")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index")
flags.mark_flags_as_required(["config"])


def _fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _unknown_key(error: Any, argv: list[str]) -> str:
  """ml_collections' "'key'\nDid you mean ..." as a message naming the flag and the valid keys."""
  from vljax import config as config_lib
  while isinstance(error, BaseException) and error.args:  # AttributeError(KeyError(message))
    error = error.args[0]
  key, _, hint = str(error).partition("\n")
  key = key.strip("'\"")
  flag = next((a for a in argv[1:] if a.startswith("--config.") and key in a), None)
  message = f"config: unknown key {key!r}" + (f" in {flag}" if flag else "")
  if hint:
    message += f"; {hint.strip()}"
  section = flag[len("--config."):].partition("=")[0].rpartition(".")[0] if flag else None
  base = config_lib.base_config()
  if section == "":
    message += f"; valid top-level keys: {sorted(base.keys())}"
  elif section in ("data", "optimizer", "schedule", "init_from", "precision", "checkpoint", "mesh"):
    message += f"; valid keys of {section}: {sorted(base[section].keys())}"
  return message


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with bad flags reported as `error: ...` and exit 2 instead of a traceback; the
  recipe's directory goes on sys.path first (its `import common`)."""
  put_recipe_dirs_on_path(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the recipe lacks
    _fail(_unknown_key(e, argv))
  except (flags.Error, TypeError, ValueError) as e:
    _fail(str(e))


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  import jax  # after flags: keeps --help fast

  from vljax.bench import train as bench
  from vljax.parallel import distributed
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    result = bench.run(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value, profile_steps=_PROFILE_STEPS.value)
  except (ValueError, OSError) as e:  # OSError: config_flags reports a missing recipe file on first use
    logging.error("%s", e)
    _fail(str(e))
  if jax.process_index() != 0:
    return
  print(bench.format_table(result))
  if "op_profile" in result:
    from vljax.bench import op_profile
    print("\n" + op_profile.format_profile(result["op_profile"]))
  line = json.dumps(result)
  print(f"json: {line}")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
