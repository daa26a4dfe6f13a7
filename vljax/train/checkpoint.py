"""Orbax checkpoints: train state + grain iterator state + metadata, async, keep-N, any mesh.

Reading a run's params alone (vljax.load, init_from) is in vljax/checkpoint_io.py, outside train/."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store  # the default handler's; not exported
from flax import traverse_util
from grain import checkpoint as grain_checkpoint

from vljax.checkpoint_io import checkpoint_dir, param_shapes, shape_mismatches
from vljax.models import legacy
from vljax.train.optim import frozen_predicate


def state_layout(state, frozen, optimizer: dict) -> dict:
  """What the state tree depends on besides param shapes, saved in the metadata so that a resume
  with another layout names what changed: which params train (frozen) and the optimizer's state."""
  is_frozen = frozen_predicate(frozen)
  params = traverse_util.flatten_dict(state.params, sep="/")
  heads = set()  # each optimizer state leaf's path down to the param tree it mirrors
  for path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]:
    cut = next((i for i, k in enumerate(path) if isinstance(k, jax.tree_util.DictKey)), len(path))
    heads.add(jax.tree_util.keystr(tuple(path[:cut])))
  objective_state = {jax.tree_util.keystr(path): list(leaf.shape)
                     for path, leaf in jax.tree_util.tree_flatten_with_path(state.objective_state)[0]}
  return {"frozen": list(frozen), "trainable_params": sorted(k for k in params if not is_frozen(k)),
          "optimizer": dict(optimizer), "opt_state_layout": sorted(heads), "ema": state.ema_params is not None,
          "objective_state": objective_state}


def layout_changes(saved: dict, now: dict, limit: int = 4) -> list[str]:
  """How `now` (state_layout) differs from a checkpoint's metadata; checkpoints without it pass."""
  problems = []
  if "trainable_params" in saved and saved["trainable_params"] != now["trainable_params"]:
    was, now_trained = set(saved["trainable_params"]), set(now["trainable_params"])
    moved = [(what, sorted(keys)) for what, keys in (("trained in the checkpoint, frozen now", was - now_trained),
                                                     ("frozen in the checkpoint, trained now", now_trained - was))
             if keys]
    problems.append(f"frozen changed from {saved.get('frozen')} to {now['frozen']}: " + "; ".join(
        f"{len(keys)} param(s) {what} ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})"
        for what, keys in moved))
  if "opt_state_layout" in saved and saved["opt_state_layout"] != now["opt_state_layout"]:
    before, after = saved.get("optimizer", {}), now["optimizer"]
    differ = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after))
              if before.get(k) != after.get(k)]
    problems.append(f"the optimizer state has another layout (optimizer settings that differ: "
                    f"{', '.join(differ) or 'none'}; state {saved['opt_state_layout']} -> {now['opt_state_layout']})")
  if saved.get("ema", False) != now.get("ema", False):  # checkpoints from before the EMA existed keep none
    problems.append("the checkpoint " + ("keeps" if saved.get("ema") else "has no") + " EMA of the weights and "
                    "this config " + ("has none (ema.decay=0)" if saved.get("ema") else "keeps one (ema.decay > 0)"))
  if saved.get("objective_state", {}) != now.get("objective_state", {}):  # none before objectives kept state
    problems.append(f"the objectives' state (a feature queue: objectives.<name>.queue_size) has another layout: "
                    f"{saved.get('objective_state', {})} in the checkpoint, {now['objective_state']} now")
  return problems


class _DataState:
  """One host's data-iterator state, in the form grain's Orbax handler saves: it writes one
  `process_I-of-N.json` per host, since on real data every host is at its own position."""

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    self.state = json.loads(state)

  def start_prefetch(self) -> None:  # called by grain's handler after set_state
    pass


