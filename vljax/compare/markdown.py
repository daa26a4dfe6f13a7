"""report.md from report.json's data: the ranking first, then the runs, the paired differences of
the ranking metrics, every final metric, and the figures."""

from __future__ import annotations

import os
from typing import Any


def number(value: float | None, digits: int = 3) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, int):
    return str(value)
  return f"{value:.{digits - 1}e}" if abs(value) >= 1e4 else f"{value:.{digits}f}"


def params_text(count: int | None) -> str:
  """A parameter count as 1.23M / 45.6k (reports written before the counts existed: n/a)."""
  if not count:
    return "n/a"
  for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if count >= size:
      return f"{count / size:.3g}{unit}"
  return str(count)


def estimate(s: dict | None) -> str:
  """'mean [lo, hi]' (95% interval), 'mean (n=1)' with one seed, '-' without results."""
  if not s:
    return "-"
  if s["ci95"] is None:
    return f"{number(s['mean'])} (n={s['n']})"
  return f"{number(s['mean'])} [{number(s['ci95'][0])}, {number(s['ci95'][1])}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def ranking_section(report: dict[str, Any]) -> list[str]:
  metrics = report["rank_by"]
  rows = [[str(i + 1), row["arm"], f"{row['mean_rank']:.2f}",
           *(estimate(report["metrics"].get(m, {}).get(row["arm"])) for m in metrics)]
          for i, row in enumerate(report["ranking"])]
  missing = [m for m in metrics if m not in report["metrics"]]
  note = [f"No final values (yet) for {missing}: ranked without them.", ""] if missing else []
  return ["## Ranking", "", f"By mean rank over {len(metrics)} metric(s); each cell: mean over seeds "
          "[95% interval].", "", *note, *table(["rank", "arm", "mean rank", *metrics], rows)]


def runs_section(report: dict[str, Any]) -> list[str]:
  rows = [[arm, f"`{a['recipe']}`", ", ".join(map(str, a["seeds_with_results"])) or "none", str(a["total_steps"]),
           str(a["batch_size"]), number(a["examples"]), number(a["flops_per_step"]), number(a["total_flops"]),
           params_text(a.get("trainable_params")), params_text(a.get("params"))]
          for arm, a in report["arms"].items()]
  header = ["arm", "recipe", "seeds with results", "steps", "batch", "examples", "FLOPs/step", "total FLOPs",
            "trainable params", "params"]
  if any(a.get("seconds_per_step") for a in report["arms"].values()):  # budget match="seconds"
    header.append("s/step (measured)")
    rows = [row + [number(a.get("seconds_per_step"))] for row, a in zip(rows, report["arms"].values())]
  out = ["## Runs", "", *table(header, rows)]
  notes = [f"- {arm}: objective(s) {a['uncounted_objectives']} run model passes of their own "
           "that no model's FLOP count includes" for arm, a in report["arms"].items() if a["uncounted_objectives"]]
  return out + ([""] + notes if notes else [])


def differences_section(report: dict[str, Any]) -> list[str]:
  rows = []
  for metric in report["rank_by"]:
    for d in report["differences"].get(metric, []):
      interval = (f"[{number(d['ci95'][0])}, {number(d['ci95'][1])}]" if d["ci95"] else
                  f"none (n={d['n']}{', every seed the same' if d['n'] > 1 else ''})")
      rows.append([metric, f"{d['a']} - {d['b']}", str(d["n"]), number(d["mean"]), interval,
                   "**yes**" if d["distinguishable"] else "no"])
  return ["## Paired differences", "", "Paired by seed; distinguishable when the 95% interval excludes 0 "
          "(every metric's differences are in report.json).", "",
          *table(["metric", "a - b", "n", "mean", "95% interval", "distinguishable"], rows)]


def metrics_section(report: dict[str, Any]) -> list[str]:
  arms = list(report["arms"])
  rows = [[m, *(estimate(by_arm.get(arm)) for arm in arms)] for m, by_arm in report["metrics"].items()]
  return ["## Every final metric", "", *table(["metric", *arms], rows)]


def budget_text(budget: dict[str, Any]) -> str:
  """'flops = 1.51e+13 per run (what arm clip's recipe spends)' from report.budget_summary."""
  like = f" (what arm {budget['like']}'s recipe spends)" if "like" in budget else ""
  return f"{budget['match']} = {number(budget['amount'])} per run{like}"


def render(report: dict[str, Any], figures: dict[str, str]) -> str:
  lines = [f"# Comparison: `{report['suite']}`", "",
           f"Matched budget: {budget_text(report['budget'])}; seeds "
           f"{', '.join(map(str, report['seeds']))}; intervals: {report['interval']}. Higher is better for "
           "every metric.", "", *ranking_section(report), "", *runs_section(report), "",
           *differences_section(report), "", *metrics_section(report), "", "## Figures", ""]
  lines += [f"![{name}](plots/{os.path.basename(path)})" for name, path in figures.items()]
  if report["unfinished_runs"]:
    lines += ["", "## Unfinished runs", ""] + [f"- {run}: {s}" for run, s in report["unfinished_runs"].items()]
  return "\n".join(lines) + "\n"
