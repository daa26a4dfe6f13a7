"""Objective registry: config name -> fn(outputs, batch, *, impl) -> (loss, metrics)."""

from __future__ import annotations

from typing import Callable, Mapping

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


def combined_loss(weights: Mapping[str, float], outputs: dict, batch: dict, *,
                  impl: str = "gather") -> tuple[jnp.ndarray, dict]:
  """Weighted sum of objectives; metrics hold each '<name>_loss' unweighted plus their extras."""
  if not weights:
    raise ValueError(f"no objectives given; valid: {sorted(OBJECTIVES)}")
  fns = {name: get_objective(name) for name in weights}  # fail on any bad name before computing
  total = jnp.zeros((), jnp.float32)
  metrics: dict = {}
  for name, fn in fns.items():
    loss, extra = fn(outputs, batch, impl=impl)
    total = total + weights[name] * loss
    metrics.update(extra)
    metrics[f"{name}_loss"] = loss
  metrics["loss"] = total
  return total, metrics
