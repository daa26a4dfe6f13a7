"""Zero-shot classification over color x shape classes, with a prompt-template ensemble."""

from __future__ import annotations

import numpy as np

from vljax.data import shapes
from vljax.evals.embed import Embedder, eval_images, normalize


class ZeroShotEvaluator:
  """top1 over all classes, plus whether the predicted color / shape alone is right."""

  name = "zeroshot"

  def __init__(self, settings, *, world: shapes.ShapesWorld, tokenizer, max_len: int):
    n = int(settings.get("num_examples", 640))
    examples = [world.zeroshot_example(i) for i in range(n)]
    self.images = eval_images(examples)
    self.labels = np.array([e["label"] for e in examples])
    self.classes = world.zeroshot_classes()
    self.templates = list(settings.get("templates", None) or shapes.PROMPT_TEMPLATES)
    prompts = [shapes.fill_prompt(t, c) for c in self.classes for t in self.templates]
    self.prompt_tokens = tokenizer.encode(prompts, max_len)

  def class_embeddings(self, embedder: Embedder, params) -> np.ndarray:
    """Mean of each class's normalised prompt embeddings, renormalised (CLIP's ensemble)."""
    z = embedder.texts(params, self.prompt_tokens).reshape(len(self.classes), len(self.templates), -1)
    return normalize(normalize(z).mean(axis=1))

  def __call__(self, embedder: Embedder, params) -> dict[str, float]:
    zimg = embedder.images(params, self.images)
    pred = np.argmax(zimg @ self.class_embeddings(embedder, params).T, axis=1)
    num_shapes = len(shapes.SHAPES)
    return {
        "top1": float(np.mean(pred == self.labels)),
        "color_acc": float(np.mean(pred // num_shapes == self.labels // num_shapes)),
        "shape_acc": float(np.mean(pred % num_shapes == self.labels % num_shapes)),
    }
