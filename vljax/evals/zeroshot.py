"""Zero-shot classification over color x shape classes, with a prompt-template ensemble."""

from __future__ import annotations

import numpy as np

from vljax.data import shapes
from vljax.evals.runner import ModelRunner, eval_images, normalize


def class_scores(runner: ModelRunner, params, images: np.ndarray, prompt_tokens: np.ndarray,
                 num_templates: int, scoring: str = "auto") -> np.ndarray:
  """[N_images, N_classes] scores; prompt_tokens hold each class's `num_templates` prompts in a row.

  Embedding models: CLIP's ensemble (mean of a class's normalised prompt embeddings, renormalised,
  cosine with the image). Captioning models: mean log-likelihood of the class's prompts.
  """
  shape = (len(prompt_tokens) // num_templates, num_templates)
  if runner.resolve_scoring(scoring) == "likelihood":
    return runner.loglik_matrix(params, images, prompt_tokens).reshape(len(images), *shape).mean(axis=2)
  z = normalize(runner.texts(params, prompt_tokens).reshape(*shape, -1)).mean(axis=1)
  return runner.images(params, images) @ normalize(z).T


class ZeroShotEvaluator:
  """top1 over all classes, plus whether the predicted color / shape alone is right.

  Embedding models score classes by CLIP's prompt ensemble; captioning models (scoring
  "likelihood") by the mean log-likelihood of the class's prompts given the image.
  """

  name = "zeroshot"

  def __init__(self, settings, *, world: shapes.ShapesWorld, tokenizer, max_len: int):
    n = int(settings.get("num_examples", 640))
    examples = [world.zeroshot_example(i) for i in range(n)]
    self.images = eval_images(examples)
    self.labels = np.array([e["label"] for e in examples])
    self.classes = world.zeroshot_classes()
    self.templates = list(settings.get("templates", None) or shapes.PROMPT_TEMPLATES)
    self.scoring = settings.get("scoring", "auto")
    prompts = [shapes.fill_prompt(t, c) for c in self.classes for t in self.templates]
    self.prompt_tokens = tokenizer.encode(prompts, max_len)

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    scores = class_scores(runner, params, self.images, self.prompt_tokens, len(self.templates), self.scoring)
    pred = np.argmax(scores, axis=1)
    num_shapes = len(shapes.SHAPES)
    return {
        "top1": float(np.mean(pred == self.labels)),
        "color_acc": float(np.mean(pred // num_shapes == self.labels // num_shapes)),
        "shape_acc": float(np.mean(pred % num_shapes == self.labels % num_shapes)),
    }
