"""The decoder-transfer tasks on the shapes world: what the decoder trains on, what it is asked, and
how its answers are scored (vljax/evals/decoder_transfer.py).

Both are in the image-conditioned LMs' chunk format without the <image> (vljax.data.prompts), so
one train step and one decoding program serve both: a training sequence is "[BOS] PROMPT TARGET<eoc>
[EOS]" with the loss on the target, its <eoc> and the EOS; a held-out prompt "[BOS] PROMPT" is
continued greedily up to <eoc>.
- captioning: "caption:" -> " CAPTION<eoc>", train-split captions (noisy ones skipped: the
  references are clean); the caption evaluator's eval images, scored against their references
  (CIDEr-D, BLEU-4: vljax.evals.coco_metrics).
- vqa: "question: Q answer:" -> " A<eoc>", train-split questions; the VQA evaluator's eval
  questions, scored with the official VQA accuracy (vljax.evals.vqa_metrics), with the answer-prior
  baseline beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vljax.data import prompts, shapes
from vljax.data.tokenizers import Tokenizer
from vljax.evals.arrays import eval_images
from vljax.evals.coco_metrics import caption_metrics
from vljax.evals.vqa_metrics import accuracy_by_type, majority_baseline

NUM_REFERENCES = 5  # as the caption evaluator's default


def pad_columns(x: np.ndarray, length: int, value) -> np.ndarray:
  """x [N, L <= length] right-padded with `value` to [N, length]."""
  return np.pad(x, ((0, 0), (0, length - x.shape[1])), constant_values=value)


class TransferTask:
  """A task's arrays: train_images [N, H, W, 3] (normalised) with train_ids and train_mask [N, L];
  eval_images [M, H, W, 3] with prompt_ids [M, P] and prompt_lengths [M]; answer_len, the tokens a
  longest target and its <eoc> take."""
  name: str
  loss_key: str  # the metric of its final train loss

  def __init__(self, tokenizer: Tokenizer, train: Sequence[dict], train_chunks: Sequence[tuple[str, str]],
               evaluated: Sequence[dict], eval_prompts: Sequence[str], normalization: str):
    self.tokenizer = tokenizer
    tokenized = [prompts.chunk_ids(tokenizer, *c) for c in train_chunks]
    self.train_ids, self.train_mask = prompts.encode_chunks(
        tokenizer, [[c] for c in train_chunks], max(prompts.sequence_length([c]) for c in tokenized))
    self.answer_len = max(sum(targets) for _, targets in tokenized)
    self.train_images = eval_images(list(train), normalization)
    self.eval_images = eval_images(list(evaluated), normalization)
    chunks = [[(p, "")] for p in eval_prompts]
    self.prompt_ids, self.prompt_lengths = prompts.prompt_ids(
        tokenizer, chunks, 1 + max(len(tokenizer.content_ids(p)) for p in eval_prompts))

  def pad_to(self, train_len: int, prompt_len: int) -> None:
    """Pads train_ids / train_mask to train_len columns and prompt_ids to prompt_len: tasks padded
    alike share one compiled train step and decoding program."""
    pad = self.tokenizer.pad_id
    self.train_ids, self.train_mask = pad_columns(self.train_ids, train_len, pad), pad_columns(
        self.train_mask, train_len, False)
    self.prompt_ids = pad_columns(self.prompt_ids, prompt_len, pad)

  def score(self, predictions: list[str]) -> dict[str, float]:
    raise NotImplementedError


class CaptioningTask(TransferTask):
  """Metrics cider, bleu4 (and caption_loss)."""
  name, loss_key = "captioning", "caption_loss"

  def __init__(self, world: shapes.ShapesWorld, tokenizer: Tokenizer, num_train: int, num_eval: int,
               normalization: str):
    if world.caption_noise >= 1:
      raise ValueError(f"evals.decoder_transfer task 'captioning' trains on clean captions, but "
                       f"data.caption_noise={world.caption_noise} makes every one noise; valid: < 1, or "
                       "tasks=['vqa']")
    train, i = [], 0
    while len(train) < num_train:
      ex = world.example(i, split="train")
      if not ex["noisy"]:
        train.append(ex)
      i += 1
    evaluated = [world.caption_example(i, NUM_REFERENCES) for i in range(num_eval)]
    self.references = {i: e["references"] for i, e in enumerate(evaluated)}
    prompt = prompts.caption_chunk(image=False)[0]
    super().__init__(tokenizer, train, [prompts.caption_chunk(e["caption"], image=False) for e in train], evaluated,
                     [prompt] * num_eval, normalization)

  def score(self, predictions: list[str]) -> dict[str, float]:
    out = caption_metrics(dict(enumerate(predictions)), self.references)
    return {"cider": out["cider"], "bleu4": out["bleu4"]}


class VQATask(TransferTask):
  """Metrics vqa_acc, vqa_acc_<type>, vqa_majority_acc (and vqa_loss)."""
  name, loss_key = "vqa", "vqa_loss"

  def __init__(self, world: shapes.ShapesWorld, tokenizer: Tokenizer, num_train: int, num_eval: int,
               normalization: str):
    train = [world.vqa_example(i, split="train") for i in range(num_train)]
    evaluated = [world.vqa_example(i, split="eval") for i in range(num_eval)]
    self.answers, self.types = [e["answer"] for e in evaluated], [e["question_type"] for e in evaluated]
    self.majority = majority_baseline([e["answer"] for e in train], [e["question_type"] for e in train],
                                      self.answers, self.types)
    super().__init__(tokenizer, train, [prompts.vqa_chunk(e["question"], e["answer"], image=False) for e in train],
                     evaluated, [prompts.vqa_chunk(e["question"], image=False)[0] for e in evaluated], normalization)

  def score(self, predictions: list[str]) -> dict[str, float]:
    out = {f"vqa_{k}": v for k, v in accuracy_by_type(predictions, self.answers, self.types).items()}
    out["vqa_majority_acc"] = self.majority["acc"]
    return out


TASKS = {t.name: t for t in (CaptioningTask, VQATask)}
