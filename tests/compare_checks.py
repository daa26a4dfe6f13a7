"""Checks on a `python -m vljax.compare` directory shared by the suites' tests: the runs' own
metrics.jsonl read back, and report.json's numbers recomputed from them with numpy."""

import itertools
import json
import os

import numpy as np
import pytest

# Student t, two-sided 95%, by degrees of freedom: constants, not the scipy call the report makes.
T_975 = {1: 12.706204736174707, 2: 4.302652729911275}


def rows(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def last_values(run_dir):
  """key -> {step: value}, the last row winning: what a resumed run's readers keep."""
  out = {}
  for row in rows(run_dir):
    step = row.pop("step")
    for k, v in row.items():
      out.setdefault(k, {})[step] = v
  return out


def final_metrics(suite_dir):
  """metric -> arm -> {seed: its value at the run's last step}, from each run's metrics.jsonl and
  the matched steps in suite.json."""
  rec = json.load(open(os.path.join(suite_dir, "suite.json")))
  finals = {}
  for arm, spec in rec["arms"].items():
    for seed in rec["definition"]["seeds"]:
      for key, by_step in last_values(os.path.join(suite_dir, arm, f"seed{seed}")).items():
        if key.startswith("eval/") and not key.endswith("_std"):
          finals.setdefault(key, {}).setdefault(arm, {})[seed] = by_step[spec["total_steps"]]
  return finals


def _interval(x):
  """The 95% t interval of x's mean; None where every value is the same (vljax.compare.stats)."""
  if np.allclose(x, x[0], rtol=1e-9, atol=1e-12):
    return None
  half = T_975[len(x) - 1] * x.std(ddof=1) / np.sqrt(len(x))
  return [x.mean() - half, x.mean() + half]


def check_report_numbers(suite_dir):
  """Every arm's mean and interval over seeds, and every paired difference, in report.json are
  those of the runs' own final metrics."""
  report = json.load(open(os.path.join(suite_dir, "report.json")))
  finals = final_metrics(suite_dir)
  assert set(report["metrics"]) == set(finals)
  for metric, by_arm in finals.items():
    for arm, values in by_arm.items():
      seeds = sorted(values)
      x = np.array([values[s] for s in seeds])
      got = report["metrics"][metric][arm]
      assert got["n"] == len(seeds) and got["values"] == {str(s): values[s] for s in seeds}
      assert got["mean"] == pytest.approx(x.mean(), abs=1e-12)
      want = _interval(x)
      assert got["ci95"] == (want if want is None else pytest.approx(want, abs=1e-9))
    pairs = list(itertools.combinations(by_arm, 2))
    assert [(d["a"], d["b"]) for d in report["differences"][metric]] == pairs
    for diff in report["differences"][metric]:
      a, b = by_arm[diff["a"]], by_arm[diff["b"]]
      d = np.array([a[s] - b[s] for s in sorted(a)])
      want = _interval(d)
      assert diff["n"] == len(d) and diff["ci95"] == (want if want is None else pytest.approx(want, abs=1e-9))
      assert diff["distinguishable"] == bool(want and (want[0] > 0 or want[1] < 0))
  return report, finals
