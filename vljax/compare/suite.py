"""A comparison suite: its definition (the suite file's `get_config()`), checked field by field, and
the training config of each of its runs. Nothing here imports JAX: the per-run recipe
(configs/compare/run.py) calls `run_config` while absl parses flags, before the trainer starts JAX.

A suite file's `get_config(arg)` gets the ARG of `--suite FILE:ARG` (None without one: data paths
and scale presets, configs/compare/vit_b16_objectives.py) and returns a ConfigDict with these fields
(configs/compare/shapes_objectives.py); DIR/suite.json records them with `FILE:ARG`, and each run is
rebuilt from that record:

  seeds        run seeds; every arm trains once per seed (config `seed`)
  budget       dict(match="flops" | "examples" | "steps" | "seconds", value=N) or dict(match=..., like=ARM):
               the amount every run gets, or what arm ARM's own recipe spends in its `total_steps`.
               "seconds" is equal wall time: each arm's step is compiled and timed on this machine,
               arms interleaved (vljax/compare/timing.py; `timing=dict(rounds=, steps=, warmup=)`
               sizes it), and the times are kept in suite.json, so reruns train the same steps
  overrides    ((KEY, VALUE), ...) applied to every arm's recipe: dotted config keys, each value
               replacing the recipe's (a dict replaces the whole sub-config)
  arms         {name: dict(recipe="clip_shapes.py[:ARG]", overrides=((KEY, VALUE), ...))}; a recipe is
               a file in configs/ or an absolute path
  evals        {evaluator: settings}: the same evaluations for every arm, `every` left out; an
               evaluator of a head only some arms have (LocCa's box predictions) names them in its
               settings, `arms=(ARM, ...)`: only those arms run it, and it ranks none
  eval_points  evaluations (and kept checkpoints) along each run, the last at its end
  rank_by      metrics ranking the arms, higher is better (default: every final eval metric)
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from vljax import config as config_lib

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
SUITE_KEYS = ("seeds", "budget", "overrides", "arms", "evals", "eval_points", "rank_by")
ARM_KEYS = ("recipe", "overrides")
BUDGET_MATCHES = ("flops", "examples", "steps", "seconds")
TIMING_DEFAULTS = dict(rounds=3, steps=5, warmup=2)  # budget match="seconds": the step timing
# Config keys the suite sets for every run: an override of one would break the comparison.
SUITE_OWNED = {"seed": "the suite's `seeds`", "evals": "the suite's `evals`",
               "checkpoint.every": "the suite's `eval_points`", "checkpoint.keep": "the suite's `eval_points`"}
# Sub-configs whose keys are the model's or objectives' own (checked by the trainer's start-up
# checks), so an override may add a key the recipe does not spell out.
OPEN_SECTIONS = ("model", "objectives")
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # one directory name


def split_suite(suite: str) -> tuple[str, str | None]:
  """(file, its `:ARG` or None) of `--suite FILE[:ARG]`."""
  file, sep, arg = suite.partition(":")
  return file, (arg if sep else None)


def load_definition(suite_arg: str) -> dict[str, Any]:
  """`get_config(ARG)` of the suite `FILE[:ARG]` as plain JSON data, every field checked."""
  path, arg = split_suite(suite_arg)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--suite {path!r} does not exist; shipped suites: {shipped_suites()}")
  config_lib.put_recipe_dir_on_path(os.path.join(CONFIGS_DIR, "common.py"))  # a suite may `import common`
  try:
    suite = config_lib.load_config(path, arg)
  except (ValueError, FileNotFoundError) as e:  # the suite's own checks of its argument
    raise type(e)(f"suite {path!r}: {e}") from e
  if not isinstance(suite, ml_collections.ConfigDict):
    raise ValueError(f"suite {path!r}: get_config() returned a {type(suite).__name__}; valid: a ConfigDict "
                     f"with fields {list(SUITE_KEYS)}")
  try:  # JSON data: what suite.json records and what configs/compare/run.py rebuilds runs from
    definition = json.loads(suite.to_json())  # keeps the suite's order of arms (to_dict() sorts them)
  except TypeError as e:
    raise ValueError(f"suite {path!r}: every value must be JSON data (numbers, strings, lists, dicts): {e}") from e
  return check_definition(definition, path)


def shipped_suites() -> list[str]:
  directory = os.path.join(CONFIGS_DIR, "compare")
  return sorted(f"configs/compare/{f}" for f in os.listdir(directory) if f.endswith(".py") and f != "run.py")


def check_definition(d: dict[str, Any], where: str) -> dict[str, Any]:
  """Defaults filled in and every field checked; errors name the field, the value and what is valid."""
  unknown = sorted(set(d) - set(SUITE_KEYS))
  if unknown:
    raise ValueError(f"suite {where!r}: unknown field(s) {unknown}; valid: {list(SUITE_KEYS)}")
  d = {"overrides": [], "evals": {}, "eval_points": 4, "rank_by": [], **d}
  for key in ("seeds", "budget", "arms"):
    if key not in d:
      raise ValueError(f"suite {where!r}: no `{key}`; a suite needs {['seeds', 'budget', 'arms']}")
  seeds = d["seeds"]
  if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
      or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
    raise ValueError(f"suite {where!r}: seeds={seeds!r}; valid: distinct ints >= 0, at least one")
  if not isinstance(d["arms"], dict) or not d["arms"]:
    raise ValueError(f"suite {where!r}: arms={d['arms']!r}; valid: {{name: dict(recipe=..., overrides=...)}}")
  d["arms"] = {name: _check_arm(name, arm) for name, arm in d["arms"].items()}
  d["overrides"] = _check_overrides(d["overrides"], "suite overrides")
  _check_budget(d["budget"], list(d["arms"]))
  points = d["eval_points"]
  if isinstance(points, bool) or not isinstance(points, int) or points < 1:
    raise ValueError(f"suite {where!r}: eval_points={points!r}; valid: an int >= 1 (1: at the end only)")
  _check_evals(d["evals"], list(d["arms"]))
  if not isinstance(d["rank_by"], list) or not all(isinstance(m, str) and m.startswith("eval/") for m in d["rank_by"]):
    raise ValueError(f"suite {where!r}: rank_by={d['rank_by']!r}; valid: metric names like 'eval/zeroshot/top1'")
  partial = [m for m in d["rank_by"] if "arms" in d["evals"].get(m.split("/")[1], {})]
  if partial:
    raise ValueError(f"suite {where!r}: rank_by {partial} is measured for some arms only (its evaluator's "
                     "`arms`); valid: metrics of evaluators every arm runs")
  stray = [m for m in d["rank_by"] if m.split("/")[1] not in d["evals"]]
  if stray:
    raise ValueError(f"suite {where!r}: rank_by {stray} names no evaluator of the suite; valid: metrics of "
                     f"{sorted(d['evals'])} (eval/<evaluator>/<metric>)")
  return d


def _check_arm(name: str, arm: Any) -> dict[str, Any]:
  if not ARM_NAME.match(name):
    raise ValueError(f"arm {name!r}: the name becomes a directory; valid: letters, digits, '_', '-', '.'")
  if not isinstance(arm, dict):
    raise ValueError(f"arm {name!r}: {arm!r}; valid: dict(recipe=..., overrides=...)")
  unknown = sorted(set(arm) - set(ARM_KEYS))
  if unknown:
    raise ValueError(f"arm {name!r}: unknown field(s) {unknown}; valid: {list(ARM_KEYS)}")
  if not isinstance(arm.get("recipe"), str) or not arm["recipe"]:
    raise ValueError(f"arm {name!r}: no recipe; valid: a file in configs/ such as 'clip_shapes.py'")
  recipe_path(arm["recipe"], name)  # exists
  return {"recipe": arm["recipe"], "overrides": _check_overrides(arm.get("overrides", []), f"arm {name!r}")}


def _check_overrides(pairs: Any, where: str) -> list[list[Any]]:
  if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                            for p in pairs):
    raise ValueError(f"{where}: overrides={pairs!r}; valid: a tuple of (KEY, VALUE) pairs such as "
                     "(('batch_size', 256), ('model.image', dict(...)))")
  for key, _ in pairs:
    owner = next((why for k, why in SUITE_OWNED.items() if key == k or key.startswith(k + ".")
                  or k.startswith(key + ".")), None)
    if owner:
      raise ValueError(f"{where}: override {key!r} is set for every run by {owner}; change it there")
  return pairs


def _check_budget(budget: Any, arms: list[str]) -> None:
  valid = (f"valid: dict(match=M, value=N) or dict(match=M, like=ARM) with M in {list(BUDGET_MATCHES)}, "
           f"N > 0, ARM in {arms}; with match='seconds' also timing=dict({', '.join(TIMING_DEFAULTS)})")
  if not isinstance(budget, dict) or set(budget) - {"match", "value", "like", "timing"}:
    raise ValueError(f"suite budget={budget!r}; {valid}")
  if budget.get("match") not in BUDGET_MATCHES:
    raise ValueError(f"suite budget.match={budget.get('match')!r}; {valid}")
  if "timing" in budget:
    _check_timing(budget["timing"], budget["match"])
  value, like = budget.get("value"), budget.get("like")
  if (value is None) == (like is None):
    raise ValueError(f"suite budget={budget!r} needs exactly one of value and like; {valid}")
  if like is not None and like not in arms:
    raise ValueError(f"suite budget.like={like!r} is no arm of the suite; {valid}")
  if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0):
    raise ValueError(f"suite budget.value={value!r}; {valid}")


def _check_timing(timing: Any, match: str) -> None:
  valid = (f"valid: dict with keys from {list(TIMING_DEFAULTS)}, rounds and steps whole numbers >= 1, "
           "warmup >= 0, and only with budget match='seconds'")
  if match != "seconds":
    raise ValueError(f"suite budget.timing is for match='seconds' (measured step times), not match={match!r}; "
                     f"{valid}")
  if not isinstance(timing, dict) or set(timing) - set(TIMING_DEFAULTS):
    raise ValueError(f"suite budget.timing={timing!r}; {valid}")
  for key, value in timing.items():
    least = 0 if key == "warmup" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"suite budget.timing.{key}={value!r}; {valid}")


def timing(budget: Mapping[str, Any]) -> dict[str, int]:
  """budget match="seconds": how its step times are measured."""
  return {**TIMING_DEFAULTS, **(budget.get("timing") or {})}


def _check_evals(evals: Any, arms: list[str]) -> None:
  if not isinstance(evals, dict) or not all(isinstance(s, dict) for s in evals.values()):
    raise ValueError(f"suite evals={evals!r}; valid: {{evaluator: settings dict}}")
  for name, settings in evals.items():
    if "every" in settings:
      raise ValueError(f"suite evals.{name}.every is set by the suite's eval_points (the same fractions of "
                       "every run's budget); drop it")
    only = settings.get("arms", arms)
    if not isinstance(only, list) or not only or not set(only) <= set(arms) or len(set(only)) != len(only):
      raise ValueError(f"suite evals.{name}.arms={settings['arms']!r}; valid: a list of distinct arms of the "
                       f"suite, from {arms}")


def arm_evals(definition: Mapping[str, Any], arm: str) -> dict[str, dict[str, Any]]:
  """The evaluators `arm` runs, {name: settings}: every evaluator not restricted to other arms."""
  return {name: {k: v for k, v in settings.items() if k != "arms"}
          for name, settings in definition["evals"].items() if arm in settings.get("arms", [arm])}


def shared_evals(definition: Mapping[str, Any]) -> list[str]:
  """The evaluators every arm runs: the ones that may rank them."""
  return [name for name, settings in definition["evals"].items() if "arms" not in settings]


def recipe_path(recipe: str, arm: str = "") -> tuple[str, str | None]:
  """(file, its `:ARG` or None) of an arm's recipe: a file in configs/ or an absolute path."""
  file, sep, arg = recipe.partition(":")
  path = file if os.path.isabs(file) else os.path.join(CONFIGS_DIR, file)
  if not os.path.isfile(path):
    known = sorted(f for f in os.listdir(CONFIGS_DIR) if f.endswith(".py") and f != "common.py")
    raise ValueError(f"arm {arm!r}: recipe {recipe!r} not found ({path}); valid: one of {known} or an absolute path")
  return path, (arg if sep else None)


