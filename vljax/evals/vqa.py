"""Open-ended VQA on the shapes world, zero- and few-shot, for image-conditioned language models.

A k-shot prompt is k training-split question-answer chunks followed by the eval question:
"<image> question: how many objects are there? answer: two<eoc><image> question: ... answer:".
The model generates the answer; it is scored with the VQA v2 normalisation and accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vljax import decode as decode_lib
from vljax.data import prompts
from vljax.evals import datasets, world as world_lib
from vljax.evals.arrays import eval_images
from vljax.evals.registry import register_evaluator
from vljax.evals.shots import parse_shots, support_indices
from vljax.evals.vqa_metrics import accuracy_by_type, majority_baseline


@register_evaluator("vqa")
class VQAEvaluator:
  """Accuracy of generated answers, overall and per question type, k-shot for each k in `shots`.

  Reports `acc`, `acc_<type>` (0-shot), `acc_<k>shot` for every k, and `majority_acc`,
  `majority_acc_<type>`: always answering a type's most frequent support-pool answer, the score of
  a model that learned the answer prior and not the image.
  """

  needs = "prompted_generation"  # several images with shots > 0 (vljax.evals.requirements)
  settings_keys = ("every", "num_examples", "shots", "num_support", "seed", "prompt_max_len", "decode")

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    datasets.check_keys(settings, self.settings_keys, f"evals.{self.name}")
    normalization = data.get("normalization", "siglip")
    n = int(settings.get("num_examples", 256))
    self.shots = parse_shots(settings.get("shots", (0,)), "evals.vqa.shots")
    num_support = int(settings.get("num_support", 256))
    if n < 1:
      raise ValueError(f"evals.vqa.num_examples={n} is invalid; valid: >= 1.")
    if num_support < max(1, *self.shots):
      raise ValueError(f"evals.vqa.num_support={num_support} is too small: the majority baseline needs "
                       f">= 1 support example and {max(self.shots)}-shot prompts need "
                       f">= {max(self.shots)} distinct ones.")
    seed = int(settings.get("seed", 0))
    self.prompt_max_len = int(settings.get("prompt_max_len", max_len))
    decode = dict(settings.get("decode", None) or {})
    decode.setdefault("method", "greedy")
    decode.setdefault("max_len", 4)  # " green star<eoc>", the longest answer, is 3 tokens
    self.options = decode_lib.DecodeOptions.from_kwargs(**decode)

    world = world_lib.shapes_world(data, type(self))
    examples = [world.vqa_example(i, split="eval") for i in range(n)]
    support = [world.vqa_example(i, split="train") for i in range(num_support)]
    self.questions = [e["question"] for e in examples]
    self.answers = [e["answer"] for e in examples]
    self.types = [e["question_type"] for e in examples]
    self.images = eval_images(examples, normalization)
    self.support_images = eval_images(support, normalization)
    self.support = support_indices(n, num_support, max(self.shots), seed)
    self.majority = majority_baseline([e["answer"] for e in support], [e["question_type"] for e in support],
                                      self.answers, self.types)
    # Tokenised here, so a prompt that does not fit fails when the run starts, not at its first eval.
    support_chunks = [prompts.vqa_chunk(e["question"], e["answer"]) for e in support]
    query_chunks = [prompts.vqa_chunk(q) for q in self.questions]
    self.prompts = {}
    for k in self.shots:
      sequences = [[support_chunks[j] for j in self.support[i, :k]] + [query_chunks[i]] for i in range(n)]
      self.prompts[k] = self._prompt_ids(tokenizer, sequences, k)
    self.predictions: dict[int, list[str]] = {}  # the last call's answers per k, for inspection

  def _prompt_ids(self, tokenizer, sequences, k: int) -> tuple[np.ndarray, np.ndarray]:
    need = max(1 + sum(len(tokenizer.content_ids(p + t)) for p, t in seq) for seq in sequences)
    if need > self.prompt_max_len:
      raise ValueError(f"evals.vqa: the longest {k}-shot prompt needs {need} tokens, more than "
                       f"prompt_max_len={self.prompt_max_len} (default: data.max_len); set "
                       f"evals.vqa.prompt_max_len >= {need} or use fewer shots than {k}.")
    ids, lengths = prompts.prompt_ids(tokenizer, sequences, self.prompt_max_len)
    # Cut to the longest prompt: the model needs room for it plus the answer, not for prompt_max_len.
    # The prompts are fixed, so every eval still compiles one shape per k.
    return ids[:, :need], lengths

  def images_for(self, k: int) -> np.ndarray:
    """float32 [N, k + 1, H, W, 3]: each row's support images, then its question's image."""
    return np.concatenate([self.support_images[self.support[:, :k]], self.images[:, None]], axis=1)

  def answer(self, runner, params, k: int) -> list[str]:
    """The model's k-shot answers, one per eval question."""
    ids, lengths = self.prompts[k]
    out = runner.generate(params, self.images_for(k), ids, lengths, self.options)
    if len(out) != len(ids):
      raise ValueError(f"evals.vqa: runner.generate returned {len(out)} answers for {len(ids)} prompts.")
    bad = [t for t in out if not isinstance(t, str)]
    if bad:
      raise ValueError(f"evals.vqa: runner.generate must return strings, got {bad[0]!r}.")
    # A runner that leaves the chunk end in its text would otherwise never match.
    return [text.split(prompts.EOC)[0] for text in out]

  def __call__(self, runner, params) -> dict[str, float]:
    out = {f"majority_{key}": value for key, value in self.majority.items()}
    for k in self.shots:
      self.predictions[k] = self.answer(runner, params, k)
      scores = accuracy_by_type(self.predictions[k], self.answers, self.types)
      if k == 0:
        out.update(scores)
      out[f"acc_{k}shot"] = scores["acc"]
    return out
