"""Image <-> caption retrieval on held-out examples: R@1/5/10 both ways."""

from __future__ import annotations

import numpy as np

from vljax.data import shapes
from vljax.evals.runner import ModelRunner, eval_images


def recall_at_k(scores: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
  """scores[i, j] for query i and candidate j, the right candidate of query i being j = i."""
  # Rank of the right candidate = how many candidates score strictly higher.
  rank = np.sum(scores > np.diag(scores)[:, None], axis=1)
  return {k: float(np.mean(rank < k)) for k in ks}


class RetrievalEvaluator:
  """Scores by embedding cosine, or (scoring "likelihood") by log p(caption | image)."""

  name = "retrieval"

  def __init__(self, settings, *, world: shapes.ShapesWorld, tokenizer, max_len: int):
    n = int(settings.get("num_examples", 512))
    examples = [world.example(i, split="eval") for i in range(n)]
    self.images = eval_images(examples)
    self.tokens = tokenizer.encode([e["caption"] for e in examples], max_len)
    self.scoring = settings.get("scoring", "auto")

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    scores = runner.similarity(params, self.images, self.tokens, self.scoring)
    out = {}
    for direction, s in (("i2t", scores), ("t2i", scores.T)):
      for k, r in recall_at_k(s).items():
        out[f"{direction}_r{k}"] = r
    return out
