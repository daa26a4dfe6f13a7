"""Every config value in its valid range, checked at start: a bad one is an error naming the key,
the value and what is valid, before the workdir is touched or anything compiles.

`vljax.config.validate` checks the keys; this checks the values. Data settings are checked by
`vljax.data.pipeline.check_data_config`, the model's by its `from_config`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

WARMUP_SCHEDULES = ("warmup_cosine", "warmup_constant")


_UNSET = object()


def _get(cfg: ml_collections.ConfigDict, key: str) -> Any:
  """The value at a dotted key, or _UNSET where a recipe leaves it out (its user's default applies)."""
  for part in key.split("."):
    if part not in cfg:
      return _UNSET
    cfg = cfg[part]
  return cfg


def _fail(key: str, value: Any, valid: str) -> None:
  raise ValueError(f"config.{key}={value!r} is invalid; valid: {valid}")


def _check(cfg, key: str, ok: Callable[[Any], bool], valid: str) -> None:
  value = _get(cfg, key)
  if value is not _UNSET and not ok(value):
    _fail(key, value, valid)


def _is_int(v: Any) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_dict(v: Any) -> bool:
  return isinstance(v, (Mapping, ml_collections.ConfigDict))


def _int(cfg, key: str, low: int, valid: str | None = None) -> None:
  _check(cfg, key, lambda v: _is_int(v) and v >= low, valid or f"an int >= {low}")


def _number(cfg, key: str, ok: Callable[[float], bool], valid: str) -> None:
  _check(cfg, key, lambda v: _is_number(v) and ok(v), valid)


def _choice(cfg, key: str, valid) -> None:
  _check(cfg, key, lambda v: v in valid, f"one of {list(valid)}")


def _bool(cfg, key: str) -> None:
  _check(cfg, key, lambda v: isinstance(v, bool), "True or False")


def check_values(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError on the first value out of its range (see the module docstring)."""
  from vljax.models.model_config import DTYPES  # lazy: these modules import jax
  from vljax.objectives.contrastive import IMPLS
  from vljax.parallel.mesh import check_mesh_sizes
  from vljax.train import ema
  from vljax.train.optim import OPTIMIZERS, SCHEDULES

  _int(cfg, "seed", -2**63, "an int")
  _choice(cfg, "loss_impl", IMPLS)
  _int(cfg, "batch_size", 1)
  _int(cfg, "total_steps", 0)
  _int(cfg, "grad_accum_steps", 1)
  _int(cfg, "log_every", 0, "an int >= 0 (0: the last step only)")
  _int(cfg, "eval_batch_size", 1)
  _number(cfg, "peak_flops", lambda v: v >= 0, "a number >= 0 (0: look the device up)")
  _bool(cfg, "progress_bar")
  _check_objective_weights(cfg.objectives)
  _choice(cfg, "optimizer.name", OPTIMIZERS)
  _number(cfg, "optimizer.lr", lambda v: v > 0, "a number > 0")
  for b in ("b1", "b2"):
    _number(cfg, f"optimizer.{b}", lambda v: 0 <= v < 1, "0 <= value < 1")
  _number(cfg, "optimizer.eps", lambda v: v > 0, "a number > 0")
  _number(cfg, "optimizer.weight_decay", lambda v: v >= 0, "a number >= 0")
  _number(cfg, "optimizer.grad_clip_norm", lambda v: v >= 0, "a number > 0, or 0 for no clipping")
  _check_schedule(cfg, SCHEDULES)
  _int(cfg, "checkpoint.every", 0, "an int >= 0 (0: the last step and preemption only)")
  _int(cfg, "checkpoint.keep", 1)
  _bool(cfg, "checkpoint.async_save")
  check_mesh_sizes(cfg.mesh)
  for key in ("param_dtype", "compute_dtype"):
    _choice(cfg, f"precision.{key}", DTYPES)
  _check_frozen(cfg.frozen)
  if "ema" in cfg:
    ema.check(cfg)
  _check_evals(cfg.evals)


def _check_objective_weights(spec: Mapping[str, Any]) -> None:
  for name, value in spec.items():
    weight = value.get("weight", None) if _is_dict(value) else value
    if not _is_number(weight) or weight < 0:
      _fail(f"objectives.{name}", value, "a weight >= 0, or a dict with one")


def _check_schedule(cfg, schedules) -> None:
  _choice(cfg, "schedule.name", schedules)
  _int(cfg, "schedule.warmup_steps", 0)
  warmup, total = _get(cfg, "schedule.warmup_steps"), cfg.total_steps
  if cfg.schedule.name in WARMUP_SCHEDULES and warmup is not _UNSET and total and warmup > total:
    _fail("schedule.warmup_steps", warmup, f"0..total_steps={total} (the peak learning rate would never "
                                           "be reached)")
  _number(cfg, "schedule.end_fraction", lambda v: 0 <= v <= 1, "0 <= value <= 1 (of the peak learning rate)")


def _check_frozen(patterns: Any) -> None:
  """Regexes only here; whether each matches a parameter needs the model (vljax.train.optim.split_frozen)."""
  if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
    _fail("frozen", patterns, 'a tuple of regexes over param paths, e.g. ("img/.*",)')
  for p in patterns:
    if not isinstance(p, str):
      _fail("frozen", patterns, 'a tuple of regex strings, e.g. ("img/.*",)')
    try:
      re.compile(p)
    except re.error as e:
      _fail("frozen", patterns, f"valid regexes ({p!r}: {e})")


def _check_evals(evals_cfg: Mapping[str, Any]) -> None:
  from vljax import evals  # lazy: the evaluators import jax
  from vljax.evals import requirements
  for name, settings in evals_cfg.items():
    if not _is_dict(settings):
      _fail(f"evals.{name}", settings, "a dict of the evaluator's settings, e.g. dict(every=250)")
    requirements.check_settings(name, evals.get_evaluator(name), settings)
