"""Chunk sequences for image-conditioned language models and their text-only LM.

"vlm": {"image": float32[b, chunks, H, W, 3], "text", "loss_mask"}: caption and question-answer
       chunks, each with its "<image>" and image (vljax/data/prompts.py);
"lm":  {"text", "loss_mask"}: the same chunks without images.
The loss trains the captions and answers only (loss_mask).

Real sources tokenize each chunk before batching (the formats' chunk_tokens) to skip what cannot
make a row; the examples then carry their tokens (prompts.TOKENS), which the collate lays out as
they are. The shapes world's examples carry none: the collate tokenizes their text.
"""

from __future__ import annotations

import functools

import numpy as np

from vljax.data import images, prompts
from vljax.data.formats import CollateSettings, register_format
from vljax.data.tokenizers import Tokenizer


def _chunk(ex, with_image: bool) -> tuple[str, str]:
  if "question" in ex:
    return prompts.vqa_chunk(ex["question"], ex["answer"], with_image)
  return prompts.caption_chunk(ex["caption"], with_image)


def chunk_tokens(tokenizer: Tokenizer, example, with_image: bool) -> tuple[np.ndarray, np.ndarray] | None:
  """(ids, targets) of an example's chunk as the collate lays it out; None when its caption, question
  or answer holds a literal "<image>" or "<eoc>": the chunk would misplace an image or end early."""
  ids, targets = prompts.chunk_ids(tokenizer, *_chunk(example, with_image))
  if ids.count(tokenizer.image_id) != with_image or ids.count(tokenizer.eoc_id) != 1:
    return None
  return np.asarray(ids, np.int32), np.asarray(targets, bool)  # compact to carry across processes


def _encode(settings: CollateSettings, sequences, with_image: bool) -> tuple[np.ndarray, np.ndarray]:
  tok = settings.tokenizer
  if all(prompts.TOKENS in ex for seq in sequences for ex in seq):
    return prompts.encode_tokens(tok, [[ex[prompts.TOKENS] for ex in seq] for seq in sequences], settings.max_len)
  return prompts.encode_chunks(tok, [[_chunk(ex, with_image) for ex in seq] for seq in sequences], settings.max_len)


@register_format("vlm", fields={"image": 5, "text": 2, "loss_mask": 2}, chunked=True,
                 chunk_tokens=functools.partial(chunk_tokens, with_image=True))
def vlm_collate(settings: CollateSettings, sequences) -> dict[str, np.ndarray]:
  text, loss_mask = _encode(settings, sequences, True)
  prompts.check_image_tokens(settings.tokenizer, text, [len(seq) for seq in sequences])
  pixels = images.normalize(np.stack([[ex["image"] for ex in seq] for seq in sequences]), settings.normalization)
  return {"image": pixels, "text": text, "loss_mask": loss_mask}


@register_format("lm", fields={"text": 2, "loss_mask": 2}, chunked=True, renders=False,
                 chunk_tokens=functools.partial(chunk_tokens, with_image=False))
def lm_collate(settings: CollateSettings, sequences) -> dict[str, np.ndarray]:
  text, loss_mask = _encode(settings, sequences, False)
  return {"text": text, "loss_mask": loss_mask}
