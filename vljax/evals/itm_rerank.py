"""ITM re-ranking, BLIP's `k_test`: the retrieval and zero-shot evaluators' setting `itm_k`.

Each query's k best candidates by the first-stage score s (the contrastive cosine; the caption
log-likelihood under scoring="likelihood") are scored again by the model's image-text matching
head, score = ITM match logit + s, as BLIP's evaluation does (salesforce/BLIP train_retrieval.py
`evaluation`, LAVIS blip_retrieval `compute_sim_matrix`: `itm_head(...)[:, 1] + topk_sim`, the raw
logit of "match", not its probability). BLIP sets every other candidate to -100, which ties them
all; here they keep their first-stage order below every re-scored one, so a re-ranked R@K with K > k
still reads them, and a query whose right answer is outside its top k is never promoted by it.

The top k follow vljax.evals.ranking's rule: NaN scores come last, and candidates that tie at the
k-th place enter wrong ones first (a tie counts against the model). Pairs are scored through the
runner (ModelRunner.pair_itm_logits, in its chunks), the images encoded again a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

KEY = "itm_k"
PREFIX = "itm_"  # re-ranked metrics are the first-stage ones' names with this prefix: itm_i2t_r1, itm_top1

# (rows, cols) int [P] -> float [P]: the ITM match logit of each (query row, candidate column) pair
Match = Callable[[np.ndarray, np.ndarray], np.ndarray]


def check_itm_k(settings: Mapping[str, Any], where: str) -> int:
  """settings["itm_k"] (absent: 0, off) as an int >= 0."""
  value = settings.get(KEY, 0)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{where}.{KEY}={value!r} is invalid; valid: an int >= 0 (0: off; k: each query's first-stage "
                     "top k re-scored by the model's ITM head, BLIP's k_test)")
  return int(value)


def top_k(scores: np.ndarray, right: np.ndarray, k: int) -> np.ndarray:
  """bool [N, C]: each row's k best candidates of scores [N, C]; NaN last, and at a tie the wrong
  candidates (right False) first."""
  scores, right = np.asarray(scores), np.asarray(right, bool)
  key = np.where(np.isnan(scores), -np.inf, scores)
  order = np.lexsort((right, -key), axis=-1)[:, :k]
  inside = np.zeros(scores.shape, bool)
  np.put_along_axis(inside, order, True, axis=1)
  return inside


def combine(scores: np.ndarray, inside: np.ndarray, match: np.ndarray) -> np.ndarray:
  """float64 [N, C]: match + scores where inside; elsewhere scores, shifted per row below the row's
  lowest finite re-scored value (one constant a row, in float64: their order is kept, and only values
  within ~1e-15 of each other could merge). Scores are finite, NaN or -inf (an impossible caption's
  log-likelihood)."""
  s = np.asarray(scores, np.float64)
  rescored = s + np.asarray(match, np.float64)
  low = np.min(np.where(inside & np.isfinite(rescored), rescored, np.inf), axis=1)
  high = np.max(np.where(~inside & np.isfinite(s), s, -np.inf), axis=1)
  shift = np.where(np.isfinite(low) & np.isfinite(high), high - low + 1.0, 0.0)
  return np.where(inside, rescored, s - shift[:, None])


def rerank(scores: np.ndarray, right: np.ndarray, k: int, match: Match) -> np.ndarray:
  """float64 [N, C]: scores [N, C] with each row's top k re-scored (combine); right as
  vljax.evals.ranking.ranks takes it (it only breaks ties at the k-th place)."""
  inside = top_k(scores, right, k)
  return combine(scores, inside, _matched(inside, match))


def rerank_both_ways(scores: np.ndarray, right: np.ndarray, k: int, match: Match) -> tuple[np.ndarray, np.ndarray]:
  """(i2t [N_images, N_texts], t2i [N_texts, N_images]) re-ranked from scores [N_images, N_texts]:
  each image's top k texts and each text's top k images, a pair in both scored once."""
  i2t = top_k(scores, right, k)
  t2i = top_k(scores.T, right.T, k)
  matched = _matched(i2t | t2i.T, match)
  return combine(scores, i2t, matched), combine(scores.T, t2i, matched.T)


def _matched(pairs: np.ndarray, match: Match) -> np.ndarray:
  rows, cols = np.nonzero(pairs)
  out = np.full(pairs.shape, np.nan, np.float64)
  out[rows, cols] = match(rows, cols)
  return out


def image_match(runner, params, images, kept: np.ndarray, tokens: np.ndarray) -> Match:
  """match(rows, cols): the ITM match logit of (the image of score row rows[p], tokens[cols[p]]).

  images: datasets.ArrayImages or EvalImages, whose decodable images at positions `kept` are the
  score rows; each chunk of them is encoded once (fusion_memory) and its pairs scored.
  """
  kept = np.asarray(kept)

  def match(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    position = kept[rows]

    def score(pixels: np.ndarray, positions: np.ndarray) -> np.ndarray:
      pairs = np.nonzero(np.isin(position, positions))[0]
      if not len(pairs):
        return np.zeros((0, 2))
      memory = runner.fusion_memory(params, pixels)
      logits = runner.pair_itm_logits(params, memory, tokens, np.searchsorted(positions, position[pairs]), cols[pairs])
      return np.stack([pairs, logits[:, 1]], axis=1).astype(np.float64)

    out = np.full(len(rows), np.nan, np.float64)
    scored, _ = images.map(score, runner.chunk, with_positions=True)
    out[scored[:, 0].astype(np.int64)] = scored[:, 1]
    return out
  return match


def prefixed(metrics: Mapping[str, float]) -> dict[str, float]:
  return {PREFIX + name: value for name, value in metrics.items()}
