"""`python -m vljax.report --workdir DIR`: final evaluations as a table, curves as DIR/curves.png."""

from __future__ import annotations

import math
import os
import sys

from absl import app, flags
from etils import epath

from vljax.metrics import read_metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with metrics.jsonl")
flags.mark_flag_as_required("workdir")


def final_table(series: dict[str, dict[int, float]]) -> str:
  """Last value of every eval metric, one row each."""
  rows = [(k, max(v), v[max(v)]) for k, v in sorted(series.items()) if k.startswith("eval/")]
  width = max((len(k) for k, _, _ in rows), default=10)
  lines = [f"{'metric':{width}s}  {'step':>6s}  {'value':>7s}", "-" * (width + 17)]
  lines += [f"{k:{width}s}  {s:6d}  {v:7.4f}" for k, s, v in rows]
  return "\n".join(lines)


def eval_ylim(series: dict[str, dict[int, float]]) -> tuple[float, float]:
  """y range of the evaluations plot: [0, 1.02] for accuracies and recalls, stretched to show
  metrics beyond it (CIDEr reaches 10, a loss may be negative); NaN and inf are left out."""
  values = [v for k, s in series.items() if k.startswith("eval/") for v in s.values() if math.isfinite(v)]
  low, high = min([0.0, *values]), max([1.0, *values])
  return low - 0.02 * (high - low), high + 0.02 * (high - low)


def plot_curves(series: dict[str, dict[int, float]], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  evals = sorted(k for k in series if k.startswith("eval/"))
  fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(12, 4.5))
  for key in sorted(k for k in series if k.startswith("train/") and k.endswith("loss")):
    steps = sorted(series[key])
    ax_loss.plot(steps, [series[key][s] for s in steps], label=key)
  ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
  ax_loss.legend(fontsize=8)
  for key in evals:
    steps = sorted(series[key])
    ax_eval.plot(steps, [series[key][s] for s in steps], marker="o", ms=3, label=key.removeprefix("eval/"))
  ax_eval.set(xlabel="step", ylabel="value", title="evaluations", ylim=eval_ylim(series))
  ax_eval.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:  # also gs://
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  series = read_metrics(_WORKDIR.value)
  if not series:
    sys.exit(f"error: no metrics in {epath.Path(_WORKDIR.value) / 'metrics.jsonl'}; train first")
  print(final_table(series))
  path = os.fspath(epath.Path(_WORKDIR.value) / "curves.png")
  plot_curves(series, path)
  print(f"curves: {path}")


if __name__ == "__main__":
  app.run(main)
