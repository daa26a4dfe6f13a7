"""Chunk sequences for image-conditioned language models and their text-only LM.

"vlm": {"image": float32[b, chunks, H, W, 3], "text", "loss_mask"}: caption and question-answer
       chunks, each with its "<image>" and image (vljax/data/prompts.py);
"lm":  {"text", "loss_mask"}: the same chunks without images.
The loss trains the captions and answers only (loss_mask).
"""

from __future__ import annotations

import numpy as np

from vljax.data import images, prompts
from vljax.data.formats import CollateSettings, register_format


def _chunks(sequence, with_image: bool) -> list[tuple[str, str]]:
  return [prompts.vqa_chunk(ex["question"], ex["answer"], with_image) if "question" in ex
          else prompts.caption_chunk(ex["caption"], with_image) for ex in sequence]


@register_format("vlm", fields={"image": 5, "text": 2, "loss_mask": 2}, chunked=True)
def vlm_collate(settings: CollateSettings, sequences) -> dict[str, np.ndarray]:
  tok = settings.tokenizer
  text, loss_mask = prompts.encode_chunks(tok, [_chunks(seq, True) for seq in sequences], settings.max_len)
  prompts.check_image_tokens(tok, text, [len(seq) for seq in sequences])
  pixels = images.normalize(np.stack([[ex["image"] for ex in seq] for seq in sequences]), settings.normalization)
  return {"image": pixels, "text": text, "loss_mask": loss_mask}


@register_format("lm", fields={"text": 2, "loss_mask": 2}, chunked=True, renders=False)
def lm_collate(settings: CollateSettings, sequences) -> dict[str, np.ndarray]:
  text, loss_mask = prompts.encode_chunks(settings.tokenizer, [_chunks(seq, False) for seq in sequences],
                                          settings.max_len)
  return {"text": text, "loss_mask": loss_mask}
