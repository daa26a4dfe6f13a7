"""The one rule every evaluator ranks candidates by: ties and NaN count against the model.

A rank counts the wrong candidates that score >= the best right one, so a tie ranks the right
item below the others. A NaN score ranks last: a NaN wrong candidate counts as -inf (it beats
nothing), and when every right candidate is NaN the rank is the number of wrong candidates (a
miss at any K smaller than that).

Hence a collapsed model, one that gives every candidate the same score, has rank N - 1 of N and
R@K = 0 for every K < N: never above the K / N of guessing. Breaking ties by position instead
(argmax, a stable sort) would give such a model whatever the data order makes of it, up to 1.0.
"""

from __future__ import annotations

import numpy as np


def ranks(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
  """int [N]: for each row of scores [N, C], how many wrong candidates score >= its best right one.

  right: bool [N, C], True where the candidate is a right answer (several may be: a hit on any of
  an image's captions counts); every row needs at least one.
  """
  scores, right = np.asarray(scores), np.asarray(right, bool)
  if scores.ndim != 2 or right.shape != scores.shape:
    raise ValueError(f"ranks: scores must be [N, C] and right a bool mask of the same shape; got "
                     f"scores {scores.shape}, right {right.shape}")
  if not np.all(right.any(axis=1)):
    row = int(np.argmin(right.any(axis=1)))
    raise ValueError(f"ranks: row {row} has no right candidate; every row needs at least one")
  nan = np.isnan(scores)
  usable = right & ~nan
  best = np.max(np.where(usable, scores, -np.inf), axis=1)
  wrong = ~right
  beaten = wrong & ~nan & (scores >= best[:, None])
  out = np.sum(beaten, axis=1)
  # Every right candidate NaN: a miss, below every wrong one.
  return np.where(usable.any(axis=1), out, np.sum(wrong, axis=1))


def label_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """ranks() with one right column per row: labels int [N] index scores [N, C]."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  if labels.shape != scores.shape[:1] or np.any((labels < 0) | (labels >= scores.shape[1])):
    raise ValueError(f"label_ranks: labels must be [N={scores.shape[0]}] ints in [0, {scores.shape[1]}); "
                     f"got shape {labels.shape}, range [{labels.min(initial=0)}, {labels.max(initial=0)}]")
  return ranks(scores, np.arange(scores.shape[1])[None, :] == labels[:, None])


def beats(right: np.ndarray, wrong: np.ndarray) -> np.ndarray:
  """bool [N]: right[i] ranks above wrong[i], the two-candidate case (binding's twins)."""
  return ranks(np.stack([right, wrong], axis=1), np.array([[True, False]]).repeat(len(right), 0)) == 0


def average_precision(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
  """float [N]: for each row of scores [N, C], the mean over its right candidates of the precision
  at that candidate's position, candidates sorted best first by the same rule: a wrong candidate
  tying with a right one comes before it, NaN scores come last (a NaN right one after every wrong).
  With one right candidate this is 1 / (rank + 1), the reciprocal rank.
  """
  scores, right = np.asarray(scores, np.float64), np.asarray(right, bool)
  ranks(scores, right)  # the same shape and at-least-one-right checks
  key = np.where(np.isnan(scores), -np.inf, scores)
  order = np.lexsort((right, -key), axis=-1)  # primary: score descending; ties: wrong (False) first
  hits = np.take_along_axis(right, order, axis=1)
  precision = np.cumsum(hits, axis=1) / np.arange(1, scores.shape[1] + 1)
  return np.sum(precision * hits, axis=1) / np.sum(hits, axis=1)
