"""Image <-> caption retrieval, R@1/5/10, MRR and mAP both ways: on held-out shapes examples (one
caption per image), or on a caption set on disk with several captions per image (COCO / Flickr30k
style). MRR reads an image's best caption (as R@K); mAP all of its captions. A caption has one
image, so its t2i AP is its reciprocal rank and t2i_map equals t2i_mrr. With itm_k, the same metrics
after BLIP's ITM re-ranking of each query's top k (vljax/evals/itm_rerank.py), prefixed itm_."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vljax.evals import datasets, itm_rerank, ranking, world as world_lib
from vljax.evals.arrays import world_images
from vljax.evals.registry import register_evaluator
from vljax.inference.runner import ModelRunner
from vljax.inference import embedding_scores
from vljax.models.capabilities import MATCHING

KS = (1, 5, 10)


def retrieval_ranks(scores: np.ndarray, text_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(i2t ranks [N_images], t2i ranks [N_texts]) for scores [N_images, N_texts], where caption j
  describes image text_image[j].

  By vljax.evals.ranking's rule (ties and NaN count against the model): a caption's rank counts
  the other images scoring >= its own; an image's counts the other images' captions scoring >= the
  best of its own (any of them retrieved is a hit). Constant scores give R@K = 0 for K < N.
  """
  text_image = np.asarray(text_image)
  own = text_image[None, :] == np.arange(scores.shape[0])[:, None]  # [N_images, N_texts]
  return ranking.ranks(scores, own), ranking.ranks(scores.T, own.T)


def recall_at_k(ranks: np.ndarray, ks=KS) -> dict[int, float]:
  return {k: float(np.mean(ranks < k)) for k in ks}


def own_texts(text_image: np.ndarray, num_images: int) -> np.ndarray:
  """bool [N_images, N_texts]: which captions describe which image."""
  return np.asarray(text_image)[None, :] == np.arange(num_images)[:, None]


def direction_metrics(direction: str, scores: np.ndarray, right: np.ndarray) -> dict[str, float]:
  """<direction>_r1/_r5/_r10, _mrr, _map of queries scores [N_queries, N_candidates] whose right
  candidates are `right`, by vljax.evals.ranking's rule for ties and NaN."""
  r = ranking.ranks(scores, right)
  out = {f"{direction}_r{k}": v for k, v in recall_at_k(r).items()}
  out[f"{direction}_mrr"] = float(np.mean(1.0 / (r + 1)))
  out[f"{direction}_map"] = float(np.mean(ranking.average_precision(scores, right)))
  return out


def rank_metrics(scores: np.ndarray, text_image: np.ndarray) -> dict[str, float]:
  """i2t_r1..t2i_r10, i2t_mrr, t2i_mrr, i2t_map, t2i_map for scores [N_images, N_texts] (as
  retrieval_ranks), by vljax.evals.ranking's rule for ties and NaN."""
  own = own_texts(text_image, scores.shape[0])
  return {**direction_metrics("i2t", scores, own), **direction_metrics("t2i", scores.T, own.T)}


@register_evaluator("retrieval")
class RetrievalEvaluator:
  """Scores by embedding cosine, or (scoring "likelihood") by log p(caption | image).

  Settings: every, num_examples (images), scoring, dataset (see vljax.evals.datasets; default: the
  shapes world), itm_k. On a set on disk, `skipped` counts images that could not be decoded; their
  captions leave the evaluation with them.

  itm_k > 0 (a model with an ITM head: BLIP's k_test): besides i2t_r1.. (the first-stage scores,
  what they mean without it), itm_i2t_r1, .., itm_t2i_map: each image's top itm_k captions and each
  caption's top itm_k images re-scored by ITM match logit + first-stage score, the rest below them
  in their first-stage order (vljax/evals/itm_rerank.py). 0 or absent: off.
  """

  needs = "scores"  # vljax.evals.requirements: embeddings or likelihood, as `scoring` picks
  option_needs = {itm_rerank.KEY: MATCHING}  # vljax.evals.requirements: set (> 0), itm_k needs an ITM head
  settings_keys = ("every", "num_examples", "scoring", "dataset", itm_rerank.KEY)

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    spec = datasets.as_dict(settings.get("dataset", None))
    num_examples = settings.get("num_examples", None)
    self.scoring = settings.get("scoring", "auto")
    self.itm_k = itm_rerank.check_itm_k(settings, f"evals.{self.name}")
    normalization = data.get("normalization", "siglip")
    if spec:
      ds = datasets.open_captions(spec, image_size=world_lib.image_size(data),
                                  normalization=normalization,
                                  num_examples=None if num_examples is None else int(num_examples))
      self.images, captions = ds.images, ds.captions
    else:
      world = world_lib.shapes_world(data, type(self))
      examples = [world.example(i, split="eval") for i in range(int(num_examples or 512))]
      self.images = datasets.ArrayImages(world_images(examples, data))
      captions = [[e["caption"]] for e in examples]
    self.text_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    self.tokens = tokenizer.encode([c for cs in captions for c in cs], max_len)

  def scores(self, runner: ModelRunner, params) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N_kept, N_texts] of the decodable images with every caption, their positions)."""
    if runner.resolve_scoring(self.scoring) == "likelihood":
      return self.images.map(lambda x: runner.loglik_matrix(params, x, self.tokens), runner.chunk)
    zimg, kept = self.images.map(lambda x: runner.images(params, x), runner.chunk)
    return embedding_scores.score_matrix(zimg, runner.texts(params, self.tokens)), kept

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    scores, kept = self.scores(runner, params)
    # Captions of skipped images go with them; the kept images are renumbered 0..len(kept)-1.
    position = np.full(len(self.images), -1)
    position[kept] = np.arange(len(kept))
    text_image = position[self.text_image]
    has_image = text_image >= 0
    out = rank_metrics(scores[:, has_image], text_image[has_image])
    if self.itm_k:
      out.update(self.reranked_metrics(runner, params, scores[:, has_image], kept, text_image[has_image],
                                       self.tokens[has_image]))
    if self.images.skipped:
      out["skipped"] = float(self.images.skipped)
    return out

  def reranked_metrics(self, runner: ModelRunner, params, scores: np.ndarray, kept: np.ndarray,
                       text_image: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """itm_i2t_r1.. of scores [N_kept, N_texts] (texts of kept images, text_image numbering them)."""
    own = own_texts(text_image, len(kept))
    match = itm_rerank.image_match(runner, params, self.images, kept, tokens)
    i2t, t2i = itm_rerank.rerank_both_ways(scores, own, self.itm_k, match)
    return itm_rerank.prefixed({**direction_metrics("i2t", i2t, own), **direction_metrics("t2i", t2i, own.T)})