# Orbax saves a replicated array in parallel over its replicas: one slice each, cut by an eager
# device op (compiled once per new shape) before its transfer. For small arrays the ops cost more
# than the parallel write saves (a tiny model's train state on 8 devices: ~1000 ops, 5 s a save);
# below this many bytes per slice one replica saves the whole array, as it does on one device.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_type_handlers():
  """Orbax's default type handlers, with replica-parallel saving only for slices of at least
  MIN_REPLICA_SLICE_BYTES (the file format is the same either way)."""
  th = ocp.type_handlers
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
                                  array_metadata_store=array_metadata_store.Store())),  # as the default
      (str, th.StringHandler()))


class Checkpointer:
  """Wraps one `ocp.CheckpointManager` over `workdir/checkpoints`."""

  def __init__(self, workdir: str, *, every: int, keep: int, async_save: bool = True):
    self.every = every
    self.directory = checkpoint_dir(workdir)
    # create=False: the directory appears with the first save, so a run that fails before it
    # leaves the workdir as it was (the save makes the directories it needs).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "meta"),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(type_handler_registry=_state_type_handlers())})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict | Callable[[], dict], meta: dict | Callable[[], dict], *,
           force: bool = False) -> bool:
    """Starts an async save; the data iterator state is captured now, synchronously. `data_state`
    and `meta` may be functions, called only when a save is due (an iterator state gathers worker
    states; meta values can cost a collective)."""
    if not force and (not self.every or step % self.every):
      return False
    data_state = data_state() if callable(data_state) else data_state
    meta = meta() if callable(meta) else meta
    return self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=grain_checkpoint.CheckpointSave(_DataState(data_state)),
        meta=ocp.args.JsonSave(meta)))

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state, expected_shapes: dict, layout: dict | None = None
              ) -> tuple[Any, dict, dict]:
    """(state, data_state, meta) restored onto the shardings in `abstract_state` (any mesh);
    `layout` (state_layout) is compared with the checkpoint's first, for an error naming what changed."""
    meta = self.read_meta(step)
    old = legacy.checkpoint_model(meta)
    if old:  # written by a legacy model class: checked and restored in its layout, then translated
      abstract_state = legacy.map_state(abstract_state, functools.partial(legacy.to_legacy_params, old))
      expected_shapes = param_shapes(abstract_state.params)
      if layout:
        layout = dict(layout, trainable_params=sorted(legacy.legacy_path(old, p) for p in layout["trainable_params"]))
    problems = shape_mismatches(meta.get("param_shapes", {}), expected_shapes)
    if problems:
      raise ValueError(f"checkpoint {self.directory}/{step} was written by a different model "
                       f"(model={meta.get('model_name')!r}); mismatched params:\n  " + "\n  ".join(problems)
                       + "\nUse a fresh --workdir for a different model, or the config the checkpoint was made with.")
    problems = layout_changes(meta, layout) if layout else []
    if problems:
      raise ValueError(f"checkpoint {self.directory}/{step} cannot be resumed with this config:\n  "
                       + "\n  ".join(problems) + "\nResume with the config the run was started with (its "
                       "config.json), or start a new run from these weights with --config.init_from.workdir.")
    restore = ocp.args.PyTreeRestore(item=abstract_state,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
    state = self.manager.restore(step, args=ocp.args.Composite(state=restore))["state"]
    if old:
      state = legacy.map_state(state, legacy.TRANSLATIONS[old][1])
    return state, self._restore_data_state(step), meta

  def _restore_data_state(self, step: int) -> dict:
    """This host's iterator state; checkpoints from before per-host states hold one JSON for all."""
    if (epath.Path(self.directory) / str(step) / "data" / f"process_{jax.process_index()}-of-"
        f"{jax.process_count()}.json").exists():
      args = grain_checkpoint.CheckpointRestore(_DataState())
      return self.manager.restore(step, args=ocp.args.Composite(data=args))["data"].state
    try:
      return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(f"checkpoint {self.directory}/{step} has no data-iterator state for process "
                       f"{jax.process_index()} of {jax.process_count()}: was it written with another "
                       f"number of processes? ({e})") from e

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
