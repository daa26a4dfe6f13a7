"""Objective registry: config name -> fn(outputs, batch, *, impl, **options) -> (loss, metrics)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax.numpy as jnp

Objective = Callable[..., tuple[jnp.ndarray, dict]]

OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Objective], Objective]:
  """Decorator adding an objective to OBJECTIVES under `name`."""
  def wrap(fn: Objective) -> Objective:
    if name in OBJECTIVES and OBJECTIVES[name] is not fn:
      raise ValueError(f"objective {name!r} is already registered to {OBJECTIVES[name]!r}")
    OBJECTIVES[name] = fn
    return fn
  return wrap


def get_objective(name: str) -> Objective:
  """The objective registered as `name`."""
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; valid: {sorted(OBJECTIVES)}")
  return OBJECTIVES[name]


def parse_objectives(spec: Mapping[str, Any]) -> dict[str, tuple[float, dict[str, Any]]]:
  """The config's `objectives` -> {name: (weight, options)}.

  Each value is a weight, or a dict with "weight" and the objective's keyword options, e.g.
  {"captioning": {"weight": 2.0, "label_smoothing": 0.1}}. Unknown names or options fail here.
  """
  if not spec:
    raise ValueError(f"no objectives given; valid: {sorted(OBJECTIVES)}")
  parsed = {}
  for name, value in spec.items():
    fn = get_objective(name)
    if hasattr(value, "to_dict"):
      value = value.to_dict()
    options = dict(value) if isinstance(value, Mapping) else {"weight": value}
    if "weight" not in options:
      raise ValueError(f"objectives.{name}: a dict value needs a 'weight', got {options}")
    weight = float(options.pop("weight"))
    valid = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "impl"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ValueError(f"objectives.{name}: unknown option(s) {unknown}; valid: {valid}")
    parsed[name] = (weight, options)
  return parsed


def combined_loss(spec: Mapping[str, Any], outputs: dict, batch: dict, *,
                  impl: str = "gather") -> tuple[jnp.ndarray, dict]:
  """Weighted sum of objectives; metrics hold each '<name>_loss' unweighted plus their extras."""
  total = jnp.zeros((), jnp.float32)
  metrics: dict = {}
  for name, (weight, options) in parse_objectives(spec).items():
    loss, extra = get_objective(name)(outputs, batch, impl=impl, **options)
    total = total + weight * loss
    metrics.update(extra)
    metrics[f"{name}_loss"] = loss
  metrics["loss"] = total
  return total, metrics
