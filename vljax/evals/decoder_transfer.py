"""Decoder transfer: a fresh small decoder trained for a fixed budget on the frozen image encoder's
tokens, then asked to caption and to answer questions (CapPa's LiT-decoder transfers), so every
pretraining objective's encoder, contrastive or generative, is judged by one protocol.

The image tower's un-pooled output tokens (ModelRunner.image_tokens: the same tower params
`fewshot` probes, before any pooler, projection or the model's own decoder) are computed once per
image; a decoder (vljax/evals/transfer_training.py) is initialised from `seed` and trained on them
with adamw for `steps` steps, its params alone in the optimizer; then it decodes greedily on held-out
examples (vljax/evals/transfer_tasks.py). A model whose tower gives no tokens gets its pooled vector
as one token, which the metrics say (`pooled_memory` 1, `memory_tokens` 1) and the log warns of.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from vljax.evals import datasets, transfer_tasks, transfer_training as training, world as world_lib
from vljax.evals.registry import register_evaluator
from vljax.evals.setting_checks import choice, nonnegative_int, positive_float, positive_int, subset
from vljax.inference.runner import ModelRunner
from vljax.models.capabilities import IMAGE_FEATURES
from vljax.models.text import TEXT_VARIANTS

MEMORIES = ("tokens", "pooled")  # the tower's output tokens; its pooled vector as one token
DEFAULTS = dict(tasks=("captioning", "vqa"), variant="shapes-64", steps=1000, batch_size=64, lr=1e-3, seed=0,
                num_train_examples=4096, num_eval_examples=256, memory="tokens")


@register_evaluator("decoder_transfer")
class DecoderTransferEvaluator:
  """Captioning: `cider`, `bleu4`, `caption_loss` (the decoder's train loss, mean of its last 10
  steps). VQA: `vqa_acc` (official VQA accuracy), `vqa_acc_<type>`, `vqa_majority_acc` (always the
  type's most frequent training answer: the answer prior alone), `vqa_loss`. Both: `memory_tokens`
  (image tokens the decoder reads) and `pooled_memory` (1 when it reads the pooled vector instead).

  Settings: every, tasks ("captioning", "vqa" or both: default), variant (the decoder's size, a text
  variant: "mu", "shapes-64" (default), "S", ...), steps (1000), batch_size (64), lr (1e-3, peak of
  warmup + cosine), seed (0: the decoder's init and batch order), num_train_examples (4096 per task),
  num_eval_examples (256 per task), memory ("tokens", or "pooled": the pooled vector as one token).
  """

  needs = IMAGE_FEATURES  # vljax.evals.requirements: any model with an image tower
  settings_keys = ("every", *DEFAULTS)

  def __init__(self, settings, *, tokenizer, max_len: int, data: Mapping[str, Any]):
    del max_len  # the decoder's text length is what its tasks' sequences need, the same for every model
    where = f"evals.{self.name}"
    datasets.check_keys(settings, self.settings_keys, where)
    task_names = subset(settings, "tasks", DEFAULTS["tasks"], list(transfer_tasks.TASKS), where)
    variant = choice(settings, "variant", DEFAULTS["variant"], list(TEXT_VARIANTS), where)
    self.memory = choice(settings, "memory", DEFAULTS["memory"], MEMORIES, where)
    steps, batch_size, num_train, num_eval = (positive_int(settings, k, DEFAULTS[k], where) for k in (
        "steps", "batch_size", "num_train_examples", "num_eval_examples"))
    lr = positive_float(settings, "lr", DEFAULTS["lr"], where)
    self.seed = nonnegative_int(settings, "seed", DEFAULTS["seed"], where)
    world = world_lib.shapes_world(data, type(self))
    normalization = data.get("normalization", "siglip")
    self.tasks = [transfer_tasks.TASKS[t](world, tokenizer, num_train, num_eval, normalization) for t in task_names]
    # One train length, prompt length and answer budget: the tasks share one train step and one
    # decoding program, each compiled once.
    train_len = max(t.train_ids.shape[1] for t in self.tasks)
    prompt_len = max(t.prompt_ids.shape[1] for t in self.tasks)
    for task in self.tasks:
      task.pad_to(train_len, prompt_len)
    self.answer_len = max(t.answer_len for t in self.tasks)
    self.spec = training.DecoderSpec.from_variant(variant, tokenizer.vocab_size,
                                                  max(train_len, prompt_len + self.answer_len))
    self.train = training.TrainSpec(steps, batch_size, lr, tokenizer.pad_id)
    self.tokenizer = tokenizer
    self.predictions: dict[str, list[str]] = {}  # the last call's decoded outputs per task, for inspection
    self.losses: dict[str, np.ndarray] = {}  # the last call's train loss of every step, per task

  def image_memory(self, runner: ModelRunner, params, images: np.ndarray) -> tuple[np.ndarray, bool]:
    """(float32 [N, T, width] the decoder cross-attends to, whether it is the pooled vector as one
    token); the encoder is only run forward."""
    if self.memory == "tokens":
      tokens = runner.image_tokens(params, images)
      if tokens.ndim == 3 and tokens.shape[1] > 0:
        return tokens, False
      logging.warning("evals.%s: the image tower gives no tokens (shape %s): the decoder reads its pooled "
                      "vector as one token", self.name, tokens.shape)
    return runner.image_features(params, images)[:, None], True

  def __call__(self, runner: ModelRunner, params) -> dict[str, float]:
    out = {}
    for task in self.tasks:
      train_memory, pooled = self.image_memory(runner, params, task.train_images)
      eval_memory, _ = self.image_memory(runner, params, task.eval_images)
      with training.one_device_mesh():
        decoder, self.losses[task.name] = training.train_decoder(self.spec, self.train, train_memory, task.train_ids,
                                                                 task.train_mask, self.seed)
        self.predictions[task.name] = training.greedy_answers(self.spec, decoder, eval_memory, task.prompt_ids,
                                                              task.prompt_lengths, self.answer_len, self.tokenizer)
      out.update(task.score(self.predictions[task.name]))
      out[task.loss_key] = training.final_loss(self.losses[task.name])
      out["memory_tokens"], out["pooled_memory"] = float(train_memory.shape[1]), float(pooled)
    return out
