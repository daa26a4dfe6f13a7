"""Compositionality on sets on disk (vljax/evals/compositional_sets.py): ARO, SugarCrepe and any
image-with-hard-negatives JSONL, where the true caption must outscore each of its negatives; and
Winoground, whose text, image and group scores follow its paper. Without a `dataset`, the shapes
world's two-object scenes with SugarCrepe's seven kinds of negative (vljax/evals/shapes_negatives.py),
each kind scored on its own: `<kind>_acc`, and `acc` their mean.

Scores are the runner's image-text scores (embedding cosine, or log p(caption | image) for a
captioner, as `scoring` picks), so every objective is judged by the same rule. A tie or a NaN counts
against the model (vljax.evals.ranking). Images that cannot be decoded are skipped and counted;
a Winoground example needs both of its images.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vljax.evals import compositional_sets, datasets, ranking, shapes_negatives, world as world_lib
from vljax.evals.arrays import eval_images
from vljax.evals.registry import register_evaluator
from vljax.inference.runner import ModelRunner

MAX_CATEGORY_METRICS = 16  # more categories (ARO's 48 relations) are reported by macro_acc only


def _metric_name(category: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", category.lower()).strip("_") or "none"


def choice_metrics(scores: np.ndarray, categories: list[str]) -> dict[str, float]:
  """scores [N, 1 + negatives]: column 0 the true caption's. acc; with several categories also the
  mean over categories (macro_acc) and, for a few, each one's accuracy."""
  right = np.zeros(scores.shape, bool)
  right[:, 0] = True
  correct = ranking.ranks(scores, right) == 0
  out = {"acc": float(np.mean(correct))}
  names = sorted(set(categories))
  if len(names) > 1:
    per = {c: float(np.mean(correct[[k == c for k in categories]])) for c in names}
    out["macro_acc"] = float(np.mean(list(per.values())))
    if len(names) <= MAX_CATEGORY_METRICS:
      out.update({f"{_metric_name(c)}_acc": v for c, v in per.items()})
  return out


def kind_metrics(scores: np.ndarray, kinds: tuple[str, ...]) -> dict[str, float]:
  """scores [N, 1 + len(kinds)]: column 0 the true caption's, column 1 + j its negative of kind j.
  Each kind's accuracy, and acc their mean (every image has one negative of each kind)."""
  per = {f"{k}_acc": float(np.mean(ranking.beats(scores[:, 0], scores[:, 1 + j]))) for j, k in enumerate(kinds)}
  return {"acc": float(np.mean(list(per.values()))), **per}


def winoground_metrics(scores: np.ndarray) -> dict[str, float]:
  """scores [K, 2 images, 2 captions]: s[k, i, c] scores image i with caption c of example k.
  text: each image prefers its own caption; image: each caption prefers its own image; group: both.
  Strict comparisons, so ties and NaN are misses."""
  s = scores
  text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
  image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
  return {"text_score": float(np.mean(text)), "image_score": float(np.mean(image)),
          "group_score": float(np.mean(text & image))}


@register_evaluator("compositionality")
class CompositionalityEvaluator:
  """Settings: every, num_examples (rows; Winoground: examples; shapes: scenes, default 512),
  scoring, dataset (layouts in vljax/evals/compositional_sets.py; none: the shapes world)."""

  needs = "scores"  # vljax.evals.requirements: embeddings or likelihood, as `scoring` picks
  settings_keys = ("every", "num_examples", "scoring", "dataset")

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    spec = datasets.as_dict(settings.get("dataset", None))
    num_examples = settings.get("num_examples", None)
    self.scoring = settings.get("scoring", "auto")
    self.kinds = () if spec else shapes_negatives.KINDS  # one negative per kind, scored per kind
    if spec:
      self.set = compositional_sets.open_set(spec, image_size=world_lib.image_size(data),
                                             normalization=data.get("normalization", "siglip"),
                                             num_examples=None if num_examples is None else int(num_examples))
    else:
      self.set = _shapes_set(data, int(num_examples or 512), type(self))
    encode = lambda texts: tokenizer.encode(texts, max_len)
    if isinstance(self.set, compositional_sets.PairSet):  # one row per image: both captions of its example
      self.tokens = {f"caption_{c}": np.repeat(encode([pair[c] for pair in self.set.captions]), 2, axis=0)
                     for c in range(2)}
    else:  # rows with fewer negatives repeat their first (a repeat changes no ranking)
      width = max(len(n) for n in self.set.negatives)
      self.tokens = {"positive": encode(self.set.positives)}
      self.tokens.update({f"negative_{j}": encode([n[j] if j < len(n) else n[0] for n in self.set.negatives])
                          for j in range(width)})

  def scores(self, runner: ModelRunner, params) -> tuple[np.ndarray, np.ndarray]:
    """(scores [kept images, texts per image], the kept images' rows)."""
    def score(pixels, positions):
      out = runner.pair_scores(params, pixels, {k: t[positions] for k, t in self.tokens.items()}, self.scoring)
      return np.stack([out[k] for k in self.tokens], axis=1)

    return self.set.images.map(score, runner.chunk, with_positions=True)

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    scores, kept = self.scores(runner, params)
    if self.kinds:
      out = kind_metrics(scores, self.kinds)
    elif isinstance(self.set, compositional_sets.PairSet):
      full = np.full((len(self.set.images), 2), np.nan, np.float64)
      full[kept] = scores
      decoded = np.zeros(len(self.set.images), bool)
      decoded[kept] = True
      whole = decoded.reshape(-1, 2).all(axis=1)  # both images of the example decoded
      out = winoground_metrics(full.reshape(-1, 2, 2)[whole])
    else:
      out = choice_metrics(scores, [self.set.categories[i] for i in kept])
    if self.set.images.skipped:
      out["skipped"] = float(self.set.images.skipped)
    return out


def _shapes_set(data: Mapping[str, Any], n: int, evaluator: type) -> compositional_sets.ChoiceSet:
  """The binding evaluator's scenes, each with its negative of every kind (shapes_negatives.KINDS)."""
  world = world_lib.shapes_world(data, evaluator)
  examples = [world.binding_example(i) for i in range(n)]
  captions = [shapes_negatives.negatives(e) for e in examples]
  images = datasets.ArrayImages(eval_images(examples, data.get("normalization", "siglip")))
  return compositional_sets.ChoiceSet(images, [c for c, _ in captions],
                                      [[negs[k] for k in shapes_negatives.KINDS] for _, negs in captions],
                                      ["shapes"] * n)
