"""The comparison's numbers, read from the runs' own metrics.jsonl: each arm's final metrics over
seeds (mean, 95% t interval), paired differences between arms, the ranking, and every metric and
the training loss against training compute. `write_report` writes DIR/report.json, DIR/report.md
and DIR/plots/.

Every eval metric is taken as higher-is-better (accuracies, recalls, MRR, mAP, CIDEr). The
`<metric>_std` keys (the spread of a few-shot probe over its draws) are a dispersion, not a
score: they are left out.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from vljax import metrics as metrics_lib
from vljax.compare import stats
from vljax.compare import suite as suite_lib
from vljax.compare.budget import budget_amount
from vljax.compare.resolve import ResolvedSuite

LOSS = "train/loss"


def _is_score(key: str) -> bool:
  return key.startswith("eval/") and not key.endswith("_std")


def read_runs(resolved: ResolvedSuite, workdir: str) -> dict[tuple[str, int], dict[str, dict[int, float]]]:
  """(arm, seed) -> its metric series (key -> {step: value}), for every run of the suite."""
  return {(arm, seed): metrics_lib.read_metrics(suite_lib.run_dir(workdir, arm, seed))
          for arm, seed in suite_lib.runs(resolved.definition)}


def final_values(resolved: ResolvedSuite, series: dict) -> dict[str, dict[str, dict[int, float]]]:
  """metric -> arm -> {seed: value at the run's last step}; runs that have not reached it give none."""
  out: dict[str, dict[str, dict[int, float]]] = {}
  for (arm, seed), run in series.items():
    last = resolved.arms[arm].total_steps
    for key, values in run.items():
      if _is_score(key) and last in values:
        out.setdefault(key, {}).setdefault(arm, {})[seed] = float(values[last])
  return dict(sorted(out.items()))


def compute_axis(resolved: ResolvedSuite) -> str:
  """Training FLOPs where every arm's model counts them, else examples seen."""
  return "flops" if all(a.cost.flops_per_step for a in resolved.arms.values()) else "examples"


def curves(resolved: ResolvedSuite, series: dict, keys: list[str]) -> dict[str, dict[str, list[dict]]]:
  """key -> arm -> points in step order: step, training compute, and the mean over seeds with its interval."""
  axis = compute_axis(resolved)
  out: dict[str, dict[str, list[dict]]] = {}
  for key in keys:
    for arm, spec in resolved.arms.items():
      per_step: dict[int, list[float]] = {}
      for seed in resolved.seeds:
        for step, value in series[(arm, seed)].get(key, {}).items():
          if step <= spec.total_steps:
            per_step.setdefault(step, []).append(float(value))
      unit = spec.cost.flops_per_step if axis == "flops" else spec.cost.batch_size
      points = [{"step": s, "compute": s * unit, **stats.summary(v)} for s, v in sorted(per_step.items())]
      if points:
        out.setdefault(key, {})[arm] = points
  return out


def ranking(summaries: dict[str, dict[str, dict]], rank_by: list[str]) -> list[dict[str, Any]]:
  """Arms by their mean rank over `rank_by` (1 = the highest mean; ties share the better rank)."""
  ranks: dict[str, dict[str, int]] = {}
  for metric in rank_by:
    means = {arm: s["mean"] for arm, s in summaries.get(metric, {}).items()}
    for arm, mean in means.items():
      ranks.setdefault(arm, {})[metric] = 1 + sum(other > mean for other in means.values())
  rows = [{"arm": arm, "mean_rank": sum(r.values()) / len(r), "ranks": r} for arm, r in ranks.items()]
  return sorted(rows, key=lambda row: row["mean_rank"])


def build(resolved: ResolvedSuite, workdir: str, statuses: dict[tuple[str, int], str]) -> dict[str, Any]:
  """The report as JSON data (what report.json holds); `statuses`: (arm, seed) -> how far that run is."""
  series = read_runs(resolved, workdir)
  finals = final_values(resolved, series)
  summaries = {m: {arm: {**stats.summary(list(v.values())), "values": {str(s): x for s, x in sorted(v.items())}}
                   for arm, v in by_arm.items()} for m, by_arm in finals.items()}
  differences = {m: [{"a": a, "b": b, **stats.paired_difference(by_arm[a], by_arm[b])}
                     for a, b in itertools.combinations([x for x in resolved.arms if x in by_arm], 2)]
                 for m, by_arm in finals.items()}
  shared = suite_lib.shared_evals(resolved.definition)  # an evaluator some arms lack ranks none
  rank_by = resolved.definition["rank_by"] or [m for m in finals if m.split("/")[1] in shared]
  return {
      "suite": resolved.path,
      "budget": budget_summary(resolved),
      "seeds": resolved.seeds,
      "interval": f"{stats.LEVEL:.0%} Student t over seeds; differences paired by seed",
      "compute_axis": compute_axis(resolved),
      "arms": {arm: _arm_row(resolved, arm, finals) for arm in resolved.arms},
      "rank_by": rank_by,
      "ranking": ranking(summaries, rank_by),
      "metrics": summaries,
      "differences": differences,
      "curves": curves(resolved, series, [LOSS, *finals]),
      "unfinished_runs": {f"{arm}/seed{seed}": s for (arm, seed), s in statuses.items() if s != "done"},
  }


def budget_summary(resolved: ResolvedSuite) -> dict[str, Any]:
  """What every run gets: match, amount, and the arm it is like (where the suite says so)."""
  budget = resolved.definition["budget"]
  amount = budget_amount(budget, {arm: a.cost for arm, a in resolved.arms.items()})
  return {"match": budget["match"], "amount": amount, **({"like": budget["like"]} if budget.get("like") else {})}


def _arm_row(resolved: ResolvedSuite, arm: str, finals: dict) -> dict[str, Any]:
  a = resolved.arms[arm]
  done = sorted({seed for by_arm in finals.values() for seed in by_arm.get(arm, {})})
  return {"recipe": a.recipe, "total_steps": a.total_steps, "batch_size": a.cost.batch_size,
          "examples": a.examples, "flops_per_step": a.cost.flops_per_step, "total_flops": a.total_flops,
          "params": a.cost.params, "trainable_params": a.cost.trainable_params,
          "seconds_per_step": a.cost.seconds_per_step, "seeds_with_results": done, "uncounted_objectives": list(a.cost.uncounted_objectives)}


def write_report(resolved: ResolvedSuite, workdir: str, statuses: dict[tuple[str, int], str]) -> dict[str, str]:
  """DIR/report.json, DIR/report.md and the plots; returns their paths by kind."""
  from vljax.compare import markdown, plots

  report = build(resolved, workdir, statuses)
  figures = plots.write_plots(report, os.path.join(workdir, "plots"))
  paths = {"json": metrics_lib.write_text(workdir, "report.json", json.dumps(report, indent=1) + "\n"),
           "md": metrics_lib.write_text(workdir, "report.md", markdown.render(report, figures))}
  return {**paths, **figures}
