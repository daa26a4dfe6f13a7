"""Reading a run's checkpoint without the trainer: where it lives, its param shapes, its params.

Inference (`vljax.load`) and the trainer (`init_from`, resume checks) both read checkpoints; this
module keeps that reading free of the training machinery (optimizer, data iterator state).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util


def checkpoint_dir(workdir: str) -> str:
  """workdir/checkpoints: absolute for local paths (Orbax needs that), as given for gs://..."""
  path = os.path.join(os.fspath(workdir), "checkpoints")
  return path if "://" in path else os.path.abspath(path)


def param_shapes(params) -> dict[str, list[int]]:
  """'img/encoder/.../kernel' -> shape: what a checkpoint must match to be restored."""
  flat = traverse_util.flatten_dict(params, sep="/")
  return {k: list(v.shape) for k, v in sorted(flat.items())}


def shape_mismatches(saved: dict, expected: dict, limit: int = 8) -> list[str]:
  problems = []
  for k in sorted(set(saved) | set(expected)):
    if k not in expected:
      problems.append(f"{k}: in checkpoint {saved[k]}, not in model")
    elif k not in saved:
      problems.append(f"{k}: in model {expected[k]}, not in checkpoint")
    elif list(saved[k]) != list(expected[k]):
      problems.append(f"{k}: checkpoint {saved[k]} vs model {expected[k]}")
  return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


WEIGHTS = ("raw", "ema")


def evaluated_weights(cfg) -> str:
  """Which weights a run's own evaluations score as its main figures (its config's ema.evaluate):
  "ema" where that is the EMA alone, else "raw"."""
  ema = cfg.get("ema", None) or {}
  return "ema" if ema.get("evaluate", "raw") == "ema" else "raw"


def load_params(workdir: str, step: int | None = None, purpose: str = "init_from", weights: str = "raw"
                ) -> tuple[dict, int]:
  """All params of a run's checkpoint as host numpy arrays (for `init_from`, `vljax.load`); with
  weights="ema", the EMA of the trainable ones (vljax/train/ema.py) in place of theirs."""
  if weights not in WEIGHTS:
    raise ValueError(f"{purpose}: weights={weights!r} is unknown; valid: {list(WEIGHTS)}")
  directory = checkpoint_dir(workdir)
  if not epath.Path(directory).is_dir():
    raise FileNotFoundError(f"{purpose}: no checkpoints in {directory!r}; train that run first")
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{purpose}: {directory!r} holds no finished checkpoint")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  shapes = meta["param_shapes"]
  item = {"params": traverse_util.unflatten_dict({tuple(k.split("/")): np.zeros(s, np.float32)
                                                  for k, s in shapes.items()})}
  if weights == "ema":
    if not meta.get("ema"):
      raise ValueError(f"{purpose}: {workdir!r} keeps no EMA of its weights (trained with ema.decay=0); "
                       "use its raw weights")
    item["ema_params"] = traverse_util.unflatten_dict({tuple(k.split("/")): np.zeros(shapes[k], np.float32)
                                                      for k in meta["trainable_params"]})
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True)))
  manager.close()
  params = out["state"]["params"]
  if weights == "ema":
    flat = traverse_util.flatten_dict(params, sep="/")
    flat.update(traverse_util.flatten_dict(out["state"]["ema_params"], sep="/"))
    params = traverse_util.unflatten_dict(flat, sep="/")
  from vljax.models import legacy  # lazy: reading a checkpoint needs no model until here

  old = legacy.checkpoint_model(meta)  # a legacy model class's tree: its composable paths
  return (legacy.TRANSLATIONS[old][1](params) if old else params), step


def pinned_step(workdir: str, step: int | None, flag: str, pinned_by: str, remedy: str) -> int:
  """The checkpoint step a resumable job reads: `step` (pinned when the job started; `pinned_by` says
  so in the error when it is gone, with `remedy`), or the latest when the job is new. `flag`: how the
  command line names the workdir (e.g. "--workdir")."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"{flag} {workdir!r} has no finished checkpoint; train it first")
  if step is not None and step not in steps:
    raise ValueError(f"{flag} {workdir!r}: {pinned_by} step {step}, which is gone; valid steps now: {steps} "
                     f"({remedy})")
  return steps[-1] if step is None else step


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of a run's finished checkpoints, oldest first ([] when there are none)."""
  directory = checkpoint_dir(workdir)
  if not epath.Path(directory).is_dir():
    return []
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(int(s) for s in manager.all_steps())
  manager.close()
  return steps
