"""Chunk sequences for image-conditioned language models and their text-only LM.

"vlm": {"image": float32[b, chunks, H, W, 3], "text", "loss_mask"}: caption, question-answer and
       conversation chunks, each with its "<image>" and image (vljax/data/prompts.py,
       vljax/data/conversations.py);
"lm":  {"text", "loss_mask"}: the same chunks without images.
The loss trains the captions, answers and assistant turns only (loss_mask).

Real sources tokenize each chunk before batching (the formats' chunk_tokens) to skip what cannot
make a row; the examples then carry their tokens (prompts.TOKENS), which the collate lays out as
they are. The shapes world's examples carry none: the collate tokenizes their text.
"""

from __future__ import annotations

import functools

import numpy as np

from vljax.data import conversations, images, prompts
from vljax.data.formats import CollateSettings, register_format
from vljax.data.tokenizers import Tokenizer


def _pieces(ex, with_image: bool, tokenizer: Tokenizer) -> list[tuple[str, str]]:
  """The (prompt, target) pieces of an example's chunk: one, or one per assistant turn."""
  if "conversation" in ex:
    return conversations.pairs(ex["conversation"], with_image, tokenizer.chat_template)
  if "question" in ex:
    return [prompts.vqa_chunk(ex["question"], ex["answer"], with_image)]
  return [prompts.caption_chunk(ex["caption"], with_image)]


def chunk_tokens(tokenizer: Tokenizer, example, with_image: bool) -> tuple[np.ndarray, np.ndarray] | None:
  """(ids, targets) of an example's chunk as the collate lays it out; None when its caption, question
  or answer holds a literal "<image>" or "<eoc>": the chunk would misplace an image or end early."""
  pieces = _pieces(example, with_image, tokenizer)
  ids, targets = [], []
  for piece in pieces:
    i, t = prompts.chunk_ids(tokenizer, *piece)
    ids, targets = ids + i, targets + t
  # Each piece ends in <eoc>, but a chat template's turns end in its own marker.
  ends = 0 if "conversation" in example and tokenizer.chat_template else len(pieces)
  if ids.count(tokenizer.image_id) != with_image or ids.count(tokenizer.eoc_id) != ends:
    return None
  return np.asarray(ids, np.int32), np.asarray(targets, bool)  # compact to carry across processes


def _encode(settings: CollateSettings, sequences, with_image: bool) -> tuple[np.ndarray, np.ndarray]:
  tok = settings.tokenizer
  if all(prompts.TOKENS in ex for seq in sequences for ex in seq):
    return prompts.encode_tokens(tok, [[ex[prompts.TOKENS] for ex in seq] for seq in sequences], settings.max_len)
  return prompts.encode_chunks(tok, [[p for ex in seq for p in _pieces(ex, with_image, tok)] for seq in sequences],
                               settings.max_len)


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
