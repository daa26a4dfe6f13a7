"""Captioning: generate captions for held-out images, score them against several references."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vljax import decode as decode_lib
from vljax.data import prompts, shapes
from vljax.evals import datasets, world as world_lib
from vljax.evals.arrays import eval_images
from vljax.evals.coco_metrics import caption_metrics
from vljax.evals.registry import register_evaluator
from vljax.evals.shots import parse_shots, support_indices
from vljax.inference.runner import ModelRunner


def attribute_correct(caption: str, objects: list[dict]) -> bool:
  """True when the caption names at least one color-shape pair and every pair it names is in the image."""
  said = shapes.color_shape_pairs(caption)
  present = {(o["color"], o["shape"]) for o in objects}
  return bool(said) and all(pair in present for pair in said)


@register_evaluator("caption")
class CaptionEvaluator:
  """BLEU-1..4, ROUGE-L, CIDEr-D (COCO caption evaluation) and shapes attribute accuracy.

  With `shots` (image-conditioned language models), also k-shot: k training-split image-caption
  chunks before the query image's "<image> caption:", logged as cider_{k}shot; settings
  num_support, support_max_words (short support captions keep long prompts in range), seed.
  """

  needs = "generation"  # with `shots`: prompted generation (vljax.evals.requirements)
  settings_keys = ("every", "num_examples", "num_references", "decode", "shots", "num_support",
                   "support_max_words", "seed", "prompt_max_len")

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    normalization = data.get("normalization", "siglip")
    world = world_lib.shapes_world(data, type(self))
    n = int(settings.get("num_examples", 256))
    examples = [world.caption_example(i, int(settings.get("num_references", 5))) for i in range(n)]
    self.images = eval_images(examples, normalization)
    self.references = {i: e["references"] for i, e in enumerate(examples)}
    self.objects = [e["objects"] for e in examples]
    # [BOS] + max_len - 1 generated tokens fit the text length the model was built for.
    decode = dict(settings.get("decode", None) or {})
    decode.setdefault("max_len", max_len - 1)
    self.options = decode_lib.DecodeOptions.from_kwargs(**decode)
    self.options.validate()
    shots = settings.get("shots", None)
    self.shots = () if shots is None else parse_shots(shots, "evals.caption.shots")
    if self.shots:
      self._few_shot_prompts(settings, world, tokenizer, n, int(settings.get("prompt_max_len", max_len)),
                             normalization)

  def _few_shot_prompts(self, settings, world, tokenizer, n: int, prompt_max_len: int,
                        normalization: str) -> None:
    num_support = int(settings.get("num_support", 256))
    # Captions run up to 24 tokens a chunk: an 8-shot prompt of long ones outgrows a small LM's
    # positions, so the support pool may be limited to short captions.
    max_words = int(settings.get("support_max_words", 0)) or shapes.MAX_CAPTION_WORDS
    support, i = [], 0
    while len(support) < num_support:
      ex = world.example(i, split="train")
      if len(shapes.split_words(ex["caption"])) <= max_words:
        support.append(ex)
      i += 1
    self.support_images = eval_images(support, normalization)
    self.support = support_indices(n, num_support, max(self.shots), int(settings.get("seed", 0)))
    chunks = [prompts.caption_chunk(e["caption"]) for e in support]
    self.prompts = {}
    for k in self.shots:
      ids, lengths = prompts.prompt_ids(
          tokenizer, [[chunks[j] for j in self.support[i, :k]] + [prompts.caption_chunk()] for i in range(n)],
          prompt_max_len)
      self.prompts[k] = (ids[:, :int(lengths.max())], lengths)

  def _scores(self, captions: list[str]) -> dict[str, float]:
    out = caption_metrics(dict(enumerate(captions)), self.references)
    out["attribute_acc"] = float(np.mean([attribute_correct(c, o) for c, o in zip(captions, self.objects)]))
    return out

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    if not self.shots:
      return self._scores(runner.caption(params, self.images, self.options)[0])
    out = {}
    for k in self.shots:
      ids, lengths = self.prompts[k]
      images = np.concatenate([self.support_images[self.support[:, :k]], self.images[:, None]], axis=1)
      scores = self._scores(runner.generate(params, images, ids, lengths, self.options))
      if k == 0:
        out.update(scores)
      out[f"cider_{k}shot"] = scores["cider"]
    return out
