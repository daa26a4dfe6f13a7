"""Captioning: generate captions for held-out images, score them against several references."""

from __future__ import annotations

import numpy as np

from vljax import decode as decode_lib
from vljax.data import shapes
from vljax.evals.coco_metrics import caption_metrics
from vljax.evals.runner import ModelRunner, eval_images


def attribute_correct(caption: str, objects: list[dict]) -> bool:
  """True when the caption names at least one color-shape pair and every pair it names is in the image."""
  said = shapes.color_shape_pairs(caption)
  present = {(o["color"], o["shape"]) for o in objects}
  return bool(said) and all(pair in present for pair in said)


class CaptionEvaluator:
  """BLEU-1..4, ROUGE-L, CIDEr-D (COCO caption evaluation) and shapes attribute accuracy."""

  name = "caption"

  def __init__(self, settings, *, world: shapes.ShapesWorld, tokenizer, max_len: int):
    n = int(settings.get("num_examples", 256))
    examples = [world.caption_example(i, int(settings.get("num_references", 5))) for i in range(n)]
    self.images = eval_images(examples)
    self.references = {i: e["references"] for i, e in enumerate(examples)}
    self.objects = [e["objects"] for e in examples]
    # [BOS] + max_len - 1 generated tokens fit the text length the model was built for.
    decode = dict(settings.get("decode", None) or {})
    decode.setdefault("max_len", max_len - 1)
    self.options = decode_lib.DecodeOptions.from_kwargs(**decode)
    self.options.validate()

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    captions, _ = runner.caption(params, self.images, self.options)
    out = caption_metrics(dict(enumerate(captions)), self.references)
    out["attribute_acc"] = float(np.mean([attribute_correct(c, o) for c, o in zip(captions, self.objects)]))
    return out
