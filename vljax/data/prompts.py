"""Text formats of the image-conditioned language models (Flamingo, LLaVA) and their LM.

A chunk is one image and its text: "<image> caption: a red circle<eoc>" or
"<image> question: what color is the circle? answer: red<eoc>". A sequence is one or more
chunks (several for few-shot prompts); the loss trains only the target part of each chunk
(the caption or answer and its <eoc>). The language model alone reads the same chunks
without the "<image>".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vljax.data.tokenizers import SPECIAL_TOKENS, Tokenizer

IMAGE, EOC = SPECIAL_TOKENS  # "<image>", "<eoc>"


def caption_chunk(caption: str | None = None, image: bool = True) -> tuple[str, str]:
  """(prompt, target) of a caption chunk; target "" for a prompt to complete."""
  prompt = f"{IMAGE} caption:" if image else "caption:"
  return prompt, "" if caption is None else f" {caption}{EOC}"


def vqa_chunk(question: str, answer: str | None = None, image: bool = True) -> tuple[str, str]:
  """(prompt, target) of a question-answer chunk; target "" for a question to answer."""
  prompt = f"{IMAGE} question: {question} answer:" if image else f"question: {question} answer:"
  return prompt, "" if answer is None else f" {answer}{EOC}"


TOKENS = "tokens"  # an example's field holding its chunk's (ids, targets) once tokenized (real sources)


def chunk_ids(tokenizer: Tokenizer, prompt: str, target: str) -> tuple[list[int], list[bool]]:
  """(ids, targets) of one chunk as encode_chunks lays it out: prompt then target tokens, True on the target's."""
  p, t = tokenizer.content_ids(prompt), tokenizer.content_ids(target) if target else []
  return p + t, [False] * len(p) + [True] * len(t)


def sequence_length(chunks: Sequence[tuple[np.ndarray, np.ndarray]]) -> int:
  """Tokens of a sequence of tokenized chunks: [BOS] chunks [EOS]."""
  return 2 + sum(len(ids) for ids, _ in chunks)


def encode_chunks(tokenizer: Tokenizer, sequences: Sequence[Sequence[tuple[str, str]]], max_len: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [N, max_len], loss_mask bool [N, max_len]) of chunk sequences.

  Rows are [BOS] chunk... [EOS] [PAD]...; loss_mask is True on target tokens (and the EOS after
  a final target), so the loss never trains the prompt. A sequence that does not fit is an
  error naming it: cutting it would silently drop an image or an answer.
  """
  ids = np.full((len(sequences), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(sequences), max_len), bool)
  for row, chunks in enumerate(sequences):
    tokens, targets = [tokenizer.bos_id], [False]
    for prompt, target in chunks:
      p, t = tokenizer.content_ids(prompt), tokenizer.content_ids(target) if target else []
      tokens += p + t
      targets += [False] * len(p) + [True] * len(t)
    tokens.append(tokenizer.eos_id)
    targets.append(bool(chunks) and bool(chunks[-1][1]))
    if len(tokens) > max_len:
      raise ValueError(f"sequence {row} needs {len(tokens)} tokens, more than max_len={max_len}: "
                       f"{' '.join(p + t for p, t in chunks)!r}")
    ids[row, :len(tokens)] = tokens
    mask[row, :len(tokens)] = targets
  return ids, mask


def encode_tokens(tokenizer: Tokenizer, sequences: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]],
                  max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """encode_chunks of chunks tokenized already (chunk_ids, as arrays): the same rows, the tokenizer not called.

  Real sources tokenize in their decode stage and skip what does not fit there (too_long), so a
  sequence over max_len here is an error as in encode_chunks.
  """
  ids = np.full((len(sequences), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(sequences), max_len), bool)
  for row, chunks in enumerate(sequences):
    n = sequence_length(chunks)
    if n > max_len:
      raise ValueError(f"sequence {row} needs {n} tokens, more than max_len={max_len}")
    ids[row, 0], ids[row, n - 1] = tokenizer.bos_id, tokenizer.eos_id
    if chunks:
      ids[row, 1:n - 1] = np.concatenate([c for c, _ in chunks])
      mask[row, 1:n - 1] = np.concatenate([t for _, t in chunks])
      mask[row, n - 1] = bool(chunks[-1][1].any())  # the EOS after a final target is trained too
  return ids, mask


def check_image_tokens(tokenizer: Tokenizer, ids: np.ndarray, images: Sequence[int]) -> None:
  """Each row of ids holds exactly as many <image> tokens as it has images: a model would otherwise
  put an image where there is none (LLaVA over the BOS) or leave one unseen."""
  counts = np.sum(np.asarray(ids) == tokenizer.image_id, axis=1)
  bad = np.flatnonzero(counts != np.asarray(images))
  if len(bad):
    row = int(bad[0])
    raise ValueError(f"sequence {row} has {counts[row]} <image> tokens for its {images[row]} image(s); each "
                     f"image needs exactly one (does its text contain a literal {IMAGE!r}?): "
                     f"{tokenizer.decode(np.asarray(ids)[row:row + 1])[0]!r}")


def prompt_ids(tokenizer: Tokenizer, sequences: Sequence[Sequence[tuple[str, str]]], max_len: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """(ids [N, max_len], lengths [N]) of prompts to continue: [BOS] chunks, no EOS, right-padded."""
  ids = np.full((len(sequences), max_len), tokenizer.pad_id, np.int32)
  lengths = np.zeros(len(sequences), np.int32)
  for row, chunks in enumerate(sequences):
    tokens = [tokenizer.bos_id] + [i for p, t in chunks for i in tokenizer.content_ids(p + t)]
    if len(tokens) > max_len:
      raise ValueError(f"prompt {row} needs {len(tokens)} tokens, more than max_len={max_len}")
    ids[row, :len(tokens)] = tokens
    lengths[row] = len(tokens)
  return ids, lengths


def cut_at_eoc(tokenizer: Tokenizer, ids: np.ndarray) -> np.ndarray:
  """Generated id rows with everything from the first <eoc> on made padding: not part of the answer."""
  return np.where(np.cumsum(ids == tokenizer.eoc_id, axis=1) > 0, tokenizer.pad_id, ids)
