"""A suite resolved: every arm's config through the trainer's start-up checks, the suite's evaluators
checked against every arm's model, each arm's step cost and its matched total_steps. All of it
before any run starts, so bad input fails with nothing computed or written."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import ml_collections

from vljax.compare import budget as budget_lib
from vljax.compare import record, timing
from vljax.compare import suite as suite_lib


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  recipe: str
  cost: budget_lib.StepCost
  total_steps: int

  @property
  def examples(self) -> int:
    return self.total_steps * self.cost.batch_size

  @property
  def total_flops(self) -> float | None:
    return None if self.cost.flops_per_step is None else self.total_steps * self.cost.flops_per_step


@dataclasses.dataclass(frozen=True)
class ResolvedSuite:
  path: str
  definition: dict[str, Any]
  arms: dict[str, Arm]

  @property
  def seeds(self) -> list[int]:
    return list(self.definition["seeds"])

  def run_config(self, arm: str, seed: int) -> ml_collections.ConfigDict:
    return suite_lib.run_config(self.definition, arm, seed, self.arms[arm].total_steps)

  def record(self) -> dict[str, Any]:
    """What DIR/suite.json keeps: the definition and what was derived from it."""
    arms = {name: {"recipe": a.recipe, "total_steps": a.total_steps, "batch_size": a.cost.batch_size,
                   "flops_per_step": a.cost.flops_per_step, "examples": a.examples, "total_flops": a.total_flops,
                   **({} if a.cost.seconds_per_step is None else {"seconds_per_step": a.cost.seconds_per_step})}
            for name, a in self.arms.items()}
    return {"suite_file": self.path, "definition": self.definition, "arms": arms}


def resolve(path: str, build_evaluators: bool = True, workdir: str | None = None) -> ResolvedSuite:
  """The suite file at `path`, checked and resolved (ValueError / FileNotFoundError on bad input);
  `build_evaluators=False` skips building the evaluators (they render their sets) where
  nothing will evaluate. `workdir`: the comparison directory, whose suite.json's measured step times
  (budget match="seconds") are reused rather than measured again."""
  definition = suite_lib.load_definition(path)
  costs, recipes, probes, built = {}, {}, {}, set()
  for arm in definition["arms"]:
    cfg = suite_lib.arm_config(definition, arm)
    recipes[arm] = definition["arms"][arm]["recipe"]
    probes[arm] = suite_lib.with_run_settings(copy.deepcopy(cfg), definition, arm, definition["seeds"][0],
                                              cfg.total_steps)
    # Each evaluator is built once, with the first arm that runs it (building renders its set).
    build = set(probes[arm].evals) - built if build_evaluators else set()
    parts = check_arm(arm, recipes[arm], probes[arm], build_evaluators=build)
    built |= build
    costs[arm] = budget_lib.step_cost(probes[arm], parts)
  if definition["budget"]["match"] == "seconds":
    recorded = record.read(workdir) if workdir else None
    seconds = recorded_seconds(definition, recorded) or timing.measure_seconds_per_step(
        probes, **suite_lib.timing(definition["budget"]))
    costs = {arm: dataclasses.replace(cost, seconds_per_step=seconds[arm]) for arm, cost in costs.items()}
  steps = budget_lib.matched_steps(definition["budget"], costs)
  arms = {arm: Arm(arm, recipes[arm], costs[arm], steps[arm]) for arm in definition["arms"]}
  return ResolvedSuite(path, definition, arms)


def recorded_seconds(definition: dict[str, Any], recorded: dict[str, Any] | None) -> dict[str, float] | None:
  """The step times suite.json keeps for this very definition (every arm measured), else None."""
  if not recorded or record.runs_definition(recorded.get("definition")) != record.runs_definition(definition):
    return None
  seconds = {arm: (recorded.get("arms") or {}).get(arm, {}).get("seconds_per_step") for arm in definition["arms"]}
  return None if None in seconds.values() else seconds


def check_arm(arm: str, recipe: str, cfg: ml_collections.ConfigDict, build_evaluators: set[str]) -> Any:
  """The trainer's start-up checks on the arm's run config; its RunParts. Only the evaluators named
  in `build_evaluators` are built: they render their sets, and one build shows the settings are sound."""
  from vljax import evals, models
  from vljax.evals import requirements, world
  from vljax.train import setup

  settings = {name: dict(s) for name, s in cfg.evals.to_dict().items()}
  cfg.evals = {}
  where = f"arm {arm!r} ({recipe})"
  try:
    parts = setup.build(cfg)
    classes = {name: evals.get_evaluator(name) for name in settings}
    for name, cls in classes.items():
      requirements.check_settings(name, cls, settings[name])
    requirements.check_evaluators(classes, settings, parts.model, cfg.model.name, models.MODELS)
    world.check_world_readers(classes, settings, cfg.data)
    for name in build_evaluators:
      classes[name](settings[name], tokenizer=parts.tokenizer, max_len=cfg.data.max_len, data=cfg.data)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e
  cfg.evals = settings
  return parts
