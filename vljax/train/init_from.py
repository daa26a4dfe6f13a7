"""`init_from`: a fresh run's params, or subtrees of them, taken from other runs' checkpoints.

  init_from = dict(workdir="runs/clip", subtree="img", step=-1,   # one source, a step or the latest
                   sources=("runs/lm:txt,lm",))                 # more, as WORKDIR:SUBTREE[,SUBTREE]

Every picked param must match the model's shape, and no param may come from two sources.
"""

from __future__ import annotations

import jax
from absl import logging
from flax import traverse_util

from vljax import checkpoint_io


def sources(init_from) -> list[tuple[str, list[str], int | None]]:
  """(workdir, subtrees, step) of every source: init_from.workdir/subtree/step, then each
  "WORKDIR:SUBTREE[,SUBTREE...]" of init_from.sources (their latest step)."""
  out = []
  if init_from.get("workdir"):
    step = init_from.get("step", -1)
    out.append((init_from.workdir, _subtrees(init_from.get("subtree", "")), None if step < 0 else step))
  for spec in init_from.get("sources", ()) or ():
    workdir, sep, subtree = str(spec).rpartition(":")
    if not sep or not workdir:
      raise ValueError(f"init_from.sources entry {spec!r} is not 'WORKDIR:SUBTREE[,SUBTREE...]'")
    out.append((workdir, _subtrees(subtree), None))
  return out


def _subtrees(spec: str) -> list[str]:
  """'a,b/c' -> ['a', 'b/c']; '' -> [''] (everything)."""
  return [part.strip().strip("/") for part in spec.split(",")] or [""]


def replace_params(state, init_from, expected_shapes: dict):
  """`state` with the subtrees its init_from sources name replaced by their checkpoints' params,
  cast to the fresh params' dtypes and placed on their shardings."""
  flat = traverse_util.flatten_dict(state.params, sep="/")
  taken: dict[str, str] = {}  # param -> the workdir it came from
  for workdir, prefixes, step in sources(init_from):
    loaded, step = checkpoint_io.load_params(workdir, step)
    under = lambda k, p: not p or k == p or k.startswith(p + "/")
    in_subtree = lambda k: any(under(k, p) for p in prefixes)
    flat_loaded = traverse_util.flatten_dict(loaded, sep="/")
    for p in prefixes:
      if not any(under(k, p) for k in flat_loaded):
        raise ValueError(f"init_from subtree {p!r} matches nothing in {workdir!r}; its top-level subtrees "
                         f"are {sorted(loaded)}")
    picked = {k: v for k, v in flat_loaded.items() if in_subtree(k)}
    problems = checkpoint_io.shape_mismatches({k: list(v.shape) for k, v in picked.items()},
                                              {k: s for k, s in expected_shapes.items() if in_subtree(k)})
    twice = sorted(k for k in picked if k in taken)
    if twice:
      problems.append(f"{twice[0]} (and {len(twice) - 1} more) already comes from {taken[twice[0]]!r}")
    if problems:
      raise ValueError(f"init_from {workdir!r} (step {step}) does not fit this model:\n  " + "\n  ".join(problems))
    for k, v in picked.items():
      flat[k] = jax.device_put(v.astype(flat[k].dtype), flat[k].sharding)
      taken[k] = workdir
    logging.info("init_from: %d params under %r from %s step %d", len(picked), prefixes, workdir, step)
  return state.replace(params=traverse_util.unflatten_dict(flat, sep="/"))
