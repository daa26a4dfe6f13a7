"""Means over seeds with Student t intervals, and paired differences between arms.

Seeds are few (3 is typical), so a t interval, not a normal one; a bootstrap over 3 values says
little. Differences pair runs by seed: the seed sets the initialisation and the data order, which
the arms share, so pairing removes that part of the noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
  """The two-sided `level` quantile of Student's t with `df` degrees of freedom."""
  from scipy import stats  # pinned in requirements.txt (jax needs it too)

  return float(stats.t.ppf(0.5 + level / 2, df))


def summary(values: Sequence[float]) -> dict:
  """n, mean, sample std and the 95% t interval of the mean. No interval (None) for n = 1, or where
  every value is the same: with a few seeds and metrics counted over a few hundred examples, equal
  values happen by chance, and an interval of width 0 would call any difference certain."""
  x = np.asarray(values, np.float64)
  n = int(x.size)
  mean = float(x.mean()) if n else math.nan
  if n < 2:
    return {"n": n, "mean": mean, "std": None, "ci95": None}
  std = float(x.std(ddof=1))
  if np.allclose(x, x[0], rtol=1e-9, atol=1e-12):  # equal but for the float rounding of a subtraction
    return {"n": n, "mean": mean, "std": std, "ci95": None}
  half = t_quantile(n - 1) * std / math.sqrt(n)
  return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict:
  """a - b over the seeds both have: its summary, the seeds, and whether its interval excludes 0."""
  seeds = sorted(set(a) & set(b))
  out = summary([a[s] - b[s] for s in seeds])
  ci = out["ci95"]
  out["seeds"] = seeds
  out["distinguishable"] = bool(ci is not None and (ci[0] > 0 or ci[1] < 0))
  return out
