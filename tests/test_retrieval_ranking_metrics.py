"""Retrieval MRR and mAP (vljax/evals/retrieval.py, vljax/evals/ranking.py) against a brute-force loop,
with several captions per image, ties and NaN scores."""

import math

import numpy as np
import pytest

from vljax.evals import ranking
from vljax.evals.retrieval import rank_metrics


def _brute_force(scores, text_image):
  """Per query: candidates listed best first, a wrong one before a right one it ties with, NaN last
  (as -inf); then reciprocal rank of the first right one, and AP = mean over right ones of
  (#right up to it) / (its position)."""
  n_img, n_txt = scores.shape
  out = {}
  for direction in ("i2t", "t2i"):
    rr, ap = [], []
    queries = range(n_img) if direction == "i2t" else range(n_txt)
    for q in queries:
      if direction == "i2t":
        cands = [(scores[q, j], text_image[j] == q) for j in range(n_txt)]
      else:
        cands = [(scores[i, q], text_image[q] == i) for i in range(n_img)]
      value = lambda s: -math.inf if math.isnan(s) else s  # noqa: E731
      ordered = sorted(cands, key=lambda c: (-value(c[0]), c[1]))
      seen, precisions, first = 0, [], None
      for pos, (_, right) in enumerate(ordered, 1):
        if right:
          seen += 1
          precisions.append(seen / pos)
          first = first or pos
      rr.append(1 / first)
      ap.append(sum(precisions) / len(precisions))
    out[f"{direction}_mrr"], out[f"{direction}_map"] = sum(rr) / len(rr), sum(ap) / len(ap)
  return out


@pytest.mark.parametrize("kind", ["continuous", "ties", "nan"])
def test_mrr_and_map_match_a_loop(kind):
  rng = np.random.default_rng({"continuous": 0, "ties": 1, "nan": 2}[kind])
  text_image = np.repeat(np.arange(7), rng.integers(1, 5, 7))  # 1-4 captions per image
  scores = rng.normal(size=(7, len(text_image)))
  if kind == "ties":
    scores = np.round(scores * 2) / 2  # many exact ties, between right and wrong captions too
  if kind == "nan":
    scores[rng.random(scores.shape) < 0.2] = np.nan
    scores[3, text_image == 3] = np.nan  # every caption of image 3: a miss, ranked last
  got, want = rank_metrics(scores, text_image), _brute_force(scores, text_image)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-12), key
  assert {"i2t_r1", "t2i_r10"} <= set(got)
  assert got["t2i_map"] == pytest.approx(got["t2i_mrr"])  # one image per caption


def test_ap_by_hand_and_a_collapsed_model():
  # Right captions at positions 1 and 3 of 4: AP = (1/1 + 2/3) / 2.
  ap = ranking.average_precision(np.array([[0.9, 0.5, 0.4, 0.1]]), np.array([[True, False, True, False]]))
  assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
  # Constant scores: every right caption after every wrong one.
  text_image = np.repeat(np.arange(4), 2)
  out = rank_metrics(np.zeros((4, 8)), text_image)
  assert out["i2t_map"] == pytest.approx((1 / 7 + 2 / 8) / 2) and out["i2t_mrr"] == pytest.approx(1 / 7)
  assert out["t2i_mrr"] == pytest.approx(1 / 4)
