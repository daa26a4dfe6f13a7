"""The report's figures, drawn from report.json's data alone: the ranked metrics at the end of
training (mean and 95% interval per arm), the same metrics against training compute (the
evaluations along each run), and the training loss against compute."""

from __future__ import annotations

import math
import os
from typing import Any

from etils import epath

AXIS_LABEL = {"flops": "training FLOPs (model count)", "examples": "examples seen"}


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _grid(plt, count: int, width: float = 4.2, height: float = 3.2):
  cols = min(3, max(count, 1))
  rows = math.ceil(max(count, 1) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for ax in axes.flat[count:]:
    ax.set_visible(False)
  return fig, list(axes.flat)


def _save(plt, fig, directory: str, name: str) -> str:
  path = epath.Path(directory) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  with path.open("wb") as f:  # also gs://
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return os.fspath(path)


def _color(report: dict[str, Any], arm: str) -> str:
  """One colour per arm, the same in every figure."""
  return f"C{list(report['arms']).index(arm) % 10}"


def _band(ax, points: list[dict], label: str, color) -> None:
  """Mean over seeds, shaded over its interval where there is one."""
  x = [p["compute"] for p in points]
  ax.plot(x, [p["mean"] for p in points], marker="o", ms=3, label=label, color=color)
  spread = [(p["compute"], *p["ci95"]) for p in points if p["ci95"]]
  if spread:
    xs, lo, hi = zip(*spread)
    ax.fill_between(xs, lo, hi, alpha=0.2, color=color)


def final_metrics(plt, report: dict[str, Any], directory: str) -> str:
  metrics = report["rank_by"]
  fig, axes = _grid(plt, len(metrics), width=3.6)
  arms = list(report["arms"])
  for ax, metric in zip(axes, metrics):
    for i, arm in enumerate(arms):
      s = report["metrics"].get(metric, {}).get(arm)
      if s is None:
        continue
      err = [[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]] if s["ci95"] else None
      ax.errorbar([i], [s["mean"]], yerr=err, fmt="o", capsize=4, color=_color(report, arm))
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(arms) - 0.5)
    ax.set_title(metric.removeprefix("eval/"), fontsize=9)
  fig.suptitle("end of training: mean and 95% interval over seeds", fontsize=10)
  return _save(plt, fig, directory, "final_metrics.png")


def metrics_vs_compute(plt, report: dict[str, Any], directory: str) -> str:
  metrics = report["rank_by"]
  fig, axes = _grid(plt, len(metrics))
  for ax, metric in zip(axes, metrics):
    for arm, points in report["curves"].get(metric, {}).items():
      _band(ax, points, arm, _color(report, arm))
    ax.set(xlabel=AXIS_LABEL[report["compute_axis"]], title=metric.removeprefix("eval/"))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
  return _save(plt, fig, directory, "metrics_vs_compute.png")


def learning_curves(plt, report: dict[str, Any], directory: str) -> str:
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for arm, points in report["curves"].get("train/loss", {}).items():
    _band(ax, points, arm, _color(report, arm))
  ax.set(xlabel=AXIS_LABEL[report["compute_axis"]], ylabel="train/loss (each arm's own objective)",
         title="learning curves: mean over seeds")
  ax.legend(fontsize=8)
  return _save(plt, fig, directory, "learning_curves.png")


def write_plots(report: dict[str, Any], directory: str) -> dict[str, str]:
  """Every figure under `directory`; their paths by name."""
  plt = _pyplot()
  return {"final_metrics": final_metrics(plt, report, directory),
          "metrics_vs_compute": metrics_vs_compute(plt, report, directory),
          "learning_curves": learning_curves(plt, report, directory)}
