"""Zero-shot classification with a prompt-template ensemble: on the shapes world (color x shape
classes), or on a classification set on disk (tfds / JSONL, e.g. ImageNet); with itm_k, also after
BLIP's ITM re-ranking of each image's top classes (vljax/evals/itm_rerank.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vljax.data import shapes
from vljax.evals import datasets, itm_rerank, ranking, templates as templates_lib, world as world_lib
from vljax.evals.arrays import normalize, world_images
from vljax.evals.registry import register_evaluator
from vljax.inference.runner import ModelRunner
from vljax.inference import embedding_scores
from vljax.models.capabilities import MATCHING

PROMPTS_PER_CALL = 8192  # text embeddings are averaged per class as they come: memory is one call's


def class_embeddings(runner: ModelRunner, params, prompt_tokens: np.ndarray, num_templates: int) -> np.ndarray:
  """[N_classes, E]: CLIP's ensemble, the renormalised mean of a class's normalised prompt embeddings;
  prompt_tokens hold each class's `num_templates` prompts in a row."""
  per_call = max(1, PROMPTS_PER_CALL // num_templates) * num_templates
  parts = []
  for start in range(0, len(prompt_tokens), per_call):
    z = runner.texts(params, prompt_tokens[start:start + per_call])
    parts.append(normalize(z.reshape(-1, num_templates, z.shape[-1])).mean(axis=1))
  return normalize(np.concatenate(parts))


def class_scores(runner: ModelRunner, params, images: np.ndarray, prompt_tokens: np.ndarray,
                 num_templates: int, scoring: str = "auto") -> np.ndarray:
  """[N_images, N_classes] scores for preprocessed images (see ZeroShotEvaluator for the two kinds)."""
  return _scores(runner, params, datasets.ArrayImages(images), prompt_tokens, num_templates, scoring)[0]


def _scores(runner: ModelRunner, params, images, prompt_tokens: np.ndarray, num_templates: int,
            scoring: str) -> tuple[np.ndarray, np.ndarray]:
  """(scores of the decodable images [N_kept, N_classes], their positions) for ArrayImages or
  datasets.EvalImages."""
  if runner.resolve_scoring(scoring) == "likelihood":
    num_classes = len(prompt_tokens) // num_templates
    return images.map(lambda x: runner.loglik_matrix(params, x, prompt_tokens).reshape(
        len(x), num_classes, num_templates).mean(axis=2), runner.chunk)
  zcls = class_embeddings(runner, params, prompt_tokens, num_templates)
  zimg, kept = images.map(lambda x: runner.images(params, x), runner.chunk)
  return embedding_scores.score_matrix(zimg, zcls), kept


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[int, float]:
  """Fraction of rows whose label is among the k best classes, by vljax.evals.ranking's rule: a
  class tying with the label ranks above it, a NaN label score is a miss."""
  rank = ranking.label_ranks(scores, labels)
  return {k: float(np.mean(rank < k)) for k in ks}


def shapes_accuracy(scores: np.ndarray, labels: np.ndarray, num_shapes: int) -> dict[str, float]:
  """top1, and whether the best class has the right color / shape alone, for shapes classes
  (class = color * num_shapes + shape). A part is right when some class with it beats every class
  without it: argmax's color (shape) when nothing ties, and a miss when something does."""
  classes = np.arange(scores.shape[1])
  out = {"top1": ranking.label_ranks(scores, labels)}
  for name, part in (("color_acc", classes // num_shapes), ("shape_acc", classes % num_shapes)):
    out[name] = ranking.ranks(scores, part[None, :] == part[labels][:, None])
  return {name: float(np.mean(rank == 0)) for name, rank in out.items()}


@register_evaluator("zeroshot")
class ZeroShotEvaluator:
  """Shapes world (no `dataset`): top1, and whether the predicted color / shape alone is right.
  A classification set on disk (`dataset`, see vljax.evals.datasets): top1, top5, and `skipped`
  when some images could not be decoded.

  Embedding models score classes by CLIP's prompt ensemble; captioning models (scoring
  "likelihood") by the mean log-likelihood of the class's prompts given the image.

  Settings: every, num_examples, scoring ("auto", "embedding", "likelihood"), templates (a set name
  from vljax.evals.templates, "clip80" / "short" / "shapes", or a list of strings with "{}"; also
  accepted inside `dataset`), dataset, itm_k.

  itm_k > 0 (a model with an ITM head): besides top1.. (the first-stage scores, what they mean
  without it), itm_top1, itm_color_acc, itm_shape_acc (shapes) or itm_top1, itm_top5 (a set on
  disk): each image's top itm_k classes re-scored by the class's ITM match logit, the mean over its
  prompts, + its first-stage score; the other classes below them in their first-stage order
  (vljax/evals/itm_rerank.py). It costs itm_k x templates fusion passes an image. 0 or absent: off.
  """

  needs = "scores"  # vljax.evals.requirements: embeddings or likelihood, as `scoring` picks
  option_needs = {itm_rerank.KEY: MATCHING}  # vljax.evals.requirements: set (> 0), itm_k needs an ITM head
  settings_keys = ("every", "num_examples", "scoring", "templates", "dataset", itm_rerank.KEY)

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    spec = datasets.as_dict(settings.get("dataset", None))
    self.scoring = settings.get("scoring", "auto")
    self.itm_k = itm_rerank.check_itm_k(settings, f"evals.{self.name}")
    spec_templates = spec.pop("templates", None) if spec else None
    given_templates = spec_templates or settings.get("templates", None)
    num_examples = settings.get("num_examples", None)
    normalization = data.get("normalization", "siglip")
    if spec:
      ds = datasets.open_classification(
          spec, image_size=world_lib.image_size(data),
          normalization=normalization,
          num_examples=None if num_examples is None else int(num_examples))
      self.images, self.labels, self.classes = ds.images, ds.labels, ds.class_names
      self.templates = templates_lib.resolve_templates(given_templates or "clip80")
      prompts = [templates_lib.fill(t, c) for c in self.classes for t in self.templates]
    else:
      world = world_lib.shapes_world(data, type(self))
      examples = [world.zeroshot_example(i) for i in range(int(num_examples or 640))]
      self.images = datasets.ArrayImages(world_images(examples, data))
      self.labels = np.array([e["label"] for e in examples])
      self.classes = world.zeroshot_classes()
      self.templates = templates_lib.resolve_templates(given_templates or "shapes")
      prompts = [shapes.fill_prompt(t, c) for c in self.classes for t in self.templates]
    self.shapes = not spec
    self.prompt_tokens = tokenizer.encode(prompts, max_len)

  def scores(self, runner: ModelRunner, params) -> tuple[np.ndarray, np.ndarray]:
    """(class scores [N_kept, N_classes] of the decodable images, their positions in the set)."""
    return _scores(runner, params, self.images, self.prompt_tokens, len(self.templates), self.scoring)

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    scores, kept = self.scores(runner, params)
    labels = self.labels[kept]
    out = self.accuracy(scores, labels)
    if self.itm_k:
      out.update(itm_rerank.prefixed(self.accuracy(self.reranked(runner, params, scores, kept, labels), labels)))
    if self.images.skipped:
      out["skipped"] = float(self.images.skipped)
    return out

  def accuracy(self, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if self.shapes:
      return shapes_accuracy(scores, labels, len(shapes.SHAPES))
    return {f"top{k}": v for k, v in topk_accuracy(scores, labels).items()}

  def reranked(self, runner: ModelRunner, params, scores: np.ndarray, kept: np.ndarray, labels: np.ndarray
               ) -> np.ndarray:
    """scores [N_kept, N_classes] with each image's top itm_k classes re-scored: a class's match logit
    is the mean of its prompts'."""
    per_class = len(self.templates)
    prompts = itm_rerank.image_match(runner, params, self.images, kept, self.prompt_tokens)

    def match(rows: np.ndarray, classes: np.ndarray) -> np.ndarray:
      prompt = classes[:, None] * per_class + np.arange(per_class)[None, :]
      return prompts(np.repeat(rows, per_class), prompt.reshape(-1)).reshape(-1, per_class).mean(axis=1)

    right = np.arange(scores.shape[1])[None, :] == labels[:, None]  # breaks ties at the k-th place only
    return itm_rerank.rerank(scores, right, self.itm_k, match)