def arm_config(definition: dict[str, Any], arm: str) -> ml_collections.ConfigDict:
  """The arm's recipe with the suite's overrides, then its own."""
  spec = definition["arms"][arm]
  cfg = config_lib.load_config(*recipe_path(spec["recipe"], arm))
  for key, value in [*definition["overrides"], *spec["overrides"]]:
    apply_override(cfg, key, copy.deepcopy(value), f"arm {arm!r} ({spec['recipe']})")
  return cfg


def apply_override(cfg: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
  """cfg[KEY] = VALUE for a dotted KEY the recipe has (or a new key inside OPEN_SECTIONS)."""
  parts = key.split(".")
  node = cfg
  for depth, part in enumerate(parts):
    here = ".".join(parts[:depth]) or "the top level"
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
      raise ValueError(f"{where}: override {key!r}: {here} is {node!r}, not a dict")
    last = depth == len(parts) - 1
    if part not in node and not (last and depth > 0 and parts[0] in OPEN_SECTIONS):
      raise ValueError(f"{where}: unknown override key {key!r}: no {part!r} under {here}; valid there: "
                       f"{sorted(node.keys())}")
    if last:
      try:
        node[part] = value
      except TypeError as e:  # ConfigDict keeps a field's type
        raise ValueError(f"{where}: override {key}={value!r}: {e}") from e
    else:
      node = node[part]


def eval_interval(total_steps: int, points: int) -> int:
  """Steps between evaluations: `points` of them, the last at the run's end."""
  return max(1, math.ceil(total_steps / points))


def run_config(definition: dict[str, Any], arm: str, seed: int, total_steps: int) -> ml_collections.ConfigDict:
  """The training config of one run (what configs/compare/run.py gives the trainer)."""
  return with_run_settings(arm_config(definition, arm), definition, arm, seed, total_steps)


def with_run_settings(cfg: ml_collections.ConfigDict, definition: dict[str, Any], arm: str, seed: int,
                      total_steps: int) -> ml_collections.ConfigDict:
  """`cfg` (of `arm`) with the seed, the matched steps, the suite's evaluations (those of the arm)
  every 1/eval_points of the run and a checkpoint kept at each of them."""
  every = eval_interval(total_steps, definition["eval_points"])
  cfg.seed = seed
  cfg.total_steps = total_steps
  cfg.evals = {name: dict(settings, every=every) for name, settings in arm_evals(definition, arm).items()}
  cfg.checkpoint.every = every
  cfg.checkpoint.keep = math.ceil(total_steps / every) + 1  # every evaluated step stays re-evaluable
  return cfg


def run_dir(workdir: str, arm: str, seed: int) -> str:
  return os.path.join(workdir, arm, f"seed{seed}")


def runs(definition: Mapping[str, Any]) -> list[tuple[str, int]]:
  """(arm, seed) of every run, arm by arm in the suite's order."""
  return [(arm, seed) for arm in definition["arms"] for seed in definition["seeds"]]


def parse_run_arg(arg: str | None, keys: Sequence[str] = ("workdir", "arm", "seed")) -> dict[str, str]:
  """configs/compare/run.py's `:workdir=DIR,arm=ARM,seed=K`."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in keys:
      raise ValueError(f"configs/compare/run.py argument {item!r}: expected KEY=VALUE with KEY in {list(keys)}")
    out[key] = value
  missing = [k for k in keys if not out.get(k)]
  if "seed" in out and not out["seed"].isdigit():
    raise ValueError(f"configs/compare/run.py argument seed={out['seed']!r}: valid: an int >= 0")
  if missing:
    raise ValueError(f"configs/compare/run.py needs {missing}: e.g. "
                     "configs/compare/run.py:workdir=runs/cmp,arm=clip,seed=0 (the suite's DIR, written by "
                     "python -m vljax.compare)")
  return out
