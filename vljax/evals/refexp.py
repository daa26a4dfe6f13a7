"""Referring expressions: the LocCa decoder's box for an object's text, against the true box.

On a fixed set of held-out shapes scenes (the eval split, the same in every run of a world), one
object per image whose text ("a large red circle") no other object of the image shares; the decoder
reads "[BOS] <refexp> TEXT <sep>" and greedily emits 4 location tokens (the argmax over the location
tokens alone, so every answer is a box: vljax/data/boxes.py). Logs acc_iou50 (IoU >= 0.5 with the
true box), mean_iou, and valid (the fraction with x0 < x1 and y0 < y1; an invalid box has IoU 0).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vljax.data import boxes, shapes
from vljax.evals import datasets, world as world_lib
from vljax.evals.arrays import eval_images
from vljax.evals.registry import register_evaluator
from vljax.inference.runner import ModelRunner

IOU_THRESHOLD = 0.5


def referred_objects(world: shapes.ShapesWorld, n: int) -> list[dict]:
  """n eval-split examples, each with the one object it refers to: {"image", "text", "box"}; the
  object is the index-th (mod count) of those with a text of their own in the image."""
  out, index = [], 0
  while len(out) < n:
    ex = world.example(index, split="eval", boxes=True)
    objects = shapes.object_records(ex)
    unique = boxes.unique_objects(objects)
    if unique:
      obj = objects[unique[index % len(unique)]]
      out.append({"image": ex["image"], "text": obj["text"], "box": obj["box"]})
    index += 1
  return out


def box_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  """acc_iou50, mean_iou and valid of predicted boxes [N, 4] against true ones [N, 4]."""
  predicted = np.asarray(predicted, np.float64)
  valid = (predicted[:, 2] > predicted[:, 0]) & (predicted[:, 3] > predicted[:, 1])
  scores = np.where(valid, boxes.iou(predicted, truth), 0.0)
  return {"acc_iou50": float(np.mean(scores >= IOU_THRESHOLD)), "mean_iou": float(np.mean(scores)),
          "valid": float(np.mean(valid))}


@register_evaluator("refexp")
class RefexpEvaluator:
  """Box accuracy of the LocCa decoder's referring-expression task (module docstring)."""

  needs = "generation"  # a caption decoder (vljax.evals.requirements)
  settings_keys = ("every", "num_examples")

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    if not tokenizer.loc_bins:
      raise ValueError(f"evals.{self.name} reads boxes as location tokens, but data.tokenizer="
                       f"{data.get('tokenizer')!r} has none; valid: add the tokenizer option loc=N (e.g. 'shapes?loc=32')")
    world = world_lib.shapes_world(data, type(self))
    examples = referred_objects(world, int(settings.get("num_examples", 256)))
    self.images = eval_images(examples, data.get("normalization", "siglip"))
    self.truth = np.asarray([e["box"] for e in examples], np.float32)
    prompts = [boxes.prompt_ids(tokenizer, "refexp", e["text"]) for e in examples]
    self.lengths = np.asarray([len(p) for p in prompts], np.int32)
    if self.lengths.max() + 4 > max_len:
      raise ValueError(f"evals.{self.name}: a prompt of {self.lengths.max()} tokens and its box do not fit "
                       f"data.max_len={max_len}")
    self.ids = np.full((len(prompts), max_len), tokenizer.pad_id, np.int32)
    for row, p in zip(self.ids, prompts):
      row[:len(p)] = p
    self.loc_first, self.bins = tokenizer.loc_first_id, tokenizer.loc_bins

  @functools.lru_cache(maxsize=1)
  def _decode_fn(self, runner: ModelRunner):
    """(params, memory [B, S, D], ids [B, L], lengths [B]) -> bins [B, 4], greedy over location tokens."""
    first, bins = self.loc_first, self.bins

    def decode(params, memory, ids, lengths):
      rows = jnp.arange(ids.shape[0])
      out = []
      for k in range(4):  # the decoder is causal: the padding after a position never changes its logits
        logits = runner._apply(params, memory, ids, method="caption_logits")
        at = logits[rows, lengths - 1 + k, first:first + bins]
        token = jnp.argmax(at, axis=-1).astype(jnp.int32)
        ids = ids.at[rows, lengths + k].set(token + first)
        out.append(token)
      return jnp.stack(out, axis=1)
    return jax.jit(decode)

  def predict(self, runner: ModelRunner, params) -> np.ndarray:
    """float32 [N, 4]: the decoded boxes (bin centers), normalized xyxy."""
    memory = runner.memory(params, self.images)
    fn = self._decode_fn(runner)
    bins_of = runner._chunked(lambda m, i, n: fn(params, m, i, n), memory, self.ids, self.lengths)
    return boxes.dequantize(bins_of, self.bins)

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    return box_scores(self.predict(runner, params), self.truth)
