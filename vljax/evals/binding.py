"""Attribute binding: the true caption must beat its attribute-swapped and relation-swapped twins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vljax.evals import datasets, ranking, world as world_lib
from vljax.evals.arrays import world_images
from vljax.evals.registry import register_evaluator
from vljax.inference.runner import ModelRunner


@register_evaluator("binding")
class BindingEvaluator:
  """acc = mean of attribute_acc and relation_acc; chance is 0.5 for each."""

  needs = "scores"  # vljax.evals.requirements: embeddings or likelihood, as `scoring` picks
  settings_keys = ("every", "num_examples", "scoring")

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    world = world_lib.shapes_world(data, type(self))
    n = int(settings.get("num_examples", 512))
    examples = [world.binding_example(i) for i in range(n)]
    self.images = world_images(examples, data)
    self.tokens = {k: tokenizer.encode([e[k] for e in examples], max_len)
                   for k in ("caption", "attribute_swapped", "relation_swapped")}
    self.scoring = settings.get("scoring", "auto")

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    score = runner.pair_scores(params, self.images, self.tokens, self.scoring)
    # A tie with the swapped twin, or a NaN true caption, is a miss (vljax.evals.ranking).
    attribute = float(np.mean(ranking.beats(score["caption"], score["attribute_swapped"])))
    relation = float(np.mean(ranking.beats(score["caption"], score["relation_swapped"])))
    return {"acc": (attribute + relation) / 2, "attribute_acc": attribute, "relation_acc": relation}
