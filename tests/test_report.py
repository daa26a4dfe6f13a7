"""vljax.report: the evaluations plot shows every metric, also those above 1 (CIDEr)."""

import math

import pytest

from vljax import report

SERIES = {
    "train/loss": {0: 3.0, 10: 2.0},
    "eval/zeroshot/top1": {5: 0.0, 10: 0.4},
    "eval/caption/cider": {5: 0.3, 10: 2.5},
    "eval/caption/bleu4": {5: float("nan"), 10: 0.2},
}


def test_eval_plot_shows_metrics_above_one(tmp_path, monkeypatch):
  Figure = pytest.importorskip("matplotlib.figure").Figure
  saved, limits = Figure.savefig, {}

  def savefig(fig, *args, **kwargs):  # read the axes as they are written
    limits.update({ax.get_title(): ax.get_ylim() for ax in fig.axes})
    return saved(fig, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", savefig)
  path = tmp_path / "curves.png"
  report.plot_curves(SERIES, str(path))
  assert path.stat().st_size > 0
  low, high = limits["evaluations"]
  assert low <= 0.0 and high >= 2.5  # CIDEr's 2.5 and top1's 0.0 both inside the axes
  assert high < 3.0  # not stretched for nothing (NaN is left out)


def test_eval_ylim_keeps_zero_to_one_for_rates_and_ignores_non_finite():
  rates = {"eval/retrieval/i2t_r1": {1: 0.2, 2: 0.9}, "train/loss": {1: 7.0}}
  low, high = report.eval_ylim(rates)
  assert low < 0.0 < 1.0 < high < 1.05
  low, high = report.eval_ylim({"eval/x": {1: -0.5, 2: math.inf, 3: math.nan, 4: 4.0}})
  assert low < -0.5 and 4.0 < high < 4.2
