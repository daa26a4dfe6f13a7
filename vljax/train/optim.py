"""Optimizer: optax AdamW (decay on kernels only), warmup + cosine, clipping, frozen params."""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import optax
from flax import traverse_util

OPTIMIZERS = ("adamw",)
SCHEDULES = ("warmup_cosine", "warmup_constant", "constant")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule from `config.schedule` (name, warmup_steps, end_fraction)."""
  peak = cfg.optimizer.lr
  warmup = int(cfg.schedule.warmup_steps)
  name = cfg.schedule.name
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, max(warmup, 1), max(total_steps, warmup + 1), end_value=peak * cfg.schedule.end_fraction)
  if name == "warmup_constant":
    return optax.join_schedules([optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
                                [max(warmup, 1)])
  if name == "constant":
    return optax.constant_schedule(peak)
  raise ValueError(f"schedule.name={name!r} is unknown; valid: {list(SCHEDULES)}")


def _decay_mask(params):
  # Decay matrices only: biases, norms, embeddings, temperatures are left alone.
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optax chain for the *trainable* params (frozen ones never reach it)."""
  o = cfg.optimizer
  if o.name != "adamw":
    raise ValueError(f"optimizer.name={o.name!r} is unknown; valid: {list(OPTIMIZERS)}")
  chain = []
  if o.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=_decay_mask))
  return optax.chain(*chain)


def frozen_predicate(patterns: Sequence[str]):
  """`path -> bool` for 'img/encoder/...'-style paths matched (re.fullmatch) by any pattern."""
  compiled = []
  for p in patterns:
    try:
      compiled.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"frozen: {p!r} is not a valid regex: {e}") from e
  return lambda path: any(c.fullmatch(path) for c in compiled)


def split_frozen(params, patterns: Sequence[str]):
  """(trainable, frozen) nested dicts; every leaf lands in exactly one of them."""
  is_frozen = frozen_predicate(patterns)
  flat = traverse_util.flatten_dict(params, sep="/")
  trainable = {k: v for k, v in flat.items() if not is_frozen(k)}
  frozen = {k: v for k, v in flat.items() if is_frozen(k)}
  for p in patterns:  # a typo in one pattern would silently train what it meant to freeze
    if not any(re.fullmatch(p, k) for k in flat):
      raise ValueError(f"frozen pattern {p!r} (of frozen={list(patterns)}) matches no parameter; valid: regexes "
                       f"over param paths, top level {sorted({k.split('/')[0] for k in flat})}, e.g. "
                       f"{sorted(flat)[:2]}")
  if not trainable:
    raise ValueError(f"frozen={list(patterns)} freezes every parameter; nothing left to train")
  unflat = lambda d: traverse_util.unflatten_dict(d, sep="/") if d else {}
  return unflat(trainable), unflat(frozen)


def merge_params(trainable, frozen):
  flat = traverse_util.flatten_dict(trainable, sep="/")
  flat.update(traverse_util.flatten_dict(frozen, sep="/"))
  return traverse_util.unflatten_dict(flat, sep="/")
