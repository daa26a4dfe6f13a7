"""Objective registry: config name -> fn(outputs, batch, *, impl, **options) -> (loss, metrics).

Options come from the config; the run's own arguments (RUN_ARGS) come from the trainer, to the
objectives whose signature names them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax.numpy as jnp

from vljax.data import tokenizers

Objective = Callable[..., tuple[jnp.ndarray, dict]]

OBJECTIVES: dict[str, Objective] = {}
# Keyword arguments the run supplies, never the config: the loss implementation ("gather" or
# "shard_map") and the tokenizer's pad id.
RUN_ARGS = ("impl", "pad_id")


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
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in RUN_ARGS]
    unknown = sorted(set(options) - set(valid))
    if unknown:
      raise ValueError(f"objectives.{name}: unknown option(s) {unknown}; valid: {valid}")
    parsed[name] = (weight, options)
  return parsed


def call_objective(name: str, outputs: dict, batch: dict, options: Mapping[str, Any], **run: Any
                   ) -> tuple[jnp.ndarray, dict]:
  """Objective `name` with its config options and those of the run's arguments it takes."""
  fn = get_objective(name)
  params = inspect.signature(fn).parameters
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
    run = {k: v for k, v in run.items() if k in params}
  return fn(outputs, batch, **run, **options)


def combined_loss(spec: Mapping[str, Any], outputs: dict, batch: dict, *, impl: str = "gather",
                  pad_id: int = tokenizers.PAD_ID) -> tuple[jnp.ndarray, dict]:
  """Weighted sum of objectives; metrics hold each '<name>_loss' unweighted plus their extras.
  pad_id: the run's tokenizer's (the trainer passes it)."""
  total = jnp.zeros((), jnp.float32)
  metrics: dict = {}
  for name, (weight, options) in parse_objectives(spec).items():
    loss, extra = call_objective(name, outputs, batch, options, impl=impl, pad_id=pad_id)
    total = total + weight * loss
    metrics.update(extra)
    metrics[f"{name}_loss"] = loss
  metrics["loss"] = total
  return total, metrics
