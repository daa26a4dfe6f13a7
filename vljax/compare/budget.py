"""Matched compute: what one train step of an arm costs, and the steps that give every arm the budget.

FLOPs are the models' own counts (vljax/train/step_flops.py over the parts each model file declares),
the ones MFU divides by: forward and the backward that `frozen` leaves, over the global batch.
Seconds are measured on this machine (vljax/compare/timing.py): equal wall time, where FLOPs miss
what makes a step slow (memory traffic, a gather, the conv stem on CPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class StepCost:
  """One arm's train step, and the steps its recipe (with the suite's overrides) asks for."""
  batch_size: int
  flops_per_step: float | None
  no_flops_reason: str  # why flops_per_step is None
  recipe_steps: int
  # Objectives that run passes of the model of their own (hard negatives' caption twins): those
  # passes are in no model's count.
  uncounted_objectives: tuple[str, ...] = ()
  params: int = 0            # every parameter of the model
  trainable_params: int = 0  # those `frozen` leaves to train (a bridge between frozen towers: the bridge)
  seconds_per_step: float | None = None  # measured, where the budget matches seconds

  def per_step(self, match: str, arm: str) -> float:
    """The budget's unit spent by one step."""
    if match == "steps":
      return 1.0
    if match == "examples":
      return float(self.batch_size)
    if match == "seconds":
      if self.seconds_per_step is None:
        raise ValueError(f"arm {arm!r}: budget match='seconds' without a measured step time")
      return self.seconds_per_step
    if self.flops_per_step is None:
      raise ValueError(f"arm {arm!r}: budget match='flops' cannot be matched: {self.no_flops_reason}. "
                       "Valid: match='examples' or 'steps', or a model that declares its FLOP count")
    return self.flops_per_step


def step_cost(cfg: ml_collections.ConfigDict, parts: Any) -> StepCost:
  """The cost of one step of `cfg`, whose run parts (vljax.train.setup.build) are `parts`."""
  import jax
  from flax import linen as nn

  from vljax import checkpoint_io, objectives
  from vljax.train import state as state_lib, step_flops
  from vljax.train.optim import frozen_predicate

  # Abstract inputs and PRNG key: a dry run runs no program, so it compiles none.
  inputs = jax.eval_shape(lambda: state_lib.dummy_inputs(cfg, 1))
  key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
  abstract = jax.eval_shape(lambda rng, x: parts.model.init(rng, **x)["params"], key, inputs)
  shapes = checkpoint_io.param_shapes(nn.unbox(abstract))
  flops, why = step_flops.train_step_flops(cfg, parts.model_cfg, shapes)
  # Passes an objective runs of its own count where it declares them (register_objective's passes).
  uncounted = tuple(n for n in cfg.objectives if objectives.get_objective(n).uncounted)
  sizes = {path: math.prod(shape) for path, shape in shapes.items()}
  is_frozen = frozen_predicate(cfg.frozen)
  return StepCost(int(cfg.batch_size), flops, why, int(cfg.total_steps), uncounted, params=sum(sizes.values()),
                  trainable_params=sum(n for path, n in sizes.items() if not is_frozen(path)))


def budget_amount(budget: Mapping[str, Any], costs: Mapping[str, StepCost]) -> float:
  """What every run gets: the budget's value, or what arm `like` spends in its recipe's steps."""
  if budget.get("value") is not None:
    return float(budget["value"])
  like = budget["like"]
  return costs[like].recipe_steps * costs[like].per_step(budget["match"], like)


def matched_steps(budget: Mapping[str, Any], costs: Mapping[str, StepCost]) -> dict[str, int]:
  """Each arm's total_steps: the budget over its cost per step, rounded to the nearest step."""
  amount = budget_amount(budget, costs)
  out = {}
  for arm, cost in costs.items():
    steps = round(amount / cost.per_step(budget["match"], arm))
    if steps < 1:
      raise ValueError(f"arm {arm!r}: the budget {budget['match']}={amount:.4g} is less than one of its steps "
                       f"({cost.per_step(budget['match'], arm):.4g}); valid: a budget of at least one step per arm")
    out[arm] = steps
  return out
